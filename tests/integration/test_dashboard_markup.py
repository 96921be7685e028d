"""The dashboard shows what a log line says, never what it asks the terminal to do.

Log fields are written by whoever calls the broker: a thread id is any printable ASCII without
whitespace, so ``[link=https://…]`` or ``[conceal]`` is a valid thread id. A real broker refuses a
thread call whose task cannot be registered and logs ``authorization.failed`` with that thread id;
the line is fed to ``credential-broker dashboard --once`` on a colour terminal. The screen must show
the id literally, emit no hyperlink or concealed text, and survive markup that does not parse.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.logs import configure_logging
from cb_emulator import Emulator
from tests.fixtures.broker import StartBroker

pytestmark = pytest.mark.integration

_SUBPROCESS_S = 60.0
HOSTILE_THREADS = (
    "[link=https://evil.example/]click-me[/link]",
    "[conceal]hidden-from-the-operator[/conceal]",
    "[/oops]",
    "[bold",
)
HOSTILE_LABEL = "pod[link=https://evil.example/]x[/link]"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OSC8 = "\x1b]8;"
_CONCEAL = re.compile(r"\x1b\[(?:[0-9;]*;)?8(?:;[0-9;]*)?m")


async def _hostile_lines(start_broker: StartBroker, emulator: Emulator) -> list[str]:
    """A real broker's log lines for thread calls refused with each hostile thread id."""
    stream = io.StringIO()
    configure_logging("info", stream)
    broker = await start_broker()
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())  # background task first
    emulator.inject_fault("register_task", status=400, count=len(HOSTILE_THREADS))
    for thread_id in HOSTILE_THREADS:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id=thread_id))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await broker.close()
    lines = stream.getvalue().splitlines()
    assert sum('"authorization.failed"' in line for line in lines) == len(HOSTILE_THREADS)
    return lines


def _dashboard_screen(path: Path) -> str:
    """``dashboard FILE --once`` as a wide colour terminal would show it."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "dashboard", str(path), "--once", "--window", "3600"],
        capture_output=True,
        text=True,
        timeout=_SUBPROCESS_S,
        env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "400", "TERM": "xterm-256color"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    return result.stdout


async def test_hostile_thread_ids_are_shown_literally(
    start_broker: StartBroker, emulator: Emulator, tmp_path: Path
) -> None:
    """Each hostile thread id appears as typed; no link, no concealed text, no crash."""
    lines = await _hostile_lines(start_broker, emulator)
    path = tmp_path / "broker.log"
    path.write_text("\n".join(f"{HOSTILE_LABEL} | {line}" for line in lines) + "\n")
    screen = await asyncio.to_thread(_dashboard_screen, path)
    assert _OSC8 not in screen
    assert not _CONCEAL.search(screen)
    text = _ANSI.sub("", screen)
    for thread_id in HOSTILE_THREADS:
        assert f"thread_id={thread_id}" in text, thread_id
    assert HOSTILE_LABEL in text


async def test_hostile_names_in_every_table(tmp_path: Path) -> None:
    """Event names, reasons and identities from a line are shown literally; escapes made visible."""
    markup = "[link=https://evil.example/]m[/link]"
    records = [
        '{"event": "broker.started", "level": "info", "timestamp": "2026-01-01T00:00:00Z"}',
        f'{{"event": "{markup}", "level": "warning", "timestamp": "2026-01-01T00:00:01Z"}}',
        f'{{"event": "fallback.bearer", "level": "warning", "identity": "{markup}",'
        f' "fallback_reason": "{markup}", "timestamp": "2026-01-01T00:00:02Z"}}',
        f'{{"event": "account.refresh_failed", "level": "warning", "identity": "{markup}",'
        f' "reason": "{markup}", "detail": "x", "timestamp": "2026-01-01T00:00:03Z"}}',
        f'{{"event": "controlplane.circuit_opened", "level": "warning", "identity": "{markup}",'
        ' "timestamp": "2026-01-01T00:00:04Z"}',
        '{"event": "evil.\\u001b[2J", "level": "warning", "detail": "\\u001b]8;;https://evil.example/'
        '\\u001b\\\\x", "timestamp": "2026-01-01T00:00:05Z"}',
    ]
    path = tmp_path / "crafted.log"
    path.write_text("\n".join(records) + "\n")
    screen = await asyncio.to_thread(_dashboard_screen, path)
    assert _OSC8 not in screen
    assert "\x1b[2J" not in screen
    text = _ANSI.sub("", screen)
    assert markup in text
    assert "evil.\\x1b[2J" in text
    assert "\\x1b]8;;https://evil.example/\\x1b" in text
