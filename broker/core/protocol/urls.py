"""Control-plane URLs: base normalisation, the supported-host rule and endpoints (protocol §3)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from broker.errors import UrlError

DEFAULT_CHATGPT_BASE_URL: Final = "https://chatgpt.com/backend-api/"
REFERENCE_HOSTS: Final = ("chatgpt.com", "chat.openai.com", "chatgpt-staging.com")
REFERENCE_HOST_SUFFIXES: Final = (".chatgpt.com", ".chatgpt-staging.com")
_REMOTE_CONTROL_SUFFIXES: Final = (
    "/wham/remote/control/server/enroll",
    "/wham/remote/control/server",
)
_PRODUCTION_PREFIXES: Final = ("https://chatgpt.com", "https://chat.openai.com")
PRODUCTION_AUTHAPI: Final = "https://auth.openai.com/api/accounts"
STAGING_AUTHAPI: Final = "https://auth.api.openai.org/api/accounts"


def normalize_chatgpt_base_url(base_url: str) -> str:
    """Normalise a configured ChatGPT base URL the way the final reference crate does (§3.1).

    1. trim trailing ``/``; 2. drop a remote-control suffix; 3. drop ``/codex`` unless it is
    ``/api/codex``; 4. on chatgpt.com / chat.openai.com, append ``/backend-api`` when neither
    ``/backend-api`` nor ``/api/codex`` is present.
    """
    url = base_url.rstrip("/")
    for suffix in _REMOTE_CONTROL_SUFFIXES:
        if url.endswith(suffix):
            url = url[: -len(suffix)]
            break
    if url.endswith("/codex") and not url.endswith("/api/codex"):
        url = url[: -len("/codex")]
    if (
        url.startswith(_PRODUCTION_PREFIXES)
        and "/backend-api" not in url
        and "/api/codex" not in url
    ):
        url += "/backend-api"
    return url


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost``, in 127.0.0.0/8 or ``::1`` (brackets allowed)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(url: str) -> str:
    """The lower-cased host of ``url``.

    Raises:
        UrlError: the URL has no http(s) scheme or no host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlError(f"control-plane URL must be an absolute http(s) URL, got {url!r}")
    return parts.hostname.lower()


def is_supported_host(base_url: str, extra_hosts: Iterable[str] = ()) -> bool:
    """Whether background-task assertions may be used against this base (§3.2).

    The reference list is exact ``chatgpt.com``, ``chat.openai.com``, ``chatgpt-staging.com`` and
    subdomains of ``chatgpt.com``/``chatgpt-staging.com``. Operators add hosts with ``extra_hosts``;
    an entry starting with ``.`` admits that domain's subdomains.
    """
    try:
        host = host_of(normalize_chatgpt_base_url(base_url))
    except UrlError:
        return False
    if host in REFERENCE_HOSTS or host.endswith(REFERENCE_HOST_SUFFIXES):
        return True
    for entry in extra_hosts:
        allowed = entry.strip().lower()
        if not allowed:
            continue
        if allowed.startswith("."):
            if host.endswith(allowed):
                return True
        elif host == allowed:
            return True
    return False


def authenticate_app_url(chatgpt_base: str) -> str:
    """``GET {chatgpt}/authenticate_app_v2``: mints a human biscuit (§4.1)."""
    return f"{normalize_chatgpt_base_url(chatgpt_base)}/authenticate_app_v2"


def register_identity_url(base: str, *, normalise: bool = True) -> str:
    """``POST {base}/v1/agent/register`` (§3.3, G1 on the ChatGPT base, G4 on the AuthAPI)."""
    root = normalize_chatgpt_base_url(base) if normalise else base.rstrip("/")
    return f"{root}/v1/agent/register"


def register_task_url(base: str, agent_runtime_id: str, *, normalise: bool = True) -> str:
    """``POST {base}/v1/agent/{agent_runtime_id}/task/register``; the id is not percent-encoded (§3.3).

    Raises:
        UrlError: the runtime id is empty, ``.``/``..``, or contains ``/``, ``?`` or ``#``: any of
            these would change the path.
    """
    if any(ch in agent_runtime_id for ch in "/?#") or agent_runtime_id in ("", ".", ".."):
        raise UrlError("agent_runtime_id is empty, a dot segment, or contains a URL delimiter")
    root = normalize_chatgpt_base_url(base) if normalise else base.rstrip("/")
    return f"{root}/v1/agent/{agent_runtime_id}/task/register"


def authapi_base_for(chatgpt_base: str, override: str | None = None) -> str:
    """The AuthAPI base for a ChatGPT base (§3.4 G4, §15).

    Raises:
        UrlError: the base is neither production nor staging and no override was given.
    """
    if override:
        return override.rstrip("/")
    url = chatgpt_base.rstrip("/")
    for suffix in ("/backend-api/codex", "/backend-api", "/codex"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
            break
    if url in _PRODUCTION_PREFIXES:
        return PRODUCTION_AUTHAPI
    if url == "https://chatgpt-staging.com":
        return STAGING_AUTHAPI
    raise UrlError(
        f"no AuthAPI is known for {chatgpt_base!r}; set an explicit AuthAPI base URL for custom bases"
    )
