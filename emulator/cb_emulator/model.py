"""Values the emulator shows to tests and to its HTTP layer (protocol §9.1, §12)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
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


REFRESH_GRANT: Final = "refresh_token"

# The public development login: ``credential-broker dev`` and the benchmarks use it.
DEV_TOKEN: Final = "dev-access-token"  # noqa: S105  (public, accepted only by the emulator)
DEV_ACCOUNT: Final = EmulatorAccount(account_id="acct-dev", user_id="user-dev")

DEFAULT_TOKENS: Final[Mapping[str, EmulatorAccount]] = MappingProxyType({DEV_TOKEN: DEV_ACCOUNT})


class Rejection(Exception):
    """A request the emulator refuses: an HTTP status and a machine-readable reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class OAuthError(Exception):
    """A token request refused as RFC 6749 §5.2 says: HTTP 400 and ``{error, error_description}``.

    Attributes:
        error: the OAuth error code (``invalid_request``, ``invalid_client``, ``invalid_grant``,
            ``unsupported_grant_type``, ``invalid_scope``).
        description: ``error_description``.
        reason: the finer reason written to the emulator's request log.
        status: the HTTP status (400).
    """

    def __init__(self, error: str, description: str, reason: str | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason or error
        self.status = 400

    def payload(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A refresh-grant request, as the reference client sends it (JSON or form-encoded).

    Attributes:
        client_id: ``client_id``.
        refresh_token: ``refresh_token`` (a secret).
        scope: ``scope``, or ``None`` when absent.
    """

    client_id: str
    refresh_token: str
    scope: str | None

    @classmethod
    def from_fields(cls, fields: Mapping[str, object], client_id: str) -> TokenRequest:
        """Check the request's members in RFC 6749 order: client, grant type, token, scope.

        Raises:
            OAuthError: ``invalid_request``, ``invalid_client`` or ``unsupported_grant_type``.
        """
        client = fields.get("client_id")
        if client is None:
            raise OAuthError("invalid_client", "client_id is required")
        if client != client_id:
            raise OAuthError("invalid_client", "unknown client_id")
        grant = fields.get("grant_type")
        if not isinstance(grant, str) or not grant:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant != REFRESH_GRANT:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        token = fields.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise OAuthError("invalid_request", "refresh_token is required")
        scope = fields.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise OAuthError("invalid_request", "scope must be a string")
        return cls(client_id=client, refresh_token=token, scope=scope)


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """One generation of a login's tokens (all secrets)."""

    access_token: str
    refresh_token: str
    id_token: str
    expires_in: int
    scope: str

    def response(self) -> dict[str, object]:
        """The token endpoint's success body (RFC 6749 §5.1)."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "id_token": self.id_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


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
class EmulatorLogin:
    """A ChatGPT login (one OAuth token family), as the test controls show it; never its tokens.

    Attributes:
        login_id: the family's id (also the access tokens' ``session_id`` claim).
        account_id: ``chatgpt_account_id``.
        user_id: ``chatgpt_user_id``.
        plan_type: ``chatgpt_plan_type``.
        fedramp: ``chatgpt_account_is_fedramp``.
        email: the id token's ``email``.
        state: ``"active"`` or ``"revoked"``.
        revoked_reason: ``None``, ``"refresh_token_reused"`` (reuse detected) or
            ``"revoked_by_control"`` (a test revoked it).
        refreshes: successful refreshes of this family.
        created_at: when the login was created.
        last_refresh: when it was created or last refreshed.
        access_expires_at: the expiry of its newest access token (or when a test expired it).
    """

    login_id: str
    account_id: str
    user_id: str
    plan_type: str
    fedramp: bool
    email: str
    state: str
    revoked_reason: str | None
    refreshes: int
    created_at: datetime
    last_refresh: datetime
    access_expires_at: datetime

    def to_json(self) -> dict[str, object]:
        """The login as a JSON-ready object (times in ISO 8601)."""
        return {
            "login_id": self.login_id,
            "account_id": self.account_id,
            "user_id": self.user_id,
            "plan_type": self.plan_type,
            "fedramp": self.fedramp,
            "email": self.email,
            "state": self.state,
            "revoked_reason": self.revoked_reason,
            "refreshes": self.refreshes,
            "created_at": self.created_at.isoformat(),
            "last_refresh": self.last_refresh.isoformat(),
            "access_expires_at": self.access_expires_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class OAuthStats:
    """Counters of the OAuth token endpoint and logins since start or the last reset.

    Attributes:
        logins_created: logins created by the test controls.
        refreshes: successful refreshes (each rotated a family's tokens).
        refreshes_refused: token requests answered with an OAuth error.
        refresh_token_reuse: consumed refresh tokens presented again (each revoked its family).
        families_revoked: token families revoked, by reuse detection or by a test control.
        logins: logins the emulator holds now (a gauge, not cleared by a counters-only reset).
    """

    logins_created: int = 0
    refreshes: int = 0
    refreshes_refused: int = 0
    refresh_token_reuse: int = 0
    families_revoked: int = 0
    logins: int = 0

    def to_json(self) -> dict[str, int]:
        """The counters as a JSON-ready object."""
        return {
            "logins_created": self.logins_created,
            "refreshes": self.refreshes,
            "refreshes_refused": self.refreshes_refused,
            "refresh_token_reuse": self.refresh_token_reuse,
            "families_revoked": self.families_revoked,
            "logins": self.logins,
        }


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
        requests_by_endpoint: every request that reached a protocol endpoint, faulted or not
            (``accounts_check``: workspace-route discoveries).
        task_registrations_with_credential: AuthAPI task registrations that reached the handler
            carrying ``Authorization`` or ``X-OpenAI-Authorization`` (G4 sends none, §5.1).
        jwts_minted: Agent Identity JWTs minted by the test control (§10.4).
        oauth: the OAuth token endpoint's and the logins' counters (also readable as
            :attr:`refreshes`, :attr:`refresh_token_reuse` and :attr:`families_revoked`).
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
    oauth: OAuthStats = OAuthStats()

    @property
    def refreshes(self) -> int:
        """Successful OAuth refreshes."""
        return self.oauth.refreshes

    @property
    def refresh_token_reuse(self) -> int:
        """Consumed refresh tokens presented again."""
        return self.oauth.refresh_token_reuse

    @property
    def families_revoked(self) -> int:
        """OAuth token families revoked."""
        return self.oauth.families_revoked

    @property
    def oauth_in_use(self) -> bool:
        """Whether the emulator holds a login or counted OAuth activity since the last reset."""
        return self.oauth != OAuthStats() or self.requests_by_endpoint.get("oauth_token", 0) > 0

    def to_json(self) -> dict[str, object]:
        """The counters as a JSON-ready object.

        The OAuth members (the :class:`OAuthStats` counters at the top level and
        ``requests_by_endpoint.oauth_token``) appear only when :attr:`oauth_in_use`, so the JSON of
        an emulator that never saw a login is what it was before the token endpoint existed.
        Likewise ``requests_by_endpoint.accounts_check`` appears only once a discovery arrived.
        """
        requests = dict(self.requests_by_endpoint)
        oauth: dict[str, int] = self.oauth.to_json() if self.oauth_in_use else {}
        if not self.oauth_in_use:
            requests.pop("oauth_token", None)
        if not requests.get("accounts_check"):
            requests.pop("accounts_check", None)
        return {
            "biscuits_minted": self.biscuits_minted,
            "identity_registrations": self.identity_registrations,
            "task_registrations": self.task_registrations,
            "verifications_ok": self.verifications_ok,
            "verifications_failed": self.verifications_failed,
            "faults_applied": self.faults_applied,
            "requests_by_endpoint": requests,
            "task_registrations_with_credential": self.task_registrations_with_credential,
            "jwts_minted": self.jwts_minted,
            **oauth,
        }


@dataclass(frozen=True, slots=True)
class Verified:
    """A credential ``/protected`` accepted."""

    scheme: str
    account: EmulatorAccount
    agent_runtime_id: str | None = None
    task_id: str | None = None
