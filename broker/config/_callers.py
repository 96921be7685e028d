"""``[callers.NAME]`` tables of ``BROKER_CONFIG``: who may ask the broker for what."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from broker.config._parsers import boolean, seconds
from broker.core.callers import CallerPolicy
from broker.errors import ConfigError

_CALLER_KEYS: Final = frozenset(
    {
        "token_sha256",
        "cert_names",
        "identities",
        "bearer_fallback",
        "bearer_only",
        "admin",
        "rate_limit",
        "burst",
        "share_threads",
    }
)
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def read_caller(name: str, table: Mapping[str, Any]) -> CallerPolicy:
    """The caller ``name`` from its ``[callers.NAME]`` table."""
    where = f"callers.{name}"
    if not name.isprintable() or not 0 < len(name) <= 64:
        raise ConfigError(f"{where}: a caller name is 1 to 64 printable characters")
    unknown = sorted(set(table) - _CALLER_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    token_hash = table.get("token_sha256")
    if token_hash is not None and not _SHA256_HEX.fullmatch(str(token_hash).lower()):
        raise ConfigError(
            f"{where}.token_sha256: expected 64 hex digits (credential-broker caller hash-token)"
        )
    cert_names = table.get("cert_names", [])
    if not isinstance(cert_names, list) or not all(isinstance(n, str) and n for n in cert_names):
        raise ConfigError(f"{where}.cert_names: expected a list of certificate CN/SAN names")
    if token_hash is None and not cert_names:
        raise ConfigError(f"{where}: set token_sha256 or cert_names so the caller can authenticate")
    identities = table.get("identities", ["*"])
    if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
        raise ConfigError(f'{where}.identities: expected a list of identity names or ["*"]')
    rate = table.get("rate_limit")
    return CallerPolicy(
        name=name,
        identities=None if "*" in identities else frozenset(identities),
        bearer_fallback=boolean(f"{where}.bearer_fallback", table.get("bearer_fallback", False)),
        bearer_only=boolean(f"{where}.bearer_only", table.get("bearer_only", False)),
        admin=boolean(f"{where}.admin", table.get("admin", False)),
        rate_per_second=seconds(f"{where}.rate_limit", rate) if rate is not None else None,
        burst=seconds(f"{where}.burst", table.get("burst", rate or 1)) if rate is not None else 0.0,
        token_sha256=str(token_hash).lower() if token_hash is not None else None,
        cert_names=tuple(cert_names),
        share_threads=boolean(f"{where}.share_threads", table.get("share_threads", False)),
    )


def unique_credentials(callers: tuple[CallerPolicy, ...]) -> None:
    """Refuse one token hash or certificate name for two callers.

    The registry would authenticate such a credential as whichever caller matched last, so a plain
    caller's token could act with an admin's rights.
    """
    by_token: dict[str, str] = {}
    by_cert_name: dict[str, str] = {}
    for caller in callers:
        if caller.token_sha256 is not None:
            other = by_token.setdefault(caller.token_sha256, caller.name)
            if other != caller.name:
                raise ConfigError(
                    f"callers.{caller.name}.token_sha256: callers.{other} has the same token hash, "
                    "so one token would authenticate as either; give each caller its own token "
                    "(credential-broker caller new-token)"
                )
        for name in caller.cert_names:
            other = by_cert_name.setdefault(name, caller.name)
            if other != caller.name:
                raise ConfigError(
                    f"callers.{caller.name}.cert_names: {name!r} also names callers.{other}; a "
                    "client certificate name must belong to exactly one caller"
                )
