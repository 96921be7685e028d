"""Injected faults: the emulator's way to make a control plane misbehave on purpose (protocol §11).

A :class:`Fault` applies to the next ``count`` requests of one endpoint (or of every endpoint, ``"*"``).
Its effects combine in this order: wait ``delay_seconds``; then drop or reset the connection without a
response; else answer ``status`` (default 200 when only ``body`` is set) with ``body`` (default a JSON
error, and a ``Location`` header when ``location`` is set: a redirect); else, after a delay alone, let the request through to the real handler. Faults are consumed
first in, first out.

With ``after_handler`` the real handler runs *first* and its effects stay (a refresh token consumed, a
task registered), then the fault spoils the answer: the delay holds it (past the client's timeout), a
drop or reset loses it, or ``status``/``body`` replace it. That is the "the server did it but the
client never heard" failure, the one that makes blind retries of single-use credentials dangerous.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ENDPOINTS: Final = (
    "authenticate",
    "register_identity",
    "register_task",
    "protected",
    "authapi_register_identity",
    "authapi_register_task",
    "jwks",
    "oauth_token",
    "accounts_check",
)
"""Fault and stats names of the protocol endpoints: the ChatGPT backend's (§4.1, §5, §12.3), the
AuthAPI's (§4.3, §5.1), the JWKS (§10.3), the OAuth token endpoint (``POST /oauth/token``) and
workspace-route discovery (``GET /backend-api/wham/accounts/check``, §16)."""
ANY_ENDPOINT: Final = "*"
MAX_DELAY_SECONDS: Final = 300.0
_FIELDS: Final = frozenset(
    {
        "endpoint",
        "status",
        "count",
        "delay_seconds",
        "drop_connection",
        "reset_connection",
        "body",
        "content_type",
        "after_handler",
        "location",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One injected misbehaviour.

    Attributes:
        endpoint: one of :data:`ENDPOINTS` (``authenticate``, ``register_identity``,
            ``register_task``, ``protected``, ``authapi_register_identity``,
            ``authapi_register_task``, ``jwks``, ``oauth_token``, ``accounts_check``) or ``*``.
        status: the HTTP status to answer with, or ``None``.
        count: how many matching requests it applies to.
        delay_seconds: wait this long before answering (or before passing the request on).
        drop_connection: close the connection without any response.
        reset_connection: abort the connection with a TCP reset, without any response.
        body: a raw response body to send instead of the default JSON error.
        content_type: the ``Content-Type`` of ``body``.
        after_handler: run the real handler first (its effects stay), then apply the delay, drop,
            reset or replacement answer to its response.
        location: a ``Location`` header for the answer (with ``status``, e.g. 307: a redirect).

    Raises:
        ValueError: a field is out of range, or the fault would do nothing.
    """

    endpoint: str
    status: int | None = None
    count: int = 1
    delay_seconds: float = 0.0
    drop_connection: bool = False
    reset_connection: bool = False
    body: str | None = None
    content_type: str = "application/json"
    after_handler: bool = False
    location: str | None = None

    def __post_init__(self) -> None:
        if self.endpoint not in (*ENDPOINTS, ANY_ENDPOINT):
            raise ValueError(f"endpoint: must be one of {', '.join((*ENDPOINTS, ANY_ENDPOINT))}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("status: must be an HTTP status between 100 and 599")
        if self.count < 1:
            raise ValueError("count: must be at least 1")
        if not math.isfinite(self.delay_seconds) or not (
            0.0 <= self.delay_seconds <= MAX_DELAY_SECONDS
        ):
            raise ValueError(f"delay_seconds: must be between 0 and {MAX_DELAY_SECONDS:g}")
        if self.drop_connection and self.reset_connection:
            raise ValueError("drop_connection and reset_connection: choose one")
        if (self.drop_connection or self.reset_connection) and self.responds:
            raise ValueError("a dropped connection cannot also carry a status or a body")
        if not self.content_type.isprintable() or not self.content_type:
            raise ValueError("content_type: must be a non-empty printable string")
        if self.location is not None and (
            self.status is None or not self.location or not self.location.isprintable()
        ):
            raise ValueError("location: must be a non-empty printable string, with a status")
        if not (self.responds or self.delay_seconds or self.drops):
            raise ValueError("the fault does nothing: set status, body, delay or a drop")

    @property
    def responds(self) -> bool:
        """Whether the fault answers in place of the real handler."""
        return self.status is not None or self.body is not None

    @property
    def drops(self) -> bool:
        """Whether the fault ends the connection without a response."""
        return self.drop_connection or self.reset_connection

    @property
    def response_status(self) -> int:
        """The status a responding fault answers with."""
        return 200 if self.status is None else self.status

    def matches(self, endpoint: str) -> bool:
        """Whether the fault applies to a request of ``endpoint``."""
        return self.endpoint in (ANY_ENDPOINT, endpoint)

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Build a fault from the JSON body of ``POST /_emulator/faults``.

        Raises:
            TypeError: not an object, or a member of the wrong type.
            ValueError: an unknown member, or a value out of range.
        """
        if not isinstance(data, Mapping):
            raise TypeError("the fault must be a JSON object")
        unknown = sorted(set(map(str, data)) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown fault member(s): {', '.join(unknown)}")
        return cls(
            endpoint=_required_str(data, "endpoint"),
            status=_optional_int(data, "status"),
            count=_int(data, "count", 1),
            delay_seconds=_number(data, "delay_seconds", 0.0),
            drop_connection=_bool(data, "drop_connection"),
            reset_connection=_bool(data, "reset_connection"),
            body=_optional_str(data, "body"),
            content_type=_optional_str(data, "content_type") or "application/json",
            after_handler=_bool(data, "after_handler"),
            location=_optional_str(data, "location"),
        )


def _required_str(data: Mapping[object, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise TypeError(f"{name}: is required and must be a string")
    return value


def _optional_str(data: Mapping[object, object], name: str) -> str | None:
    value = data.get(name)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{name}: must be a string or null")


def _optional_int(data: Mapping[object, object], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: must be an integer or null")
    return value


def _int(data: Mapping[object, object], name: str, default: int) -> int:
    value = _optional_int(data, name)
    return default if value is None else value


def _number(data: Mapping[object, object], name: str, default: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: must be a number")
    return float(value)


def _bool(data: Mapping[object, object], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise TypeError(f"{name}: must be a boolean")
    return value


class FaultQueue:
    """Pending faults with their remaining counts, consumed first in, first out."""

    def __init__(self) -> None:
        self._pending: list[tuple[Fault, list[int]]] = []

    def add(self, fault: Fault) -> None:
        """Queue ``fault`` for its next ``count`` matching requests."""
        self._pending.append((fault, [fault.count]))

    def take(self, endpoint: str) -> Fault | None:
        """Use up one application of the oldest fault matching ``endpoint``."""
        for index, (fault, remaining) in enumerate(self._pending):
            if fault.matches(endpoint):
                remaining[0] -= 1
                if remaining[0] == 0:
                    del self._pending[index]
                return fault
        return None

    def clear(self) -> None:
        """Forget every pending fault."""
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)
