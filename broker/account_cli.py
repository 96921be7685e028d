"""``account import|show``: the account login in the store (never showing a token)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from broker.adapters.clock import SystemClock
from broker.app import build_store
from broker.config import load_settings
from broker.core.credentials.account import import_login, public_facts
from broker.core.protocol.login import parse_auth_json
from broker.errors import ConfigError


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
