"""``credential-broker-emulator`` (also ``python -m cb_emulator``): the control-plane emulator alone.

It listens until SIGINT or SIGTERM and logs one JSON event per request on stdout; the address and
where the test controls live go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from broker.errors import ConfigError
from broker.logs import configure_logging
from cb_emulator.model import DEV_ACCOUNT, EmulatorAccount
from cb_emulator.server import Emulator

PROG = "credential-broker-emulator"


def split_listen(listen: str, setting: str) -> tuple[str, int]:
    """``HOST:PORT`` (the host may be a bracketed IPv6 address) to its host and port."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{setting}: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def parse_token_specs(specs: Sequence[str]) -> dict[str, EmulatorAccount]:
    """``TOKEN[:ACCOUNT[:USER]]`` strings to the emulator's token table."""
    tokens: dict[str, EmulatorAccount] = {}
    for spec in specs:
        token, _, rest = spec.partition(":")
        account, _, user = rest.partition(":")
        if not token:
            raise ConfigError(f"--token: empty token in {spec!r}")
        tokens[token] = EmulatorAccount(
            account_id=account or DEV_ACCOUNT.account_id, user_id=user or DEV_ACCOUNT.user_id
        )
    return tokens


async def wait_for_signal() -> None:
    """Return once SIGINT or SIGTERM arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def run_emulator(
    listen: str, token_specs: Sequence[str], *, plaintext_task_ids: bool, require_biscuit: bool
) -> int:
    """Run the control-plane emulator alone until SIGINT/SIGTERM."""
    host, port = split_listen(listen, "--listen")
    tokens = parse_token_specs(token_specs) or None
    async with Emulator(
        tokens=tokens, plaintext_task_ids=plaintext_task_ids, require_biscuit=require_biscuit
    ) as emulator:
        url = await emulator.start(host, port)
        print(  # noqa: T201  (the address, for the person who started it)
            f"control-plane emulator at {url} (regional origin {emulator.regional_origin}; "
            "test controls under /_emulator/)",
            file=sys.stderr,
            flush=True,
        )
        await wait_for_signal()
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line of ``credential-broker-emulator``."""
    options = argparse.ArgumentParser(
        prog=PROG, description="A faithful control-plane emulator, for development and tests."
    )
    options.add_argument("--listen", default="127.0.0.1:8765", help="HOST:PORT")
    options.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN[:ACCOUNT[:USER]]",
        help="an accepted access token and its account (repeatable)",
    )
    options.add_argument("--plaintext-task-ids", action="store_true")
    options.add_argument("--no-require-biscuit", action="store_true")
    options.add_argument("--log-level", default="info")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``credential-broker-emulator``; returns the process exit code."""
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return asyncio.run(
            run_emulator(
                args.listen,
                args.token,
                plaintext_task_ids=args.plaintext_task_ids,
                require_biscuit=not args.no_require_biscuit,
            )
        )
    except ConfigError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130
