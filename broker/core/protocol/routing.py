"""Workspace routing: which backend origin and routing header an account's calls need (§16).

Some ChatGPT workspaces (data-residency accounts) are served by their own backend. Their owner
discovers, per selected account, a backend origin and an ``account_routing_override`` with
``GET {chatgpt base}/wham/accounts/check``; calls then go to that origin (scheme, host and port
replaced, the path kept) with ``x-openai-account-routing-override: us|us_cr`` (no header for
``NO_CONSTRAINT``), and redirects are refused on them.

This module reads one discovery answer; it does no I/O. The rules follow the reference client:
an origin is https with a host and nothing else (no user info, path, query or fragment); an override
is ``NO_CONSTRAINT``, ``us`` or ``us_cr``; an answer whose entry names another account than the
selected one is an error. One deliberate difference: ``http`` is accepted for a loopback host
(``127.0.0.0/8``, ``::1``, ``localhost``), so a local control plane (the emulator, tests) can route;
anywhere else an ``http`` origin is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from broker.core.protocol.urls import is_loopback_host
from broker.errors import ProtocolError

ROUTING_HEADER: Final = "x-openai-account-routing-override"
NO_CONSTRAINT: Final = "NO_CONSTRAINT"
OVERRIDES: Final = frozenset({"us", "us_cr"})
ACCOUNTS_CHECK_PATH: Final = "/wham/accounts/check"


@dataclass(frozen=True, slots=True)
class Route:
    """A discovered route.

    Attributes:
        origin: ``scheme://host[:port]`` the account's calls go to; ``None``: the configured base's
            origin (``NO_CONSTRAINT`` or no origin in the answer).
        override: ``us`` or ``us_cr`` (sent as :data:`ROUTING_HEADER`); ``None`` for
            ``NO_CONSTRAINT``.
    """

    origin: str | None
    override: str | None


def parse_origin(value: str) -> str:
    """``value`` as a canonical origin: ``scheme://host[:port]``, host lower-cased, default port
    dropped.

    Raises:
        ProtocolError: not https (or http to a loopback host), no host, or any user info, path,
            query or fragment.
    """
    shown = value if len(value) <= 200 else value[:200] + "..."
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ProtocolError(f"backend origin {shown!r} is not a URL ({exc})") from None
    host = parts.hostname
    if not host:
        raise ProtocolError(f"backend origin {shown!r} has no host")
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(host)):
        raise ProtocolError(f"backend origin {shown!r} must be https")
    if parts.username is not None or parts.password is not None:
        raise ProtocolError(f"backend origin {shown!r} must not carry user info")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in value or "#" in value:
        raise ProtocolError(f"backend origin {shown!r} must be an origin only (no path or query)")
    return _origin(parts.scheme, host, port)


def _origin(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host[:port]``: IPv6 hosts bracketed, the scheme's default port dropped."""
    default = 443 if scheme == "https" else 80
    shown_host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown_host}" + (f":{port}" if port not in (None, default) else "")


def origin_of(url: str) -> str:
    """The origin of an absolute http(s) URL (path dropped), in :func:`parse_origin`'s form.

    Raises:
        ProtocolError: the URL is not absolute http(s).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError(f"{url!r} is not an absolute http(s) URL")
    return _origin(parts.scheme, parts.hostname, parts.port)


def parse_accounts_check(answer: Mapping[str, object], account_id: str) -> Route:
    """The route of ``account_id`` in a ``wham/accounts/check`` answer.

    ``workspace_backend_origin`` missing, null or ``NO_CONSTRAINT`` means the configured base; an
    ``account_routing_override`` missing or null means ``NO_CONSTRAINT``.

    Raises:
        ProtocolError: no entry for the account (or one naming another account), a malformed
            entry, an invalid origin or an unknown override.
    """
    accounts = answer.get("accounts")
    if not isinstance(accounts, list):
        raise ProtocolError("the answer has no 'accounts' list")
    entries = [entry for entry in accounts if isinstance(entry, Mapping)]
    entry = next((e for e in entries if e.get("id") == account_id), None)
    if entry is None:
        others = sorted({str(e.get("id"))[:64] for e in entries})[:3]
        if others:
            raise ProtocolError(
                f"the answer names account(s) {', '.join(others)}, not the selected account "
                f"{account_id}"
            )
        raise ProtocolError(f"the answer has no entry for the selected account {account_id}")
    origin_value = entry.get("workspace_backend_origin")
    if origin_value is None or origin_value == NO_CONSTRAINT:
        origin = None
    elif isinstance(origin_value, str):
        origin = parse_origin(origin_value.strip())
    else:
        raise ProtocolError("workspace_backend_origin is not a string")
    override_value = entry.get("account_routing_override")
    if override_value is None or override_value == NO_CONSTRAINT:
        override = None
    elif isinstance(override_value, str) and override_value in OVERRIDES:
        override = override_value
    else:
        shown = str(override_value)[:40]
        raise ProtocolError(
            f"account_routing_override {shown!r} is not one of NO_CONSTRAINT, us, us_cr"
        )
    return Route(origin=origin, override=override)
