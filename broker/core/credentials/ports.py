"""The small interfaces the credential core needs from the outside world (DESIGN §2).

Each Protocol has a real adapter and an in-memory one behind the same interface, so the core is
tested with real cryptography, an in-memory store and an injected clock, and runs in production over
Redis and HTTP without a line of difference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from broker.core.credentials.model import (
    AccountRecord,
    Budget,
    CachedAssertion,
    IdentityRecord,
    Refusal,
    TaskRecord,
    WorkspaceRouteRecord,
)
from broker.core.protocol.login import LoginTokens
from broker.secret import Secret


class Clock(Protocol):
    """Wall-clock and monotonic time, and pausing on it."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Pause the caller for ``seconds`` of this clock's time (waits bounded by a deadline)."""
        ...


class Store(Protocol):
    """Shared broker state (DESIGN §4): identities, tasks, cached assertions and locks.

    Every method raises :class:`broker.errors.StoreUnavailable` when the backing service cannot be
    reached. A stored value that cannot be opened or parsed is deleted and reported as absent (the
    caller re-establishes it), with a ``store.corrupt_value`` warning event.

    ``identity`` arguments are validated names (``[A-Za-z0-9_.-]{1,64}``); implementations may use them
    in key names verbatim.
    """

    @property
    def shared(self) -> bool:
        """Whether other broker processes see this state (Redis) or not (embedded)."""
        ...

    async def ping(self) -> None:
        """Check the backing service answers; raise StoreUnavailable if not."""
        ...

    async def close(self) -> None:
        """Release connections this store created."""
        ...

    async def load_identity(self, identity: str) -> IdentityRecord | None:
        """The persisted identity record, or ``None``."""
        ...

    async def save_identity(self, record: IdentityRecord) -> None:
        """Persist (overwrite) the identity record; the private key is sealed at rest."""
        ...

    async def delete_identity(self, identity: str) -> None:
        """Forget the identity record (its tasks become unreachable: their keys carry its runtime id)."""
        ...

    async def load_task(self, identity: str, agent_runtime_id: str, slot: str) -> TaskRecord | None:
        """The task stored in ``slot`` for this runtime, or ``None``."""
        ...

    async def save_task(self, identity: str, task: TaskRecord, ttl_seconds: float | None) -> None:
        """Store ``task`` in its slot (overwriting), expiring after ``ttl_seconds`` if given."""
        ...

    async def delete_task(
        self, identity: str, agent_runtime_id: str, slot: str, task_id: str
    ) -> bool:
        """Delete the slot only if it still holds ``task_id`` (compare-and-delete); report whether it did."""
        ...

    async def load_assertion(self, identity: str, task_id: str) -> CachedAssertion | None:
        """A cached assertion for ``task_id``, or ``None``."""
        ...

    async def save_assertion(
        self, identity: str, assertion: CachedAssertion, ttl_seconds: float
    ) -> CachedAssertion:
        """Cache ``assertion`` unless one is already cached for its task; return the one that is cached.

        First writer wins, so replicas converge on one assertion per window.
        """
        ...

    async def delete_assertion(self, identity: str, task_id: str) -> None:
        """Drop the cached assertion of ``task_id``."""
        ...

    async def acquire_lock(self, identity: str, name: str, ttl_seconds: float) -> str | None:
        """Try once to take the named lock; return its fencing token, or ``None`` if held elsewhere."""
        ...

    async def release_lock(self, identity: str, name: str, token: str) -> bool:
        """Release the lock if ``token`` still owns it (compare-and-delete); report whether it did."""
        ...

    async def load_account(self, identity: str) -> AccountRecord | None:
        """The identity's stored login, or ``None``."""
        ...

    async def save_account(self, record: AccountRecord) -> None:
        """Persist (overwrite) the login; its tokens are sealed at rest."""
        ...

    async def load_route(self, identity: str) -> WorkspaceRouteRecord | None:
        """The account's shared workspace route, or ``None`` (never stored, or expired)."""
        ...

    async def save_route(
        self, identity: str, route: WorkspaceRouteRecord, ttl_seconds: float
    ) -> None:
        """Share (overwrite) the account's workspace route for ``ttl_seconds``."""
        ...

    async def start_cooldown(self, identity: str, name: str, ttl_seconds: float) -> None:
        """Set a fleet-wide back-off marker (e.g. after a bootstrap failure) for ``ttl_seconds``."""
        ...

    async def cooldown_remaining(self, identity: str, name: str) -> float | None:
        """Seconds left on the named marker, or ``None`` when it is not set."""
        ...

    async def admit_thread_task(
        self,
        identity: str,
        member: str,
        *,
        ttl_seconds: float,
        live_cap: int,
        budgets: Sequence[Budget],
    ) -> Refusal | None:
        """Admit one new thread task, fleet-wide and atomically, or say which limit refuses it.

        Admission takes one token from every budget and records ``member`` as a live thread task
        for ``ttl_seconds``; nothing is taken when any limit refuses. A member already live is
        not counted twice against ``live_cap``.
        """
        ...

    async def forget_thread_task(self, identity: str, member: str) -> None:
        """Stop counting ``member`` as live (its task was deleted or never registered)."""
        ...

    async def publish_invalidation(self, identity: str, slot: str) -> None:
        """Tell every replica that the task in ``slot`` of ``identity`` is dead."""
        ...

    def invalidations(self) -> AsyncIterator[tuple[str, str]]:
        """Yield ``(identity, slot)`` for every invalidation published by any replica, this one included."""
        ...


