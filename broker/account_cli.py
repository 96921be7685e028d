"""Store maintenance commands: ``account import|show`` (without showing a token) and ``kek reseal``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys

from redis.exceptions import RedisError

from broker.adapters.clock import SystemClock
from broker.adapters.sealing import load_kek_file
from broker.adapters.store._redis_client import make_client
from broker.adapters.store.reseal import reseal_all
from broker.app import build_store
from broker.config import load_settings
from broker.core.credentials.account import import_login, public_facts
from broker.core.protocol.login import parse_auth_json
from broker.errors import ConfigError, StoreUnavailable


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as handle:
        return handle.read()


async def run_account_command(args: argparse.Namespace) -> int:
    """Import or show the login of an identity in the configured store."""
    settings = load_settings(os.environ)
    name = args.identity or settings.default_identity
    settings.identity(name)
    if not settings.redis_url:
        raise ConfigError(
            "BROKER_REDIS_URL: 'account' commands need the shared store; with the embedded store "
            "set the identity's account_file instead"
        )
    clock = SystemClock()
    store = build_store(settings, clock)
    try:
        if args.account_command == "import":
            try:
                text = await asyncio.to_thread(_read, args.path)
                document = json.loads(text)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"account import: cannot read {args.path}: {exc}") from None
            tokens = parse_auth_json(document if isinstance(document, dict) else {})
            record = await import_login(store, name, tokens, clock)
        else:
            stored = await store.load_account(name)
            if stored is None:
                print(f"credential-broker: identity {name!r} has no stored login", file=sys.stderr)  # noqa: T201
                return 1
            record = stored
        print(json.dumps(public_facts(record), sort_keys=True))  # noqa: T201  (the command's output)
        return 0
    finally:
        await store.close()


async def run_reseal() -> int:
    """Re-seal every private key, login and cached assertion under the primary KEK.

    Prints the report as one JSON line (after any ``store.reseal_skipped`` lines); exits 1 when a
    key was skipped or unreadable, having handled every other key.
    """
    settings = load_settings(os.environ)
    if not settings.redis_url or settings.kek_file is None:
        raise ConfigError(
            "BROKER_REDIS_URL and BROKER_KEK_FILE: 'kek reseal' works on the shared store with the "
            "KEK file whose first key is the new primary (older keys after it)"
        )
    sealer = load_kek_file(settings.kek_file)
    client = make_client(settings.redis_url, socket_timeout=5.0, connect_timeout=5.0, retries=2)
    try:
        report = await reseal_all(client, sealer)
    except RedisError as exc:
        # Re-running is safe: every write is a compare-and-set, and values already moved stay put.
        raise StoreUnavailable(
            f"kek reseal stopped: Redis failed ({type(exc).__name__}); run it again"
        ) from None
    finally:
        await client.aclose()
    print(json.dumps(dataclasses.asdict(report), sort_keys=True))  # noqa: T201  (the output)
    return 0 if report.complete else 1
