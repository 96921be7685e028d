"""The log event catalogue: every operational fact the broker writes is one of these names.

An ops dashboard queries by event name, so names are stable, dotted, lower-case and name a class of
fact (never a formatted sentence). Fields are documented in ``docs/events.md``; identifiers such as
``identity``, ``agent_runtime_id`` and ``task_id`` may appear, secrets never do (the redaction processor
in :mod:`broker.logs` enforces it a second time).
"""

from __future__ import annotations

import enum


class Event(enum.StrEnum):
    """Stable event names (DESIGN §8)."""

    # life cycle
    BROKER_STARTED = "broker.started"
    BROKER_STOPPING = "broker.stopping"
    BROKER_STOPPED = "broker.stopped"
    BROKER_STATS = "broker.stats"
    CONFIG_INVALID = "config.invalid"
    # state
    STORE_EMBEDDED = "store.embedded"
    STORE_CONNECTED = "store.connected"
    STORE_DEGRADED = "store.degraded"
    STORE_RECOVERED = "store.recovered"
    STORE_CORRUPT_VALUE = "store.corrupt_value"
    STORE_INSECURE = "store.insecure"
    # control plane
    CONTROLPLANE_REQUEST = "controlplane.request"
    CONTROLPLANE_RETRY = "controlplane.retry"
    CONTROLPLANE_CIRCUIT_OPENED = "controlplane.circuit_opened"
    CONTROLPLANE_CIRCUIT_CLOSED = "controlplane.circuit_closed"
    # identities and tasks
    IDENTITY_LOADED = "identity.loaded"
    IDENTITY_REGISTERED = "identity.registered"
    IDENTITY_DISCARDED = "identity.discarded"
    TASK_REGISTERED = "task.registered"
    TASK_REJECTED = "task.rejected"
    TASK_INVALIDATED = "task.invalidated"
    TASK_REJECTION_THROTTLED = "task.rejection_throttled"
    # authorizations
    AUTHORIZATION_ISSUED = "authorization.issued"
    AUTHORIZATION_FAILED = "authorization.failed"
    FALLBACK_BEARER = "fallback.bearer"
    BEARER_RELOADED = "bearer.reloaded"
    # transport
    RPC_COMPLETED = "rpc.completed"
    RPC_INTERNAL_ERROR = "rpc.internal_error"
    CALLER_DENIED = "caller.denied"
    # emulator
    EMULATOR_STARTED = "emulator.started"
    EMULATOR_REQUEST = "emulator.request"
