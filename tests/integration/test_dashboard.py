"""``credential-broker dashboard`` on logs recorded from real brokers, and live under a terminal.

Two brokers (pods ``broker-a`` and ``broker-b``) are driven against the real emulator with their
log lines recorded at the production level (info); the lines are merged the way ``kubectl logs
--prefix`` merges pods, salted with garbage, and fed to ``python -m broker dashboard FILE --once
--format json``. The numbers it prints must be the ones the emulator and the calls say.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.logs import configure_logging
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker

pytestmark = pytest.mark.integration

_SUBPROCESS_S = 60.0
GARBAGE = ["not json at all", '{"event": "rpc.comp', '{"event":"future.thing","level":"warning"}']


async def _fails(call: Any, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code


async def _drive_a(broker: RunningBroker) -> None:
    """Assertions (background and threads), a prewarm, Bearer-only, two bad requests."""
    stub = broker.stub
    for _ in range(3):
        await stub.GetAuthorization(pb.GetAuthorizationRequest())
    for _ in range(2):
        await stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))
    await stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY))
    await stub.EnsureTask(pb.EnsureTaskRequest(thread_id="t2"))
    await _fails(
        stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="bad id")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _fails(
        stub.GetAuthorization(pb.GetAuthorizationRequest(identity="nobody")),
        grpc.StatusCode.NOT_FOUND,
    )


async def _drive_b(broker: RunningBroker) -> None:
    """Two UNSUPPORTED_HOST fallbacks and one thread assertion."""
    for _ in range(2):
        answer = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert answer.authorization.fallback_reason == pb.FALLBACK_REASON_UNSUPPORTED_HOST
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t3"))


async def _record(start: Any, drive: Any, **kwargs: Any) -> list[str]:
    stream = io.StringIO()
    configure_logging("info", stream)
    broker = await start(**kwargs)
    await drive(broker)
    await broker.close()
    return stream.getvalue().splitlines()


@pytest.fixture(name="recording")
async def fixture_recording(
    start_broker: StartBroker, emulator: Emulator, tmp_path: Path
) -> tuple[Path, Emulator]:
    """Two brokers' lines merged with kubectl-style prefixes and garbage, in one file."""
    lines_a = await _record(start_broker, _drive_a)
    lines_b = await _record(start_broker, _drive_b, supported_hosts="")
    merged: list[str] = []
    for index in range(max(len(lines_a), len(lines_b))):
        for pod, lines in (("broker-a", lines_a), ("broker-b", lines_b)):
            if index < len(lines):
                merged.append(f"[pod/{pod}/broker] {lines[index]}")
    path = tmp_path / "fleet.log"
    path.write_text("\n".join([*merged[:5], *GARBAGE, *merged[5:], '{"event": "broker.st']))
    return path, emulator


def _dashboard_json(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "broker", "dashboard", str(path)),
            *("--once", "--format", "json", "--window", "3600"),
        ],
        capture_output=True,
        text=True,
        timeout=_SUBPROCESS_S,
        check=True,
    )
    snapshot: dict[str, Any] = json.loads(result.stdout)
    return snapshot


class TestRecordedFleet:
    async def test_registrations_match_the_emulator(self, recording: tuple[Path, Emulator]) -> None:
        """Identity and task registrations equal what the emulator counted."""
        path, emulator = recording
        total = (await asyncio.to_thread(_dashboard_json, path))["total"]
        counted = emulator.stats()
        assert total["registrations"]["identities"] == counted.identity_registrations == 2
        tasks = total["registrations"]["tasks"]
        assert sum(tasks.values()) == counted.task_registrations == 4
        assert tasks == {"background": 1, "thread": 3}
        register = total["controlplane"]["by_operation"]["register_task"]
        assert register["count"] == counted.requests_by_endpoint["register_task"]
        assert register["p50"] is not None

    async def test_rpcs_by_code_and_replica(self, recording: tuple[Path, Emulator]) -> None:
        """RPCs are counted by code, per pod and in total."""
        path, _ = recording
        snapshot = await asyncio.to_thread(_dashboard_json, path)
        replicas = snapshot["replicas"]
        assert replicas["broker-a"]["rpcs"]["by_code"] == {
            "INVALID_ARGUMENT": 1,
            "NOT_FOUND": 1,
            "OK": 7,
        }
        assert replicas["broker-b"]["rpcs"]["by_code"] == {"OK": 3}
        assert snapshot["total"]["rpcs"]["by_code"] == {
            "INVALID_ARGUMENT": 1,
            "NOT_FOUND": 1,
            "OK": 10,
        }
        assert replicas["broker-a"]["state"] == replicas["broker-b"]["state"] == "stopped"

    async def test_authorizations_by_scheme(self, recording: tuple[Path, Emulator]) -> None:
        """Schemes, fallback reasons and L1 hits come from the brokers' final counters."""
        path, _ = recording
        snapshot = await asyncio.to_thread(_dashboard_json, path)
        a, b = snapshot["replicas"]["broker-a"], snapshot["replicas"]["broker-b"]
        assert a["authorizations"] == {"AgentAssertion": 5, "Bearer": 1}
        assert b["authorizations"] == {"AgentAssertion": 1, "Bearer": 2}
        assert snapshot["total"]["fallbacks"] == {"requested": 1, "unsupported_host": 2}
        assert a["cache"]["l1_hit_ratio"] == 0.6  # 2 background + 1 thread hits of 5 lookups

    async def test_skipped_lines_are_reported(self, recording: tuple[Path, Emulator]) -> None:
        """Garbage, a truncated line and an unknown event are counted, not fatal."""
        path, _ = recording
        lines = (await asyncio.to_thread(_dashboard_json, path))["lines"]
        assert lines["skipped_by_reason"] == {"not_json": 2, "partial": 1}
        assert lines["skipped"] == 3
        assert lines["unknown_events"] == {"future.thing": 1}


class TestLive:
    async def test_screen_follows_a_growing_file(
        self, recording: tuple[Path, Emulator], tmp_path: Path
    ) -> None:
        """Under a pseudo-terminal the live screen shows lines appended to a followed file."""
        source, _ = recording
        path = tmp_path / "live.log"
        path.write_text("")
        screen = await asyncio.to_thread(_run_live, path, source.read_text())
        assert "broker-a" in screen
        assert "broker-b" in screen
        assert "Traffic" in screen


def _run_live(path: Path, text: str) -> str:
    """Run the dashboard on a pty, append ``text`` to ``path``, return what it drew (bounded)."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "dashboard", str(path), "--refresh", "0.2"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "120", "LINES": "60", "TERM": "xterm"},
        close_fds=True,
    )
    os.close(secondary)
    drawn = b""
    try:
        deadline = time.monotonic() + _SUBPROCESS_S
        appended = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    drawn += os.read(primary, 65536)
                except OSError:  # the terminal closed: the process ended
                    break
            if not appended and b"Traffic" in drawn:
                with path.open("a") as out:
                    out.write(text + "\n")
                appended, drawn = True, b""
            if appended and b"broker-a" in drawn and b"broker-b" in drawn:
                break
    finally:
        # Ctrl-C; keep reading, or a full terminal buffer would block its last redraw.
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if select.select([primary], [], [], 0.1)[0]:
                try:
                    os.read(primary, 65536)
                except OSError:
                    break
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        os.close(primary)
    assert process.returncode == 0, drawn.decode(errors="replace")[-2000:]
    return drawn.decode(errors="replace")
