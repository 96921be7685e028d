"""What the broker hands a worker: an ``Authorization`` header value and the facts about it."""

from __future__ import annotations

import enum
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final

_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


def _no_headers() -> Mapping[str, str]:
    return _NO_HEADERS


class Scheme(enum.StrEnum):
    """Scheme of the header value."""

    AGENT_ASSERTION = "AgentAssertion"
    """``AgentAssertion <token>``: a signed envelope bound to a task."""
    BEARER = "Bearer"
    """``Bearer <access token>``: the account's OAuth token."""
    UNSPECIFIED = "unspecified"
    """A scheme this client does not know (a newer broker)."""


class TaskKind(enum.StrEnum):
    """What the task behind an assertion is used for."""

    BACKGROUND = "background"
    """The identity's one shared task for calls that belong to no thread."""
    THREAD = "thread"
    """A conversation thread's own task."""
    UNSPECIFIED = "unspecified"
    """No task (a Bearer), or a kind this client does not know."""


class FallbackReason(enum.StrEnum):
    """Why the broker returned a Bearer instead of an assertion (``NONE`` for an assertion)."""

    NONE = "none"
    DISABLED = "disabled"
    """Agent identity is switched off for this identity."""
    UNSUPPORTED_HOST = "unsupported_host"
    """The control plane's host is not one background assertions may be sent to."""
    TASK_REGISTRATION_UNAVAILABLE = "task_registration_unavailable"
    """The background task could not be registered right now."""
    IDENTITY_UNAVAILABLE = "identity_unavailable"
    """The identity is not bound to an account or could not be registered."""
    REQUESTED = "requested"
    """The caller asked for a Bearer (``bearer_only=True``)."""
    BOOTSTRAP_UNAVAILABLE = "bootstrap_unavailable"
    """``authapi`` profile: bootstrap failed after its retries; Bearer for a shared cooldown."""
    UNKNOWN = "unknown"
    """A reason this client does not know (a newer broker)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorization:
    """One header value from the broker, ready to put on a request to the control plane.

    Send :meth:`http_headers` (the ``Authorization`` header plus its companions) with the request.
    ``header_value`` is a secret: it is left out of ``repr()`` so that logging an ``Authorization``
    does not leak it.

    Example::

        auth = await client.get_authorization(thread_id="thread-42")
        response = await http.get(url, headers=auth.http_headers())
    """

    header_value: str = field(repr=False)
    """The complete value of the ``Authorization`` header."""
    scheme: Scheme
    identity: str
    """The broker's name of the identity that produced it."""
    agent_runtime_id: str = ""
    """Empty for a Bearer."""
    task_id: str = ""
    """Empty for a Bearer."""
    task_kind: TaskKind = TaskKind.UNSPECIFIED
    thread_id: str = ""
    """The thread the task belongs to; empty for the background task."""
    issued_at: datetime | None = None
    """When the assertion was signed; ``None`` for a Bearer."""
    expires_at: datetime | None = None
    """When the broker stops handing this value out; ``None`` for a Bearer."""
    fallback_reason: FallbackReason = FallbackReason.NONE
    headers: Mapping[str, str] = field(default_factory=_no_headers, hash=False)
    """Companion headers to send with it (``ChatGPT-Account-ID``, ``X-OpenAI-Fedramp``, and
    ``x-openai-account-routing-override`` where a route requires it); read-only."""
    backend_origin: str = ""
    """The origin (``scheme://host[:port]``) the identity's account must be called at, or empty when
    no workspace route applies (use the configured base URL). See :meth:`route_url`."""

    @property
    def is_assertion(self) -> bool:
        """Whether the value is an ``AgentAssertion`` (as opposed to a Bearer fallback)."""
        return self.scheme is Scheme.AGENT_ASSERTION

    def http_headers(self) -> dict[str, str]:
        """Every header to send: the companions and ``Authorization`` (a new dict each call)."""
        headers = dict(self.headers)
        headers["Authorization"] = self.header_value
        return headers

    def route_url(self, url: str) -> str:
        """``url`` sent where this header must go: its origin replaced by :attr:`backend_origin`.

        The scheme, host and port (and any user-info) of ``url`` are replaced by the origin's; the
        path, query and fragment are kept. Without a ``backend_origin`` the URL is returned
        unchanged. A routed request must not follow redirects (the plug-ins refuse them).

        Example::

            auth = await client.get_authorization(thread_id="thread-42")
            response = await http.get(
                auth.route_url(url), headers=auth.http_headers(), follow_redirects=False
            )

        Args:
            url: an absolute ``http(s)://host[:port]/path?query`` URL.

        Raises:
            ValueError: ``backend_origin`` is set but is not a ``scheme://host[:port]`` origin.
        """
        if not self.backend_origin:
            return url
        origin = urllib.parse.urlsplit(self.backend_origin)
        if (
            not origin.scheme
            or not origin.netloc
            or origin.path not in ("", "/")
            or origin.query
            or origin.fragment
        ):
            raise ValueError(
                f"backend_origin {self.backend_origin!r} is not a scheme://host[:port] origin"
            )
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(parts._replace(scheme=origin.scheme, netloc=origin.netloc))

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until :attr:`expires_at` (negative once past), or ``None`` when it has none.

        Args:
            now: the current time in seconds since the epoch (default: ``time.time()``).
        """
        if self.expires_at is None:
            return None
        return self.expires_at.timestamp() - (time.time() if now is None else now)
