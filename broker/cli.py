"""``credential-broker``: argv -> Settings -> run.

Commands: ``serve`` (the broker), ``dev`` (emulator + broker on the embedded store, for trying it out),
``get-authorization`` (a client), ``inspect`` (decode
and verify an assertion), ``admin …`` (operator RPCs) and ``kek generate`` (a new key-encryption key
line). The client commands take a caller token and TLS flags (``broker/client_cli.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from broker import __version__
from broker.config import flag_help, load_settings, serve_epilog, serve_flags
from broker.errors import BrokerError, ConfigError
from broker.events import Event
from broker.logs import configure_logging

log = structlog.get_logger("broker.cli")

DEFAULT_BROKER = "127.0.0.1:50051"


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for each setting that declares one (its help from the setting's doc string)."""
    for flag, row in serve_flags():
        if isinstance(row.default, bool):
            parser.add_argument(
                flag, dest=row.key, action="store_const", const=True, help=flag_help(row)
            )
        else:
            parser.add_argument(flag, dest=row.key, help=flag_help(row))
    # Removed: refused by load_settings with a pointer to --allow-unsealed-store and
    # --allow-anonymous-callers.
    parser.add_argument("--insecure", action="store_const", const=True, help=argparse.SUPPRESS)
    # Internal: how the supervisor starts each worker (settings arrive on stdin, broker/supervisor).
    parser.add_argument("--supervised-worker", action="store_true", help=argparse.SUPPRESS)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """How a client command reaches a secured broker (``broker/client_cli.py`` uses them)."""
    parser.add_argument(
        "--token-file",
        help="file holding the caller token (else BROKER_CALLER_TOKEN_FILE or BROKER_CALLER_TOKEN)",
    )
    parser.add_argument("--ca-file", help="CA certificate(s) to verify the broker with (TLS)")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's trusted CAs")
    parser.add_argument("--cert-file", help="client certificate (mutual TLS), with --key-file")
    parser.add_argument("--key-file", help="the client certificate's private key")
    parser.add_argument("--server-name", help="name to expect on the broker's certificate")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per RPC")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credential-broker",
        description="One agent identity for a fleet of workers, served over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker with the settings of its flags, environment and BROKER_CONFIG.",
        epilog=serve_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serve_flags(serve)

    dev = commands.add_parser(
        "dev", help="run the emulator and a broker wired to it (embedded store)"
    )
    dev.add_argument("--listen", default=DEFAULT_BROKER, help="broker HOST:PORT")
    dev.add_argument("--emulator-listen", default="127.0.0.1:0", help="emulator HOST:PORT")
    dev.add_argument("--log-level", default="info")

    # allow_abbrev=False: "--token" must not pass for "--token-file" (a token in argv leaks).
    get = commands.add_parser(
        "get-authorization", help="ask a broker for a header", allow_abbrev=False
    )
    get.add_argument("--broker", default=os.environ.get("BROKER_ADDRESS", DEFAULT_BROKER))
    get.add_argument("--identity", default="")
    get.add_argument("--thread", default="", help="thread id (empty: the background task)")
    get.add_argument("--bearer-only", action="store_true")
    get.add_argument("--watch", action="store_true", help="stream updates until interrupted")
    get.add_argument("--header-only", action="store_true", help="print only the header value")
    _add_connection_flags(get)

    inspect = commands.add_parser(
        "inspect", help="decode and verify an AgentAssertion header", allow_abbrev=False
    )
    inspect.add_argument("header", help="the header value, or - to read it from stdin")
    inspect.add_argument("--public-key", help="'ssh-ed25519 AAAA…' to verify against")
    inspect.add_argument("--broker", help="fetch the public key from this broker")
    inspect.add_argument("--identity", default="")
    _add_connection_flags(inspect)

    admin = commands.add_parser("admin", help="operator RPCs of a broker (an admin caller)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    for name, help_text, flags in (
        ("list-identities", "identities, their registration and cached headers", ()),
        ("rotate-identity", "register a new key for an identity", ("--identity",)),
        ("revoke-task", "forget a task fleet-wide", ("--identity", "--thread")),
        ("flush-caches", "drop cached headers (one identity, or all)", ("--identity",)),
        ("usage", "per-caller RPC counters of the replica that answers", ()),
    ):
        command = admin_commands.add_parser(name, help=help_text, allow_abbrev=False)
        command.add_argument("--broker", default=os.environ.get("BROKER_ADDRESS", DEFAULT_BROKER))
        for flag in flags:
            command.add_argument(flag, default="")
        _add_connection_flags(command)

    account = commands.add_parser("account", help="the account's ChatGPT login")
    account_commands = account.add_subparsers(dest="account_command", required=True)
    account_import = account_commands.add_parser(
        "import", help="seal a login (auth.json) into the store and print its public facts"
    )
    account_import.add_argument("path", help="the login file, or - for stdin")
    account_import.add_argument("--identity", default="", help="identity name (default: default)")
    account_show = account_commands.add_parser("show", help="print a stored login's public facts")
    account_show.add_argument("--identity", default="")

    caller = commands.add_parser("caller", help="caller tokens")
    caller_commands = caller.add_subparsers(dest="caller_command", required=True)
    caller_commands.add_parser("new-token", help="print a new caller token and its config hash")
    caller_commands.add_parser("hash-token", help="read a token on stdin, print its token_sha256")

    kek = commands.add_parser("kek", help="key-encryption keys")
    kek_commands = kek.add_subparsers(dest="kek_command", required=True)
    kek_generate = kek_commands.add_parser(
        "generate", help="a new KEK line for BROKER_KEK_FILE: printed, or written with --out"
    )
    kek_generate.add_argument(
        "--out",
        metavar="FILE",
        help="write it to FILE, created with mode 0600 (FILE must not exist)",
    )
    kek_generate.add_argument(
        "--force", action="store_true", help="with --out: replace an existing FILE"
    )
    kek_commands.add_parser(
        "reseal",
        help="re-seal every secret in Redis under the first KEK of BROKER_KEK_FILE (rotation)",
    )

    dashboard = commands.add_parser(
        "dashboard", help="live view of broker logs: stdin, or FILEs followed like tail -F"
    )
    dashboard.add_argument("files", nargs="*", metavar="FILE", help="log files (default: stdin)")
    dashboard.add_argument("--once", action="store_true", help="print one snapshot and exit")
    dashboard.add_argument("--format", choices=("table", "json"), default="table")
    dashboard.add_argument("--window", type=float, default=60.0, help="sliding window, seconds")
    dashboard.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``credential-broker``; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "dev":
            from broker.devmode import run_dev

            configure_logging(args.log_level)
            return asyncio.run(run_dev(args.listen, args.emulator_listen))
        if args.command in ("get-authorization", "inspect", "admin"):
            # These explain a failed TLS handshake in one line; gRPC's core would also log it on
            # stderr unless told before it loads (an operator's own GRPC_VERBOSITY wins).
            os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        if args.command == "get-authorization":
            from broker.client_cli import get_authorization

            return asyncio.run(get_authorization(args))
        if args.command == "inspect":
            from broker.client_cli import inspect_header

            return asyncio.run(inspect_header(args))
        if args.command == "admin":
            from broker.client_cli import run_admin

            return asyncio.run(run_admin(args))
        if args.command == "account":
            from broker.account_cli import run_account_command

            configure_logging("warning")
            return asyncio.run(run_account_command(args))
        if args.command == "caller":
            return _caller_command(args.caller_command)
        if args.command == "dashboard":
            from broker.dashboard import run_dashboard

            return run_dashboard(
                args.files,
                once=args.once,
                output=args.format,
                window=args.window,
                refresh=args.refresh,
            )
        if args.command == "kek":
            if args.kek_command == "reseal":
                from broker.kek_cli import run_reseal

                configure_logging("warning")
                return asyncio.run(run_reseal())
            from broker.kek_cli import generate_kek

            return generate_kek(args.out, force=args.force)
    except ConfigError as exc:
        # One JSON event for the log stream (stdout) and one plain line for the person (stderr).
        configure_logging("error")
        log.error(Event.CONFIG_INVALID, error=exc.message)  # noqa: TRY400  (no traceback wanted)
        print(f"credential-broker: configuration error: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2
    except BrokerError as exc:
        print(f"credential-broker: {exc.reason}: {exc.message}", file=sys.stderr)  # noqa: T201
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _caller_command(command: str) -> int:
    import secrets

    from broker.core.callers import hash_token

    if command == "new-token":
        token = secrets.token_urlsafe(32)
        print(f"token: {token}")  # noqa: T201  (the command's output)
        print(f'token_sha256 = "{hash_token(token)}"')  # noqa: T201
        return 0
    token = sys.stdin.readline().strip()
    if not token:
        print("credential-broker: no token on stdin", file=sys.stderr)  # noqa: T201
        return 1
    print(f'token_sha256 = "{hash_token(token)}"')  # noqa: T201
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.supervised_worker:
        from broker.supervisor import run_worker

        return run_worker()
    overrides: dict[str, Any] = {row.key: getattr(args, row.key) for _, row in serve_flags()}
    overrides["insecure"] = args.insecure
    settings = load_settings(os.environ, overrides)
    configure_logging(settings.log_level)
    if settings.workers > 1:
        from broker.supervisor import supervise

        return supervise(settings)  # holds no secret: each worker hardens itself
    from broker.app import run_event_loop, serve
    from broker.hardening import harden_process

    harden_process(settings)  # before any secret is read
    run_event_loop(serve(settings))
    return 0
