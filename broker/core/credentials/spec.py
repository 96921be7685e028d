"""What the core needs to know about one configured identity (built by ``broker.config``)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from broker.core.credentials.model import Budget
from broker.core.credentials.ports import BearerSource, ControlPlane, IdentitySource, LoginBinding
from broker.core.protocol.urls import is_supported_host
from broker.errors import InvalidArgument

IDENTITY_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_THREAD_ID_LEN: Final = 256


class Profile(enum.Enum):
    """The protocol shape an identity speaks (protocol §0.1, §15); :attr:`rules` says what it
    decides."""

    CHATGPT_BACKEND = "chatgpt-backend"
    AUTHAPI = "authapi"

    @property
    def rules(self) -> ProfileRules:
        """What this shape decides, in one place."""
        return _RULES[self]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileRules:
    """Where the two protocol shapes differ (protocol §3, §4, §5, §8.5, §15): every branch on the
    shape reads one of these, so a difference is stated once."""

    at_authapi: bool
    """Identities and tasks are registered at the AuthAPI (§3.4), not under the ChatGPT base."""
    biscuits: bool
    """Identity and task registrations are authorised by single-use human biscuits minted with
    the account's Bearer (§4.1, §5.1); otherwise the identity registration sends the Bearer itself
    and task registrations send no credential (§4.3, §5.1)."""
    host_rule: bool
    """Background assertions go only to supported hosts (§3.2; dropped by today's shape, §15)."""
    bootstrap_rules: bool
    """A registered identity's failures follow the bootstrap rules (§8.5, §11.2)."""
    capabilities: tuple[str, ...]
    """The ``capabilities`` an identity registration declares (§4.1, §4.3)."""
    ttl_field: bool
    """An identity registration sends ``"ttl": null`` (§4.3)."""


_RULES: Final = {
    Profile.CHATGPT_BACKEND: ProfileRules(
        at_authapi=False,
        biscuits=True,
        host_rule=True,
        bootstrap_rules=False,
        capabilities=(),
        ttl_field=False,
    ),
    Profile.AUTHAPI: ProfileRules(
        at_authapi=True,
        biscuits=False,
        host_rule=False,
        bootstrap_rules=True,
        capabilities=("responsesapi",),
        ttl_field=True,
    ),
}


class WorkspaceRouting(enum.Enum):
    """Whether the broker discovers the account's workspace route (protocol §16).

    ``auto`` discovers it for an identity with a ChatGPT login whose control plane is a ChatGPT
    host (the reference host list, §3.2), where data-residency workspaces exist; ``on`` for every
    identity with a login (a gateway or emulator that serves the discovery); ``off`` never.
    """

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Source(enum.Enum):
    """Where an identity's key comes from (DESIGN §5)."""

    REGISTER = "register"
    JWT = "jwt"
    IMPORT = "import"


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadTaskLimits:
    """How many new thread tasks the fleet registers for one identity (each is a control-plane call).

    Every thread id a caller has not used before costs a registration at the control plane, so
    without limits one careless or hostile caller could make the account meet 429s (and open the
    circuit) for every caller. Admission is fleet-wide (the store meters it, in Redis for a fleet)
    and all or nothing; a rate of 0 switches that bucket off.

    Attributes:
        per_caller_rate: new thread tasks per second for one caller.
        per_caller_burst: new thread tasks one caller may register at once.
        per_identity_rate: new thread tasks per second for the identity, all callers together.
        per_identity_burst: new thread tasks the identity may register at once.
        max_live: thread tasks of the identity alive at once (each lives ``thread_task_ttl``).
    """

    per_caller_rate: float = 2.0
    per_caller_burst: int = 60
    per_identity_rate: float = 10.0
    per_identity_burst: int = 200
    max_live: int = 50_000

    def budgets(self, caller: str | None) -> list[Budget]:
        """The buckets a new thread task of ``caller`` draws on.

        ``caller`` is ``None`` for the broker itself and for an open broker's anonymous callers,
        which the identity's budget already bounds together.
        """
        budgets = []
        if self.per_identity_rate > 0:
            budgets.append(Budget("identity", self.per_identity_rate, self.per_identity_burst))
        if caller is not None and self.per_caller_rate > 0:
            budgets.append(Budget(f"caller:{caller}", self.per_caller_rate, self.per_caller_burst))
        return budgets


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    """Settings of one identity, as the credential core uses them.

    Attributes:
        name: the broker's name for it.
        controlplane_url: the configured ChatGPT base URL.
        profile: protocol shape.
        enabled: ``use_agent_identity``; off means Bearer with reason DISABLED (§8.1.1).
        account_id: the ChatGPT account (workspace) to bind to; ``None`` means no binding (§9.1).
        user_id: the ChatGPT user, when known (§9.3 rule 3).
        fedramp: send ``X-OpenAI-Fedramp: true`` with every header (§6.2).
        extra_hosts: hosts added to the reference supported-host list (§3.2).
        assertion_ttl: seconds an assertion is handed out after its timestamp.
        refresh_margin: an assertion is no longer handed out this long before it expires.
        thread_task_ttl: seconds a thread task is kept; ``None`` keeps it until rejected.
        thread_limits: the budgets and cap on new thread tasks.
        abom: the agent bill of materials sent at registration (§4.4).
        source: register a key, or take one from an Agent Identity JWT or an imported record.
        bootstrap_cooldown: ``authapi`` profile: seconds the fleet stays on Bearer after a
            retryable bootstrap failure (§8.5).
        workspace_routing: whether the account's workspace route is discovered (§16).
    """

    name: str
    controlplane_url: str
    profile: Profile = Profile.CHATGPT_BACKEND
    enabled: bool = True
    account_id: str | None = None
    user_id: str | None = None
    fedramp: bool = False
    extra_hosts: tuple[str, ...] = ()
    assertion_ttl: float = 60.0
    refresh_margin: float = 30.0
    thread_task_ttl: float | None = 24 * 3600.0
    thread_limits: ThreadTaskLimits = field(default_factory=ThreadTaskLimits)
    abom: Mapping[str, str] = field(default_factory=dict)
    source: Source = Source.REGISTER
    bootstrap_cooldown: float = 3600.0
    workspace_routing: WorkspaceRouting = WorkspaceRouting.AUTO

    @property
    def supported_host(self) -> bool:
        """Whether background assertions may go to this control plane (§3.2).

        The host rule belongs to the ``chatgpt-backend`` shape only; today's shape dropped it (§15).
        """
        if not self.profile.rules.host_rule:
            return True
        return is_supported_host(self.controlplane_url, self.extra_hosts)

    @property
    def discovers_route(self) -> bool:
        """Whether this identity's headers carry its account's workspace route (§16)."""
        if not self.has_bearer or self.workspace_routing is WorkspaceRouting.OFF:
            return False
        if self.workspace_routing is WorkspaceRouting.ON:
            return True
        return is_supported_host(self.controlplane_url)

    @property
    def has_bearer(self) -> bool:
        """Whether this identity's account can fall back to Bearer (a JWT identity cannot, §8.4)."""
        return self.source is not Source.JWT

    def companion_headers(
        self, account_id: str | None = None, fedramp: bool = False
    ) -> dict[str, str]:
        """Headers a worker sends with any header of this identity (§6.2, §15).

        Args:
            account_id: the bound account (from the identity record); defaults to the configured one.
            fedramp: the record says the account is FedRAMP.
        """
        headers: dict[str, str] = {}
        account = account_id or self.account_id
        if account:
            headers["ChatGPT-Account-ID"] = account
        if self.fedramp or fedramp:
            headers["X-OpenAI-Fedramp"] = "true"
        return headers


@dataclass(frozen=True, slots=True)
class IdentityRuntime:
    """An identity's spec with the adapters that serve it.

    ``source`` loads the identity for the ``jwt`` and ``import`` sources; ``None`` for ``register``.
    """

    spec: IdentitySpec
    control_plane: ControlPlane
    bearer: BearerSource
    source: IdentitySource | None = None
    login: LoginBinding | None = None


async def binding(runtime: IdentityRuntime) -> tuple[str | None, str | None]:
    """(account id, user id) the identity is bound to: the imported login's when there is one,
    else the configured ones (§9.1)."""
    if runtime.login is not None:
        bound = await runtime.login.binding()
        if bound is not None:
            return bound
    return runtime.spec.account_id, runtime.spec.user_id


def validate_identity_name(name: str, field_name: str = "identity") -> str:
    """Return ``name`` if it is a valid identity name.

    Raises:
        InvalidArgument: not 1-64 characters of ``[A-Za-z0-9_.-]``.
    """
    if not IDENTITY_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{field_name} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )
    return name


def validate_thread_id(thread_id: str, field_name: str = "thread_id") -> str:
    """Return ``thread_id`` if it is printable ASCII without whitespace, at most 256 characters.

    Raises:
        InvalidArgument: too long, or a character outside ``!``..``~``.
    """
    if len(thread_id) > MAX_THREAD_ID_LEN:
        raise InvalidArgument(f"{field_name} is longer than {MAX_THREAD_ID_LEN} characters")
    if any(not ("!" <= ch <= "~") for ch in thread_id):
        raise InvalidArgument(
            f"{field_name} must be printable ASCII without whitespace or control characters"
        )
    return thread_id
