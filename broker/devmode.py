"""``credential-broker dev``: try the broker with nothing else.

``dev`` starts the control-plane emulator and a broker wired to it on the embedded store, prints the
addresses and a command to try on stderr (stdout stays one JSON event per line), and runs until
interrupted.

The emulator is a separate development package (``credential-broker-emulator``, import name
``cb_emulator``, in ``emulator/`` of the repository): the broker's image does not contain it, so it
is imported here only when a development command runs, and its absence is one clear error.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from broker.app import BrokerApp
from broker.config import load_settings
from broker.errors import EmulatorNotInstalled

if TYPE_CHECKING:
    from types import ModuleType

EMULATOR_PACKAGE = "cb_emulator"
EMULATOR_DISTRIBUTION = "credential-broker-emulator"


def load_emulator() -> ModuleType:
    """The emulator's package, imported now.

    Raises:
        EmulatorNotInstalled: the development package is absent (as in the broker's image).
    """
    try:
        import cb_emulator
    except ModuleNotFoundError as exc:
        if exc.name != EMULATOR_PACKAGE:
            raise
        raise EmulatorNotInstalled(
            "the control-plane emulator is a development package that is not installed: "
            f"install {EMULATOR_DISTRIBUTION} (`pip install -e emulator` in the repository; "
            "`make install` does)"
        ) from None
    return cb_emulator


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201  (the dev command talks to a person)


async def run_dev(listen: str, emulator_listen: str) -> int:
    """Run the emulator and a broker wired to it until SIGINT/SIGTERM."""
    load_emulator()
    from cb_emulator import DEV_ACCOUNT, DEV_TOKEN, Emulator
    from cb_emulator.cli import split_listen, wait_for_signal

    host, port = split_listen(emulator_listen, "--emulator-listen")
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
                "supported_hosts": split_listen(url.split("/")[2], "emulator")[0],
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
            await wait_for_signal()
        finally:
            await app.stop()
    return 0
