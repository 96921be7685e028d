"""Domain values shared by the credential core, its ports and the adapters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from broker.core.protocol.keys import AgentKey
from broker.core.protocol.login import LoginTokens
from broker.secret import Secret

BACKGROUND: Final = "background"


class Scheme(enum.Enum):
    """Which ``Authorization`` scheme a header uses."""

    AGENT_ASSERTION = "AgentAssertion"
    BEARER = "Bearer"


class TaskKind(enum.Enum):
    """What a task is for (protocol §7)."""

    BACKGROUND = "background"
    THREAD = "thread"


class FallbackReason(enum.Enum):
    """Why a Bearer was returned instead of an assertion (protocol §8.1)."""

    NONE = "none"
    DISABLED = "disabled"
    UNSUPPORTED_HOST = "unsupported_host"
    TASK_REGISTRATION_UNAVAILABLE = "task_registration_unavailable"
    IDENTITY_UNAVAILABLE = "identity_unavailable"
    REQUESTED = "requested"
    BOOTSTRAP_UNAVAILABLE = "bootstrap_unavailable"


class Mode(enum.Enum):
    """What the caller asks for."""

    DEFAULT = "default"
    BEARER_ONLY = "bearer_only"


THREAD_SCOPE: Final = "\x1f"
"""Separates a caller's scope from its thread id in a scoped thread id (never in a valid id)."""


def scoped_thread(thread_id: str, scope: str | None) -> str:
    """The broker's name for a caller's thread: ``<US><scope><US><thread_id>``, or the id itself.

    Thread ids hold no control characters (they are validated first), so a scoped id never equals
    an unscoped one and two scopes never share a name.
    """
    if not thread_id or scope is None:
        return thread_id
    return f"{THREAD_SCOPE}{scope}{THREAD_SCOPE}{thread_id}"


def split_thread(thread_id: str) -> tuple[str | None, str]:
    """(scope, thread id as its caller wrote it) of a possibly scoped thread id."""
    if not thread_id.startswith(THREAD_SCOPE):
        return None, thread_id
    _, scope, written = thread_id.split(THREAD_SCOPE, 2)
    return scope, written


def public_thread(thread_id: str) -> str:
    """The thread id as its caller wrote it (the scope removed)."""
    return split_thread(thread_id)[1]


def task_slot(thread_id: str | None) -> str:
    """The store slot of a task: ``background`` or ``thread:<thread_id>``."""
    return BACKGROUND if not thread_id else f"thread:{thread_id}"


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """A registered agent identity as the broker persists it (protocol §9.2, DESIGN §4).

    Attributes:
        name: the broker's name for the identity (configuration key).
        agent_runtime_id: the control plane's id for the registered key.
        key: the private key (sealed whenever it is stored outside process memory).
        account_id: the ChatGPT account (workspace) the identity is bound to.
        user_id: the ChatGPT user at registration, when known.
        registered_at: when the control plane registered it.
        source: how it was established (``register``, ``import``, ``jwt``).
        fedramp: the account is a FedRAMP account (from a JWT or import record; §10.1).
    """

    name: str
    agent_runtime_id: str
    key: AgentKey
    account_id: str
    user_id: str | None
    registered_at: datetime
    source: str = "register"
    fedramp: bool = False

    @property
    def binding_id(self) -> str:
        """``chatgpt-account-<account_id>`` (protocol §9.1)."""
        return f"chatgpt-account-{self.account_id}"


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task registered for an identity (protocol §7).

    Attributes:
        agent_runtime_id: the runtime the task was registered under.
        task_id: the control plane's task id.
        slot: ``background`` or ``thread:<thread_id>``.
        registered_at: when it was registered.
    """

    agent_runtime_id: str
    task_id: str
    slot: str
    registered_at: datetime

    @property
    def kind(self) -> TaskKind:
        """Background or thread, from the slot."""
        return TaskKind.BACKGROUND if self.slot == BACKGROUND else TaskKind.THREAD

    @property
    def thread_id(self) -> str | None:
        """The thread id of a thread task."""
        return None if self.slot == BACKGROUND else self.slot.removeprefix("thread:")


@dataclass(frozen=True, slots=True)
class CachedAssertion:
    """A minted assertion header and its validity window.

    Attributes:
        header_value: ``AgentAssertion <token>`` (a secret: never logged).
        agent_runtime_id: runtime that signed it.
        task_id: task it names.
        issued_at: the envelope timestamp.
        expires_at: when the broker stops serving it.
    """

    header_value: Secret
    agent_runtime_id: str
    task_id: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Authorization:
    """What a worker receives: a header value plus the facts about it (DESIGN §3)."""

    header_value: Secret
    scheme: Scheme
    identity: str
    agent_runtime_id: str = ""
    task_id: str = ""
    task_kind: TaskKind | None = None
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    fallback_reason: FallbackReason = FallbackReason.NONE
    companion_headers: dict[str, str] = field(default_factory=dict)
    thread_id: str = ""
    backend_origin: str = ""
    """Where the account's calls go when a workspace route applies (``scheme://host[:port]``)."""


@dataclass(frozen=True, slots=True)
class WorkspaceRouteRecord:
    """An account's discovered workspace route, as the fleet shares it (protocol §16).

    Attributes:
        account_id: the account it was discovered for.
        token_fingerprint: the first 32 hex digits of the SHA-256 of the access token it was
            discovered with (a new token means a new discovery); never the token.
        origin: ``scheme://host[:port]`` the account's calls go to.
        override: ``us`` or ``us_cr``; ``None`` for ``NO_CONSTRAINT``.
        discovered_at: when it was discovered.
    """

    account_id: str
    token_fingerprint: str
    origin: str
    override: str | None
    discovered_at: datetime


class AccountState(enum.Enum):
    """Whether a login can still be refreshed."""

    ACTIVE = "active"
    REAUTH_REQUIRED = "reauth_required"


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An identity's ChatGPT login, as the broker persists it (sealed tokens, public facts).

    Attributes:
        identity: the identity the login belongs to.
        tokens: the three tokens and the facts read from them.
        last_refresh: when the tokens were last obtained.
        state: ``reauth_required`` once the provider refused the login for good.
        burned_refresh: SHA-256 of a refresh token whose refresh outcome is unknown: the fleet
            never sends it again (a reuse would revoke the whole token family).
        version: bumped at every write, so replicas notice a newer login.
        detail: why the state is what it is (no secret).
    """

    identity: str
    tokens: LoginTokens
    last_refresh: datetime
    state: AccountState = AccountState.ACTIVE
    burned_refresh: str | None = None
    version: int = 1
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Budget:
    """A fleet-wide token bucket: ``burst`` tokens, one more every ``1 / per_second`` seconds.

    Attributes:
        name: what the bucket limits, as events and errors name it (``identity``,
            ``caller:<name>``); also the tail of its store key.
        per_second: sustained rate.
        burst: tokens available at once.
    """

    name: str
    per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the store refused to admit a new thread task, and when asking again may succeed.

    Attributes:
        limit: the budget's name, or ``live_thread_tasks`` for the cap on live thread tasks.
        retry_after: seconds until the refused request would be admitted.
    """

    limit: str
    retry_after: float


LIVE_THREAD_TASKS: Final = "live_thread_tasks"
"""The :class:`Refusal` limit of the cap on an identity's live thread tasks."""
