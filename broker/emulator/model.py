"""Values the emulator shows to tests and to its HTTP layer (protocol §9.1, §12)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class EmulatorAccount:
    """A ChatGPT account (workspace) and user that a bearer token logs in as (protocol §9.1).

    Attributes:
        account_id: the account (workspace) id identities are bound to.
        user_id: the ChatGPT user id.
        fedramp: whether the account is a FedRAMP account (§4.3).
    """

    account_id: str
    user_id: str
    fedramp: bool = False


DEFAULT_TOKENS: Final[Mapping[str, EmulatorAccount]] = MappingProxyType(
    {"dev-access-token": EmulatorAccount("acct-dev", "user-dev")}
)


class Rejection(Exception):
    """A request the emulator refuses: an HTTP status and a machine-readable reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class EmulatorIdentity:
    """A registered agent identity, as the emulator's test controls show it (§4, §12.1).

    Attributes:
        agent_runtime_id: the id the emulator chose.
        account_id: the account the identity is bound to.
        user_id: the user who registered it.
        authorised_by: ``"biscuit"`` (G1, §4.1), ``"bearer"`` (G4, §4.3) or ``"jwt"`` (minted
            with an Agent Identity JWT, §10.4).
        capabilities: the ``capabilities`` array sent at registration.
        fedramp_header: whether ``X-OpenAI-Fedramp: true`` was sent.
        registered_via: ``"backend-api"`` (``{chatgpt}/v1/agent/register``), ``"authapi"``
            (``{authapi}/v1/agent/register``, §3.3) or ``"jwt"`` (made by a JWT mint).
        fedramp_account: whether the identity's account is a FedRAMP account (§6.2).
    """

    agent_runtime_id: str
    account_id: str
    user_id: str
    authorised_by: str
    capabilities: tuple[str, ...]
    fedramp_header: bool
    registered_via: str = "backend-api"
    fedramp_account: bool = False


@dataclass(frozen=True, slots=True)
class EmulatorTask:
    """A registered task (§5, §12.2).

    Attributes:
        agent_runtime_id: the runtime the task belongs to.
        task_id: the task id the emulator minted.
        revoked: whether a test revoked it.
    """

    agent_runtime_id: str
    task_id: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """Counters since start or the last reset.

    Attributes:
        biscuits_minted: successful ``authenticate_app_v2`` calls.
        identity_registrations: identities registered at either registration endpoint.
        task_registrations: tasks registered at either task endpoint.
        verifications_ok: ``/protected`` requests accepted.
        verifications_failed: ``/protected`` requests refused.
        faults_applied: requests answered by an injected fault.
        requests_by_endpoint: every request that reached a protocol endpoint, faulted or not.
        task_registrations_with_credential: AuthAPI task registrations that reached the handler
            carrying ``Authorization`` or ``X-OpenAI-Authorization`` (G4 sends none, §5.1).
        jwts_minted: Agent Identity JWTs minted by the test control (§10.4).
    """

    biscuits_minted: int
    identity_registrations: int
    task_registrations: int
    verifications_ok: int
    verifications_failed: int
    faults_applied: int
    requests_by_endpoint: Mapping[str, int]
    task_registrations_with_credential: int = 0
    jwts_minted: int = 0

    def to_json(self) -> dict[str, object]:
        """The counters as a JSON-ready object."""
        return {
            "biscuits_minted": self.biscuits_minted,
            "identity_registrations": self.identity_registrations,
            "task_registrations": self.task_registrations,
            "verifications_ok": self.verifications_ok,
            "verifications_failed": self.verifications_failed,
            "faults_applied": self.faults_applied,
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "task_registrations_with_credential": self.task_registrations_with_credential,
            "jwts_minted": self.jwts_minted,
        }


@dataclass(frozen=True, slots=True)
class Verified:
    """A credential ``/protected`` accepted."""

    scheme: str
    account: EmulatorAccount
    agent_runtime_id: str | None = None
    task_id: str | None = None
