"""The log event catalogue: every operational fact the broker writes is one of these names.

An ops dashboard queries by event name, so names are stable, dotted, lower-case and name a class of
fact (never a formatted sentence).

The catalogue describes each event as data (:class:`EventSpec`, one per name, in
:data:`broker.catalog.CATALOGUE`): its level, one line saying what happened, and its fields with
their JSON types and whether they are identifiers. Identifiers such as ``identity``,
``agent_runtime_id`` and ``task_id`` may appear; secrets never do (:data:`SECRETS_IN_FIELDS`): they
travel as :class:`broker.secret.Secret` and the redaction processor in :mod:`broker.logs` masks
anything secret-looking a second time.

``docs/events.md`` is generated from the catalogue (``python -m broker.catalog --write``); a test
fails when it is stale, and another drives a real broker through every scenario and checks each line
it writes against the catalogue (:func:`broker.catalog.problems`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Final


class Event(enum.StrEnum):
    """Stable event names (DESIGN §8)."""

    # life cycle
    BROKER_STARTED = "broker.started"
    BROKER_STOPPING = "broker.stopping"
    BROKER_STOPPED = "broker.stopped"
    BROKER_STATS = "broker.stats"
    CONFIG_INVALID = "config.invalid"
    PROCESS_HARDENED = "process.hardened"
    FILE_EXPOSED = "file.exposed"
    SUPERVISOR_STARTED = "supervisor.started"
    SUPERVISOR_WORKER_EXITED = "supervisor.worker_exited"
    SUPERVISOR_WORKER_FAILED = "supervisor.worker_failed"
    SUPERVISOR_WORKER_KILLED = "supervisor.worker_killed"
    SUPERVISOR_STOPPING = "supervisor.stopping"
    SUPERVISOR_STOPPED = "supervisor.stopped"
    BACKGROUND_RESTARTED = "background.restarted"
    # state
    STORE_EMBEDDED = "store.embedded"
    STORE_CONNECTED = "store.connected"
    STORE_DEGRADED = "store.degraded"
    STORE_RECOVERED = "store.recovered"
    STORE_CORRUPT_VALUE = "store.corrupt_value"
    STORE_UNSEALED = "store.unsealed"
    STORE_RESEAL_SKIPPED = "store.reseal_skipped"
    # control plane
    CONTROLPLANE_REQUEST = "controlplane.request"
    CONTROLPLANE_RETRY = "controlplane.retry"
    CONTROLPLANE_CIRCUIT_OPENED = "controlplane.circuit_opened"
    CONTROLPLANE_CIRCUIT_CLOSED = "controlplane.circuit_closed"
    UPSTREAM_CLEARTEXT_ALLOWED = "upstream.cleartext_allowed"
    # identities and tasks
    IDENTITY_LOADED = "identity.loaded"
    IDENTITY_REGISTERED = "identity.registered"
    IDENTITY_DISCARDED = "identity.discarded"
    IDENTITY_ROTATED = "identity.rotated"
    IDENTITY_RESTORED = "identity.restored"
    CACHE_FLUSHED = "cache.flushed"
    TASK_REGISTERED = "task.registered"
    TASK_REJECTED = "task.rejected"
    TASK_INVALIDATED = "task.invalidated"
    TASK_REJECTION_THROTTLED = "task.rejection_throttled"
    TASK_BUDGET_EXHAUSTED = "task.budget_exhausted"
    # authorizations
    AUTHORIZATION_FAILED = "authorization.failed"
    FALLBACK_BEARER = "fallback.bearer"
    BOOTSTRAP_COOLDOWN = "bootstrap.cooldown_started"
    BEARER_RELOADED = "bearer.reloaded"
    BEARER_REJECTION_THROTTLED = "bearer.rejection_throttled"
    ACCOUNT_IMPORTED = "account.imported"
    ACCOUNT_REFRESHED = "account.refreshed"
    ACCOUNT_REFRESH_FAILED = "account.refresh_failed"
    ACCOUNT_REAUTH_REQUIRED = "account.reauth_required"
    ACCOUNT_BINDING_CHANGED = "account.binding_changed"
    ROUTING_DISCOVERED = "routing.discovered"
    ROUTING_DISCOVERY_FAILED = "routing.discovery_failed"
    # transport
    RPC_COMPLETED = "rpc.completed"
    RPC_INTERNAL_ERROR = "rpc.internal_error"
    CALLER_DENIED = "caller.denied"
    CALLER_AUTH_DISABLED = "caller.auth_disabled"
    CALLER_ANONYMOUS_ALLOWED = "caller.anonymous_allowed"
    TLS_RELOADED = "tls.reloaded"
    # emulator
    EMULATOR_STARTED = "emulator.started"
    EMULATOR_REQUEST = "emulator.request"


# -- the catalogue as data ------------------------------------------------------------------------

SECRETS_IN_FIELDS: Final = False
"""No field of any event carries a secret (private key, token, assertion, biscuit, KEK).

Held by construction (secrets are :class:`broker.secret.Secret`, whose ``repr`` is masked, and no
catalogued field is meant for one) and enforced again by :func:`broker.logs.redact_secrets`.
"""


class Level(enum.StrEnum):
    """The ``level`` field of a line, as structlog writes it."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class FieldType(enum.StrEnum):
    """The JSON type of a field's value."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    """An integer or a fraction."""
    BOOLEAN = "boolean"
    STRINGS = "array of strings"
    COUNTS = "object of integers"
    """Counters by name (JSON object, string keys, integer values)."""
    COUNTS_BY_NAME = "object of objects of integers"
    """Counters by name, grouped by a second name (e.g. per caller)."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of an event.

    Attributes:
        name: the JSON key (snake_case, with a unit suffix where it has one).
        type: the JSON type of its value.
        description: one line saying what it holds.
        identifier: it names a thing (an identity, runtime, task, thread, request or peer): useful to
            correlate lines, of unbounded cardinality, never secret.
        nullable: the value may be ``null``.
        optional: the key may be absent.
    """

    name: str
    type: FieldType
    description: str
    _: KW_ONLY
    identifier: bool = False
    nullable: bool = False
    optional: bool = False


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One catalogued event.

    Attributes:
        event: its name.
        level: the level it is normally written at.
        description: one line saying which fact it records.
        fields: the fields it carries besides :data:`broker.catalog.BASE_FIELDS` (and
            :data:`broker.catalog.CONTEXT_FIELDS` when written while serving an RPC).
        other_levels: further levels it may be written at, each with when.
    """

    event: Event
    level: Level
    description: str
    fields: tuple[FieldSpec, ...] = ()
    _: KW_ONLY
    other_levels: Mapping[Level, str] = field(default_factory=dict)

    @property
    def levels(self) -> frozenset[Level]:
        """Every level the event may be written at."""
        return frozenset({self.level, *self.other_levels})

    def field_spec(self, name: str) -> FieldSpec | None:
        """The field called ``name``, or ``None``."""
        return next((f for f in self.fields if f.name == name), None)
