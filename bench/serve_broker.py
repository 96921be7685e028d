"""``python -m bench.serve_broker``: the real broker, wired to the real control-plane emulator.

The emulator runs in this process (as in ``credential-broker dev``); it is only called while
the cache is cold. With ``--redis-url`` (and ``--kek-file``) the broker uses the Redis store sealed
under the KEK, otherwise the embedded store. With ``--caller-sha256`` one caller (``bench``) is
configured, so every call must carry its token, as in production; without it the broker is open
(loopback). Logging and the event loop are what ``credential-broker serve`` uses.
:mod:`bench.serve_echo` runs this same process with one method's work replaced.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench._server import serve_until_signalled
from broker.app import BrokerApp, GetAuthorizationFactory, run_event_loop
from broker.config import load_settings
from broker.logs import configure_logging
from broker.transport.grpc.prebuilt import PrebuiltGetAuthorization
from cb_emulator import DEV_ACCOUNT, DEV_TOKEN, Emulator


def parser(prog: str) -> argparse.ArgumentParser:
    """The options both server processes take."""
    options = argparse.ArgumentParser(prog=prog)
    options.add_argument("--redis-url", default=None)
    options.add_argument("--kek-file", type=Path, default=None)
    options.add_argument("--log-level", default="info")
    options.add_argument("--assertion-ttl", default="60")
    options.add_argument("--refresh-margin", default="30")
    options.add_argument(
        "--caller-sha256",
        default=None,
        help="configure one caller, 'bench', with this token hash (default: no callers, open)",
    )
    return options


async def run(
    args: argparse.Namespace, get_authorization: GetAuthorizationFactory = PrebuiltGetAuthorization
) -> None:
    """Start emulator and broker, serve until SIGTERM/SIGINT, then stop both.

    ``get_authorization`` builds the broker's ``GetAuthorization`` handler (the echo server's
    answers fixed bytes).
    """
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as workdir:
        token_file = Path(workdir) / "access-token"
        token_file.write_text(DEV_TOKEN + "\n", encoding="utf-8")
        token_file.chmod(0o600)
        async with Emulator(tokens={DEV_TOKEN: DEV_ACCOUNT}) as emulator:
            url = await emulator.start("127.0.0.1", 0)
            env = {
                "BROKER_LISTEN": "127.0.0.1:0",
                "BROKER_CONTROLPLANE_URL": url,
                "BROKER_SUPPORTED_HOSTS": "127.0.0.1",
                "BROKER_BEARER_TOKEN_FILE": str(token_file),
                "BROKER_ACCOUNT_ID": DEV_ACCOUNT.account_id,
                "BROKER_USER_ID": DEV_ACCOUNT.user_id,
                "BROKER_LOG_LEVEL": args.log_level,
                "BROKER_ASSERTION_TTL": args.assertion_ttl,
                "BROKER_REFRESH_MARGIN": args.refresh_margin,
                "BROKER_STATS_INTERVAL": "3600",
            }
            if args.redis_url:
                env["BROKER_REDIS_URL"] = args.redis_url
                env["BROKER_KEK_FILE"] = str(args.kek_file)
            if args.caller_sha256:
                config = Path(workdir) / "callers.toml"
                config.write_text(f'[callers.bench]\ntoken_sha256 = "{args.caller_sha256}"\n')
                env["BROKER_CONFIG"] = str(config)
            settings = load_settings(env)
            configure_logging(settings.log_level)
            app = BrokerApp(settings, get_authorization=get_authorization)
            try:
                await app.start()
                if app.port is None:
                    raise SystemExit("broker: no port bound")
                await serve_until_signalled(app.port, app.stats)
            finally:
                await app.stop(grace=1.0)


def main() -> None:
    """Entry point."""
    options = parser("python -m bench.serve_broker")
    args = options.parse_args()
    if args.redis_url and args.kek_file is None:
        options.error("--redis-url needs --kek-file")
    run_event_loop(run(args))


if __name__ == "__main__":
    main()
