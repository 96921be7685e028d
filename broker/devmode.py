"""``credential-broker dev`` and ``credential-broker emulator``: try the broker with nothing else.

``dev`` starts the control-plane emulator and a broker wired to it on the embedded store, prints the
addresses and a command to try on stderr (stdout stays one JSON event per line), and runs until
interrupted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from broker.app import BrokerApp
from broker.config import load_settings
from broker.emulator import Emulator, EmulatorAccount
from broker.errors import ConfigError

DEV_TOKEN = "dev-access-token"  # noqa: S105  (the emulator's public development token)
DEV_ACCOUNT = EmulatorAccount(account_id="acct-dev", user_id="user-dev")


def _split(listen: str, setting: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{setting}: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201  (the dev command talks to a person)


async def run_dev(listen: str, emulator_listen: str) -> int:
    """Run the emulator and a broker wired to it until SIGINT/SIGTERM."""
    host, port = _split(emulator_listen, "--emulator-listen")
    workdir = Path(tempfile.mkdtemp(prefix="credential-broker-dev-"))
    token_file = workdir / "access-token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(DEV_TOKEN + "\n")
    async with Emulator(tokens={DEV_TOKEN: DEV_ACCOUNT}) as emulator:
        url = await emulator.start(host, port)
        settings = load_settings(
            {},
            {
                "listen": listen,
                "controlplane_url": url,
                "bearer_token_file": str(token_file),
                "account_id": DEV_ACCOUNT.account_id,
                "user_id": DEV_ACCOUNT.user_id,
                # the emulator runs on loopback, which the reference host list does not include
                "supported_hosts": _split(url.split("/")[2], "emulator")[0],
            },
        )
        app = BrokerApp(settings)
        await app.start()
        try:
            _say(
                "\ncredential-broker dev is running (embedded store: state is not shared and not "
                "persistent)\n"
                f"  broker (gRPC):        {app.address}\n"
                f"  control-plane emulator: {url}\n"
                "Try, in another terminal:\n"
                f"  .venv/bin/credential-broker get-authorization --broker {app.address}\n"
                f"  H=$(.venv/bin/credential-broker get-authorization --broker {app.address} "
                "--header-only)\n"
                f'  curl -s -H "Authorization: $H" -H "ChatGPT-Account-ID: {DEV_ACCOUNT.account_id}"'
                f" {url}/protected\n"
                "Stop with Ctrl-C.\n"
            )
            await _wait_for_signal()
        finally:
            await app.stop()
    return 0


def parse_token_specs(specs: Sequence[str]) -> dict[str, EmulatorAccount]:
    """``TOKEN[:ACCOUNT[:USER]]`` strings to the emulator's token table."""
    tokens: dict[str, EmulatorAccount] = {}
    for spec in specs:
        token, _, rest = spec.partition(":")
        account, _, user = rest.partition(":")
        if not token:
            raise ConfigError(f"--token: empty token in {spec!r}")
        tokens[token] = EmulatorAccount(
            account_id=account or "acct-dev", user_id=user or "user-dev"
        )
    return tokens


async def run_emulator(
    listen: str, token_specs: Sequence[str], *, plaintext_task_ids: bool, require_biscuit: bool
) -> int:
    """Run the control-plane emulator alone until SIGINT/SIGTERM."""
    host, port = _split(listen, "--listen")
    tokens = parse_token_specs(token_specs) or None
    async with Emulator(
        tokens=tokens, plaintext_task_ids=plaintext_task_ids, require_biscuit=require_biscuit
    ) as emulator:
        url = await emulator.start(host, port)
        _say(f"control-plane emulator at {url} (test controls under /_emulator/)")
        await _wait_for_signal()
    return 0
