"""Structured JSON logging and the redaction processor (DESIGN §8).

``configure_logging`` is called once by the composition root (``app.py``/``cli.py``). Everything logs
through ``structlog.get_logger()``. Per-RPC context (method, request id, peer, caller) comes from
the :data:`RPC_LOG_CONTEXT` the gRPC interceptor sets for each RPC, and is computed only when a line
is written while serving it (:func:`merge_rpc_context`): a call that logs nothing pays nothing.

Secrets are kept out of logs twice: by construction (they travel as :class:`broker.secret.Secret`,
whose ``repr`` is masked) and by :func:`redact_secrets`, which masks fields with secret-sounding names
and any string that looks like an assertion, a Bearer token or a PKCS#8 private key.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final, Protocol, TextIO

import structlog

from broker.secret import Secret

REDACTED: Final = "[REDACTED]"
# Field names are snake_case; a secret-sounding word must be a whole word of the name
# ("access_token", "kek"), so counters keyed by RPC names ("GetAuthorization") stay readable.
_SECRET_FIELD: Final = re.compile(
    r"(?:^|_)(token|secret|password|authorization|header_value|private_key|biscuit|"
    r"assertion_header|kek|jwt|refresh_token|id_token)(?:$|_)"
)
_SECRET_TEXT: Final = re.compile(
    r"(AgentAssertion\s+[A-Za-z0-9_\-]{8,}"
    r"|Bearer\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|MFECAQEwBQYDK2VwBCIEI[A-Za-z0-9+/=]*"
    r"|MC4CAQAwBQYDK2VwBCIEI[A-Za-z0-9+/=]*"
    r"|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*)"
)
# Field names that look secret but carry public facts.
_PUBLIC_FIELDS: Final = frozenset({"public_key_ssh", "token_source", "has_token"})


def _redact_value(value: object) -> object:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return _SECRET_TEXT.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: _redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _redact_field(name: str, value: object) -> object:
    if name not in _PUBLIC_FIELDS and _SECRET_FIELD.search(name) and value not in (None, ""):
        return REDACTED
    return _redact_value(value)


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secret fields and secret-looking text in every value."""
    for name in list(event_dict):
        if name == "event":
            event_dict[name] = _redact_value(event_dict[name])
        else:
            event_dict[name] = _redact_field(name, event_dict[name])
    return event_dict


class RpcLogContext(Protocol):
    """What a line written while serving an RPC says about it (see :func:`merge_rpc_context`)."""

    def log_fields(self) -> Iterable[tuple[str, object]]:
        """(field, value) pairs, computed on demand: ``rpc_method``, ``request_id``, ``peer``..."""
        ...


RPC_LOG_CONTEXT: contextvars.ContextVar[RpcLogContext | None] = contextvars.ContextVar(
    "rpc_log_context", default=None
)
"""The RPC being served; each RPC runs in its own task, so the value ends with it."""


def merge_rpc_context(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add the fields of the RPC being served; a line's own fields win."""
    context = RPC_LOG_CONTEXT.get()
    if context is not None:
        for name, value in context.log_fields():
            event_dict.setdefault(name, value)
    return event_dict


def shared_processors() -> list[structlog.typing.Processor]:
    """The processors every configuration uses, ending before the renderer."""
    return [
        structlog.contextvars.merge_contextvars,
        merge_rpc_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def process_fields(fields: Mapping[str, object]) -> structlog.typing.Processor:
    """structlog processor: add ``fields`` (which process wrote the line) to every line that does
    not set them itself."""

    def add(
        _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for name, value in fields.items():
            event_dict.setdefault(name, value)
        return event_dict

    return add


def configure_logging(
    level: str = "info",
    stream: TextIO | None = None,
    *,
    process: Mapping[str, object] | None = None,
) -> None:
    """Send JSON lines (one event per line) to ``stream`` (stdout by default) at ``level``.

    ``process`` fields go on every line (a supervised worker's ``worker`` index, so the lines of a
    pod's workers can be told apart in one merged stream).
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    extra = [process_fields(dict(process))] if process else []
    structlog.configure(
        processors=[
            *shared_processors(),
            *extra,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