class ControlPlane(Protocol):
    """The control plane's registration endpoints for one configured identity (protocol §4, §5)."""

    async def register_identity(
        self, *, bearer: Secret, agent_public_key: str, abom: Mapping[str, str]
    ) -> str:
        """Register the public key; return the ``agent_runtime_id``.

        Raises:
            ControlPlaneUnavailable: retryable failure after all attempts.
            ControlPlaneError: any other failure (status and a body excerpt attached).
        """
        ...

    async def register_task(
        self, *, bearer: Secret, agent_runtime_id: str, body: Mapping[str, str]
    ) -> Mapping[str, object]:
        """Post a signed task registration body; return the decoded JSON response object.

        Raises:
            ControlPlaneUnavailable: retryable failure after all attempts.
            ControlPlaneError: any other failure, or a response that is not a JSON object.
        """
        ...

    async def accounts_check(self, *, bearer: Secret, account_id: str) -> Mapping[str, object]:
        """``GET {chatgpt base}/wham/accounts/check`` for ``account_id``; the decoded answer
        (workspace route discovery, protocol §16).

        Raises:
            ControlPlaneUnavailable: retryable failure after all attempts.
            ControlPlaneError: any other failure (a 401 has ``status`` 401), or a response that is
                not a JSON object.
        """
        ...


class IdentitySource(Protocol):
    """An identity that is not registered by the broker: an Agent Identity JWT or an imported record."""

    async def load(self) -> IdentityRecord:
        """The current identity, re-read when its file changed.

        Raises:
            IdentityUnusable: missing, malformed, untrusted or expired; the message says which.
        """
        ...


class BearerSource(Protocol):
    """The account's OAuth access token (for fallbacks and registration)."""

    async def token(self) -> Secret | None:
        """The current access token, or ``None`` when there is none.

        Raises:
            BrokerError: a precise reason the account cannot give a token (e.g. re-login needed).
        """
        ...

    async def rejected(self, token: Secret) -> None:
        """A worker reports that the control plane refused ``token`` (401): refresh or re-read."""
        ...

    async def reread(self) -> Secret | None:
        """The current token, read from its source now (no cache); never refreshes it."""
        ...


class LoginBinding(Protocol):
    """The account and user a login belongs to (the identity's binding, §9.1)."""

    async def binding(self) -> tuple[str, str | None] | None:
        """(account id, user id), or ``None`` when no login is known."""
        ...


class TokenEndpoint(Protocol):
    """The OAuth provider's token endpoint (refresh grant)."""

    async def refresh(self, refresh_token: Secret) -> LoginTokens:
        """Exchange a refresh token for new tokens (the old refresh token is consumed).

        Raises:
            RefreshRejected: ``invalid_grant``: the login is gone.
            RefreshOutcomeUnknown: the request may have reached the provider; never resend it.
            RefreshUnavailable: nothing was consumed (connect failure, 5xx); safe to try later.
        """
        ...


class Sealer(Protocol):
    """Seals secrets at rest with an AEAD bound to where they are stored (DESIGN §4).

    ``associated_data`` is the store key name (plus the field name for hash fields), so a sealed value
    copied under another key fails to open. Implementations: ``broker.adapters.sealing``.
    """

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Return a self-describing sealed form of ``plaintext`` bound to ``associated_data``."""
        ...

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        """Return the plaintext of ``sealed``.

        Raises:
            SealingError: wrong format or mode, unknown key, another associated data, or tampering.
        """
        ...
