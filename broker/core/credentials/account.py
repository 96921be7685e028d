"""The account's login: one owner of the OAuth refresh for the whole fleet.

Theory of operation
-------------------
Refresh tokens are single-use and rotate; a provider that sees one twice revokes the whole token family
and logs every worker out. So exactly one refresh may happen at a time, fleet-wide, and a refresh token
whose fate is unknown must never be sent again.

* The login lives in the store (tokens sealed), with a ``version`` bumped at every write. Each replica
  keeps it in process and re-reads the store every few seconds, and at once when a worker reports a
  401 on the Bearer it was given.
* A refresh is due ``refresh_margin`` plus a per-account jitter before the access token's ``exp``
  (the jitter is derived from the identity, so one account's replicas agree and different accounts do
  not refresh in lockstep). A due refresh runs in the background while the still-valid token is
  served; an expired token makes the caller wait for the refresh.
* The refresh holds the store lock ``account-refresh`` across read -> token request -> durable write.
  The holder re-reads the login first: if its version moved, someone else refreshed and that result is
  adopted. Losers wait (bounded) for the version to move and adopt the winner's tokens.
* Outcomes: success writes the new tokens. ``invalid_grant`` marks the login ``reauth_required``
  (precise FAILED_PRECONDITION for every call that needs the Bearer, one event saying what to do). A
  lost answer (timeout after the request went out, dropped connection) "burns" the refresh token: its
  hash is stored and no replica sends it again; the still-valid access token keeps being served, and
  when it expires the login is ``reauth_required``. A provider that could not be reached (nothing was
  consumed) is simply tried again at the next due time.
* A new id token naming another account or user invalidates the identity bound to the old one (§9.3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog

from broker.core.credentials.model import AccountRecord, AccountState
from broker.core.credentials.ports import Clock, Store, TokenEndpoint
from broker.core.credentials.singleflight import SingleFlight
from broker.core.credentials.waiting import poll_until
from broker.core.protocol.login import LoginTokens
from broker.errors import (
    AccountUnusable,
    RefreshOutcomeUnknown,
    RefreshRejected,
    RefreshUnavailable,
)
from broker.events import Event
from broker.secret import Secret

log = structlog.get_logger("broker.account")

REFRESH_LOCK = "account-refresh"
_REREAD_SECONDS = 5.0
_REAUTH_HINT = "log in again and run 'credential-broker account import <auth.json>'"


def fingerprint(token: Secret) -> str:
    """SHA-256 hex of a token: how a burned refresh token is remembered without storing it."""
    return hashlib.sha256(token.reveal().encode()).hexdigest()


class AccountLogin:
    """Implements ``BearerSource`` from a stored login, refreshing it once for the fleet."""

    def __init__(
        self,
        *,
        identity: str,
        store: Store,
        endpoint: TokenEndpoint,
        clock: Clock,
        refresh_margin: float = 300.0,
        jitter: float = 60.0,
        lock_ttl: float = 30.0,
        wait_deadline: float = 40.0,
        on_binding_change: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """Args:
        identity: the identity whose login this is.
        store: shared state (the login and the refresh lock).
        endpoint: the provider's token endpoint.
        clock: injected time.
        refresh_margin: refresh this long before the access token expires.
        jitter: up to this much earlier, fixed per identity.
        lock_ttl: lifetime of the refresh lock (longer than one token request).
        wait_deadline: how long a caller waits for another replica's refresh.
        on_binding_change: called with the identity when a refresh names another account/user.
        """
        self._identity = identity
        self._store = store
        self._endpoint = endpoint
        self._clock = clock
        self._margin = refresh_margin
        digest = hashlib.sha256(identity.encode()).digest()
        self._jitter = jitter * int.from_bytes(digest[:2], "big") / 65535
        self._lock_ttl = lock_ttl
        self._wait_deadline = wait_deadline
        self._on_binding_change = on_binding_change
        self._record: AccountRecord | None = None
        self._read_at: float | None = None
        self._flights: SingleFlight[str, AccountRecord | None] = SingleFlight()
        self._background: asyncio.Task[None] | None = None

    # -- reading -------------------------------------------------------------------------------

    async def current(self, *, force: bool = False) -> AccountRecord | None:
        """The login, re-read from the store every few seconds (or now with ``force``)."""
        now = self._clock.monotonic()
        if force or self._read_at is None or now - self._read_at >= _REREAD_SECONDS:
            stored = await self._store.load_account(self._identity)
            if stored is not None and (
                self._record is None or stored.version >= self._record.version
            ):
                self._record = stored
            elif stored is None:
                self._record = None
            self._read_at = now
        return self._record

    async def binding(self) -> tuple[str, str | None] | None:
        """(account id, user id) of the login, for the identity's binding (§9.1)."""
        record = await self.current()
        if record is None:
            return None
        return record.tokens.account_id, record.tokens.user_id

    def _due(self, record: AccountRecord) -> bool:
        # Never lead by more than half the token's life, or a short-lived token would be due
        # again the moment it arrives and the fleet would refresh in a loop.
        lifetime = (record.tokens.access_expires_at - record.last_refresh).total_seconds()
        lead = timedelta(seconds=min(self._margin + self._jitter, max(lifetime, 0.0) / 2))
        return self._clock.now() >= record.tokens.access_expires_at - lead

    # -- BearerSource ---------------------------------------------------------------------------

    async def token(self) -> Secret | None:
        """The access token; refreshed in the background when due, awaited when expired.

        Raises:
            AccountUnusable: no login imported, or the login needs a new sign-in.
        """
        record = await self.current()
        if record is None:
            raise AccountUnusable(
                f"identity {self._identity!r} has no imported login; run "
                "'credential-broker account import <auth.json>'"
            )
        if record.state is AccountState.ACTIVE and self._due(record):
            if self._clock.now() >= record.tokens.access_expires_at:
                record = await self.refresh(record) or record
            elif self._background is None or self._background.done():
                self._background = asyncio.get_running_loop().create_task(
                    self._refresh_quietly(record)
                )
        if record.state is AccountState.REAUTH_REQUIRED:
            raise AccountUnusable(
                f"the login of identity {self._identity!r} needs a new sign-in "
                f"({record.detail}); {_REAUTH_HINT}"
            )
        if self._clock.now() >= record.tokens.access_expires_at:
            raise AccountUnusable(
                f"the access token of identity {self._identity!r} expired and could not be "
                f"refreshed ({record.detail or 'refresh unavailable'}); retry later or {_REAUTH_HINT}"
            )
        return record.tokens.access_token

    async def rejected(self, token: Secret) -> None:
        """A worker's 401 on ``token``: refresh once, unless the fleet already moved on."""
        record = await self.current(force=True)
        if record is not None and record.tokens.access_token == token:
            await self.refresh(record)

    async def reread(self) -> Secret | None:
        """The access token as the store holds it now (another replica may have refreshed it)."""
        record = await self.current(force=True)
        return record.tokens.access_token if record is not None else None

    async def _refresh_quietly(self, seen: AccountRecord) -> None:
        try:
            await self.refresh(seen)
        except Exception:  # a background refresh must not die silently
            log.exception(Event.ACCOUNT_REFRESH_FAILED, identity=self._identity, reason="bug")

    # -- refreshing -----------------------------------------------------------------------------

    async def refresh(self, seen: AccountRecord) -> AccountRecord | None:
        """Refresh once fleet-wide; return the login everyone should use afterwards."""
        return await self._flights.do(str(seen.version), lambda: self._refresh_fleet(seen))

    async def _refresh_fleet(self, seen: AccountRecord) -> AccountRecord | None:
        async def locked_or_moved_on() -> str | AccountRecord | None:
            lock = await self._store.acquire_lock(self._identity, REFRESH_LOCK, self._lock_ttl)
            if lock is not None:
                return lock
            latest = await self.current(force=True)
            return latest if latest is not None and latest.version != seen.version else None

        outcome: str | AccountRecord | None = await poll_until(
            self._clock, locked_or_moved_on, deadline=self._wait_deadline
        )
        if outcome is None:
            raise RefreshUnavailable(
                f"another broker is refreshing the login of identity {self._identity!r}; retry"
            )
        if isinstance(outcome, AccountRecord):
            return outcome  # another replica refreshed while this one waited: adopt its login
        try:
            return await self._refresh_locked(seen)
        finally:
            await self._store.release_lock(self._identity, REFRESH_LOCK, outcome)

    async def _refresh_locked(self, seen: AccountRecord) -> AccountRecord | None:
        record = await self.current(force=True)
        if record is None or record.version != seen.version:
            return record  # another replica refreshed (or the login was removed): adopt it
        if record.state is AccountState.REAUTH_REQUIRED:
            return record
        if record.burned_refresh == fingerprint(record.tokens.refresh_token):
            # A refresh with this token was sent before and its outcome is unknown (a lost answer,
            # or a replica that died mid-refresh): sending it again could revoke the whole family.
            log.warning(
                Event.ACCOUNT_REFRESH_FAILED,
                identity=self._identity,
                reason="interrupted",
                detail="the current refresh token was sent by an earlier refresh whose outcome is "
                f"unknown; it is never resent. The access token is served until it expires; then "
                f"{_REAUTH_HINT}",
            )
            return await self._save_state(
                record,
                AccountState.REAUTH_REQUIRED
                if self._clock.now() >= record.tokens.access_expires_at
                else AccountState.ACTIVE,
                "a refresh with the current refresh token was interrupted and is never resent",
            )
        # Mark the refresh token as in flight before it leaves (same version, so waiting replicas
        # keep waiting for the real result): if this replica dies now, no other resends it.
        pending = dataclasses.replace(
            record,
            burned_refresh=fingerprint(record.tokens.refresh_token),
            detail="a refresh is in flight",
        )
        await self._store.save_account(pending)
        started = self._clock.monotonic()
        try:
            tokens = await self._endpoint.refresh(record.tokens.refresh_token)
        except RefreshRejected as exc:
            log.error(  # noqa: TRY400  (an expected outcome: no traceback wanted)
                Event.ACCOUNT_REAUTH_REQUIRED,
                identity=self._identity,
                account_id=record.tokens.account_id,
                detail=exc.message,
                action=_REAUTH_HINT,
            )
            return await self._save_state(record, AccountState.REAUTH_REQUIRED, "invalid_grant")
        except RefreshOutcomeUnknown as exc:
            log.warning(
                Event.ACCOUNT_REFRESH_FAILED,
                identity=self._identity,
                reason="outcome_unknown",
                detail=exc.message,
            )
            burned = dataclasses.replace(
                record,
                burned_refresh=fingerprint(record.tokens.refresh_token),
                version=record.version + 1,
                detail="a refresh's answer was lost; its refresh token is never sent again",
            )
            await self._store.save_account(burned)
            self._record = burned
            return burned
        except RefreshUnavailable as exc:
            log.warning(
                Event.ACCOUNT_REFRESH_FAILED,
                identity=self._identity,
                reason="unavailable",
                detail=exc.message,
            )
            await self._store.save_account(record)  # nothing was consumed: clear the mark
            self._record = record
            return record
        refreshed = AccountRecord(
            identity=self._identity,
            tokens=tokens,
            last_refresh=self._clock.now().replace(microsecond=0),
            version=record.version + 1,
        )
        await self._store.save_account(refreshed)
        self._record = refreshed
        log.info(
            Event.ACCOUNT_REFRESHED,
            identity=self._identity,
            account_id=tokens.account_id,
            access_expires_at=tokens.access_expires_at.isoformat(),
            duration_ms=round((self._clock.monotonic() - started) * 1000, 1),
        )
        old, new = record.tokens, tokens
        if new.account_id != old.account_id or (old.user_id and new.user_id != old.user_id):
            log.warning(
                Event.ACCOUNT_BINDING_CHANGED,
                identity=self._identity,
                account_id=new.account_id,
                previous_account_id=old.account_id,
            )
            if self._on_binding_change is not None:
                await self._on_binding_change(self._identity)
        return refreshed

    async def _save_state(
        self, record: AccountRecord, state: AccountState, detail: str
    ) -> AccountRecord:
        if state is record.state and detail == record.detail:
            return record
        updated = dataclasses.replace(
            record, state=state, detail=detail, version=record.version + 1
        )
        await self._store.save_account(updated)
        self._record = updated
        return updated

    async def close(self) -> None:
        """Cancel a background refresh in progress (shutdown)."""
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)


def public_facts(record: AccountRecord) -> dict[str, object]:
    """What may be shown about a login: never a token."""
    tokens = record.tokens
    return {
        "identity": record.identity,
        "account_id": tokens.account_id,
        "user_id": tokens.user_id,
        "plan_type": tokens.plan_type,
        "fedramp": tokens.fedramp,
        "access_expires_at": tokens.access_expires_at.isoformat(),
        "last_refresh": record.last_refresh.isoformat(),
        "state": record.state.value,
        "detail": record.detail,
    }


async def import_login(
    store: Store, identity: str, tokens: LoginTokens, clock: Clock, *, replace: bool = True
) -> AccountRecord:
    """Store a login for ``identity`` (sealed), replacing the stored one unless ``replace`` is off.

    The new record's version continues the stored one's, so every replica adopts it.
    """
    stored = await store.load_account(identity)
    if stored is not None and not replace:
        return stored
    record = AccountRecord(
        identity=identity,
        tokens=tokens,
        last_refresh=clock.now().replace(microsecond=0),
        version=(stored.version + 1) if stored is not None else 1,
    )
    await store.save_account(record)
    log.info(
        Event.ACCOUNT_IMPORTED, **{k: v for k, v in public_facts(record).items() if v is not None}
    )
    return record
