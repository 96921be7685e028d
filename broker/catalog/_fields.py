"""Catalogue fields: those of every line, those of every RPC's lines, and those events share.

Shared fields are defined once, so an ``identity`` or a ``task_id`` means the same thing in every
event that carries one.
"""

from __future__ import annotations

from typing import Final

from broker.events import FieldSpec, FieldType

STR, INT, NUM, BOOL = FieldType.STRING, FieldType.INTEGER, FieldType.NUMBER, FieldType.BOOLEAN

BASE_FIELDS: Final = (
    FieldSpec("event", STR, "the event name (this catalogue's key)"),
    FieldSpec("level", STR, "debug, info, warning or error"),
    FieldSpec("timestamp", STR, "when it was written, ISO 8601 in UTC"),
)
"""Fields every line carries."""

CONTEXT_FIELDS: Final = (
    FieldSpec("rpc_method", STR, "the full gRPC method being served", optional=True),
    FieldSpec(
        "request_id", STR, "random id of the RPC being served", identifier=True, optional=True
    ),
    FieldSpec(
        "peer", STR, "the client's address as gRPC reports it", identifier=True, optional=True
    ),
    FieldSpec(
        "caller",
        STR,
        "the authenticated caller's name; null when caller authentication is off",
        identifier=True,
        nullable=True,
        optional=True,
    ),
)
"""Fields bound by the gRPC interceptor: present on every line written while serving an RPC."""

PROCESS_FIELDS: Final = (
    FieldSpec(
        "worker",
        INT,
        "the index of the supervised worker that wrote the line (0 to BROKER_WORKERS - 1); "
        "only when BROKER_WORKERS is above 1",
        optional=True,
    ),
)
"""Fields of every line a supervised worker writes (``serve --workers N``)."""

IDENTITY = FieldSpec("identity", STR, "the configured identity name", identifier=True)
RUNTIME = FieldSpec(
    "agent_runtime_id",
    STR,
    "the agent runtime id the control plane gave the identity",
    identifier=True,
)
TASK_ID = FieldSpec("task_id", STR, "the task id, as the control plane issued it", identifier=True)
TASK_KIND = FieldSpec("task_kind", STR, "'background' or 'thread'")
THREAD_ID = FieldSpec("thread_id", STR, "the worker's thread id", identifier=True)
DURATION_MS = FieldSpec("duration_ms", NUM, "how long it took, in milliseconds")
ERROR = FieldSpec("error", STR, "the error's class name or a short error code")
DETAIL = FieldSpec("detail", STR, "a precise explanation for the operator")
REASON = FieldSpec("reason", STR, "why, as a short snake_case or UPPER_SNAKE code")
EXCEPTION = FieldSpec(
    "exception", STR, "the formatted traceback (written with the exception)", optional=True
)
ACCOUNT_ID = FieldSpec("account_id", STR, "the ChatGPT account", identifier=True)
REDIS = FieldSpec("redis", STR, "the Redis server or topology (host:port, never credentials)")
HTTP_STATUS = FieldSpec("http_status", INT, "the HTTP status the worker reported (401 or 403)")
STATS = (
    FieldSpec("rpcs_by_code", FieldType.COUNTS, "finished RPCs by gRPC status code, since start"),
    FieldSpec("rpcs_by_method", FieldType.COUNTS, "finished RPCs by method name, since start"),
    FieldSpec("rpc_seconds_total", NUM, "seconds spent serving RPCs, since start"),
    FieldSpec(
        "authorizer",
        FieldType.COUNTS,
        "l1_hit, l1_miss, l2_hit, assertion_minted, bearer.<fallback_reason>, rejection_throttled",
    ),
    FieldSpec("watch_streams", INT, "open WatchAuthorization streams"),
    FieldSpec("watch_topics", INT, "distinct (identity, slot, mode) keys being watched"),
    FieldSpec(
        "callers",
        FieldType.COUNTS_BY_NAME,
        "per caller name: rpcs (finished) and denied, since start",
        identifier=True,
    ),
    FieldSpec("circuits_open", FieldType.STRINGS, "identities whose control-plane circuit is open"),
)
