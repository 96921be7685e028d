"""The decision: which header a worker gets, and why (protocol §8; DESIGN §3, §4).

Theory of operation
-------------------
``authorize`` answers one question for (identity, thread, mode):

* ``BEARER_ONLY`` always gets the account's Bearer (``REQUESTED``, §8.2).
* Agent identity switched off gets Bearer (``DISABLED``, §8.1.1).
* The hot path: an in-process L1 entry for (identity, slot) that stays valid long enough is
  returned at once: no store round trip, no signature.
* Background calls to a host outside the supported list get Bearer (``UNSUPPORTED_HOST``, §3.2);
  thread calls have no host check (§3.2).
* No account binding, or an identity that cannot be established: Bearer (``IDENTITY_UNAVAILABLE``,
  §8.1.3/4, §7.1).
* The slot's task cannot be registered: the background gets Bearer (``TASK_REGISTRATION_UNAVAILABLE``,
  §8.1.5); a thread gets UNAVAILABLE, never a silent Bearer (§8.3).
* Otherwise an assertion: the L2 (store) copy when it is fresh enough, else one minted now and offered
  to the store, first writer wins, so replicas converge on one assertion per window.
* The store being unreachable is never papered over with a Bearer: it is UNAVAILABLE, so no replica
  registers a second background task while the shared state is out of sight.

An assertion is handed out from ``issued_at`` until ``issued_at + ttl - refresh_margin``; a caller can
ask for a longer guaranteed remainder with ``min_remaining``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import structlog

from broker.core.callers import INTERNAL_CALLER, LOCAL_CALLER, CallerPolicy
from broker.core.credentials.counters import AuthorizerCounters
from broker.core.credentials.fallback import BOOTSTRAP_COOLDOWN, FallbackPolicy
from broker.core.credentials.identity import IdentityManager
from broker.core.credentials.model import (
    THREAD_SCOPE,
    Authorization,
    CachedAssertion,
    FallbackReason,
    IdentityRecord,
    Mode,
    Scheme,
    TaskRecord,
    scoped_thread,
    split_thread,
    task_slot,
)
from broker.core.credentials.ports import Clock, Store
from broker.core.credentials.routing import WorkspaceRouter, route_headers
from broker.core.credentials.singleflight import SingleFlight
from broker.core.credentials.spec import (
    IdentityRuntime,
    Source,
    binding,
    validate_identity_name,
    validate_thread_id,
)
from broker.core.credentials.tasks import TaskRegistry
from broker.core.credentials.waiting import poll_until
from broker.core.credentials.watch import WatchHub, WatchKey
from broker.core.protocol.assertion import build_assertion, parse_assertion, verify_assertion
from broker.errors import (
    ControlPlaneError,
    IdentityUnusable,
    InvalidArgument,
    NoBearerToken,
    ProtocolError,
    ReportRefused,
    TaskUnavailable,
    UnknownIdentity,
)
from broker.events import Event
from broker.secret import Secret

log = structlog.get_logger("broker.authorizer")

# An invalidation of this slot means "everything of the identity" (rotation, flush).
ALL_SLOTS = "*"

# A throttled Bearer report waits this long at most for a refresh in flight (each look reads the
# store: the refresh may be another replica's).
_BEARER_WAIT_S = 2.0

# Errors on the way to an assertion that the protocol answers with a Bearer fallback (§8.1).
_FALLBACK_ERRORS = (ControlPlaneError, ProtocolError, IdentityUnusable, NoBearerToken)


_DEFAULT_MODE: Final = Mode.DEFAULT
"""For the hot path: reading an enum member off its class costs a metaclass lookup per call."""


def _scoped(thread_id: str, caller: CallerPolicy) -> str:
    """The broker's name for ``thread_id`` as ``caller`` uses it (its own namespace by default)."""
    return scoped_thread(thread_id, caller.thread_scope)


def _requester(caller: CallerPolicy) -> str | None:
    """Whose thread-task budget a request draws on: a configured caller's, else none of its own."""
    return None if caller is INTERNAL_CALLER or caller is LOCAL_CALLER else caller.name


@dataclass(frozen=True, slots=True)
class Rejection:
    """The outcome of a rejection report."""

    authorization: Authorization
    replaced: bool


@dataclass(frozen=True, slots=True)
class _Claim:
    """This replica's claim on replacing one task (see ``_claim_replacement``)."""

    task: TaskRecord
    lock_name: str
    token: str


@dataclass(slots=True)
class _Entry:
    authorization: Authorization
    serve_until: datetime
    fresh_until: float
    """``serve_until`` on the clock's monotonic scale: what the hot path compares."""


class Authorizer:
    """Issues headers for every configured identity; one per process, built in ``app.py``."""

    def __init__(
        self,
        *,
        identities: Mapping[str, IdentityRuntime],
        default_identity: str,
        store: Store,
        clock: Clock,
        identity_manager: IdentityManager,
        tasks: TaskRegistry,
        l1_max_entries: int = 100_000,
        rejection_min_interval: float = 5.0,
        router: WorkspaceRouter | None = None,
    ) -> None:
        """Args:
        identities: configured identities by name.
        default_identity: the name used when a request names none.
        store: shared state.
        clock: injected time.
        identity_manager: establishes identities.
        tasks: finds and registers tasks.
        l1_max_entries: bound of the in-process cache (oldest entries are evicted).
        rejection_min_interval: a slot's task is replaced, and the account's Bearer refreshed
            on a report, at most once per this many seconds fleet-wide, so workers reporting
            every header they get cannot make the broker hammer the control plane.
        router: finds the accounts' workspace routes (default: one over ``store``).
        """
        if default_identity not in identities:
            raise ValueError(f"default identity {default_identity!r} is not configured")
        self._identities = dict(identities)
        self._default = default_identity
        self._store = store
        self._clock = clock
        self._monotonic = clock.monotonic
        self._identity_manager = identity_manager
        self._tasks = tasks
        self._l1: dict[tuple[str, str], _Entry] = {}
        self._l1_max = l1_max_entries
        self._flights: SingleFlight[tuple[str, str, float], Authorization] = SingleFlight()
        self._replacements: SingleFlight[tuple[str, str, str], Rejection] = SingleFlight()
        self._rejection_min_interval = rejection_min_interval
        self._hub = WatchHub(
            clock=clock, authorize=self._authorize_key, serve_until=self.serve_until
        )
        self.counters = AuthorizerCounters()
        """Cumulative counts for ``broker.stats``: cache levels, schemes and fallback reasons."""
        self.router = router or WorkspaceRouter(store=store, clock=clock)
        """The accounts' workspace routes (protocol §16), handed out with every header."""
        self._fallbacks = FallbackPolicy(store, self.counters, self.router)

    # -- lookups -----------------------------------------------------------------------------------

    @property
    def identity_names(self) -> list[str]:
        """Configured identity names, default first."""
        return [self._default, *sorted(n for n in self._identities if n != self._default)]

    def runtime(self, name: str) -> IdentityRuntime:
        """The configured identity called ``name`` (empty = the default).

        Raises:
            InvalidArgument: the name is malformed.
            UnknownIdentity: no such identity is configured.
        """
        if not name:
            name = self._default
        validate_identity_name(name)
        runtime = self._identities.get(name)
        if runtime is None:
            raise UnknownIdentity(f"identity {name!r} is not configured")
        return runtime

    # -- authorize ---------------------------------------------------------------------------------

    async def authorize(
        self,
        identity: str = "",
        thread_id: str = "",
        mode: Mode = Mode.DEFAULT,
        min_remaining: float = 0.0,
        caller: CallerPolicy = INTERNAL_CALLER,
    ) -> Authorization:
        """The header a worker should send now (see the module docstring for the rules).

        Args:
            identity: configured identity name; empty for the default.
            thread_id: empty for the background task.
            mode: ``BEARER_ONLY`` for bootstrap-style calls.
            min_remaining: seconds the returned header must stay valid at least.
            caller: the authenticated caller whose policy applies (``None``: internal use).

        Raises:
            CallerDenied: the caller's policy refuses the identity, the mode or a Bearer fallback.
            InvalidArgument: a malformed field.
            UnknownIdentity: the identity is not configured.
            NoBearerToken: a Bearer is due and the account has none.
            TaskUnavailable: a thread's task cannot be registered.
            ThreadTaskBudgetExhausted: a new thread task is over a budget or the live cap.
            StoreUnavailable: shared state is unreachable and nothing valid is cached.
        """
        hit = self.warm(identity, thread_id, mode, min_remaining, caller)
        if hit is not None:
            return hit
        if thread_id:
            if THREAD_SCOPE in thread_id:
                validate_thread_id(thread_id)  # refuses it: only the broker writes a scope
            thread_id = _scoped(thread_id, caller)
        caller.check_identity(self.runtime(identity).spec.name)
        if mode is Mode.BEARER_ONLY:
            caller.check_bearer_only()
        authorization = await self._authorize(
            identity, thread_id, mode, min_remaining, _requester(caller)
        )
        self.check_delivery(caller, authorization)
        return authorization

    async def _current(
        self, name: str, thread_id: str, caller: CallerPolicy = INTERNAL_CALLER
    ) -> Authorization:
        """What the slot should use now, for a thread id already validated and scoped."""
        authorization = await self._authorize(
            name, thread_id, Mode.DEFAULT, 0.0, _requester(caller)
        )
        self.check_delivery(caller, authorization)
        return authorization

    def warm(
        self,
        identity: str = "",
        thread_id: str = "",
        mode: Mode = Mode.DEFAULT,
        min_remaining: float = 0.0,
        caller: CallerPolicy = INTERNAL_CALLER,
    ) -> Authorization | None:
        """What :meth:`authorize` answers when it is a fresh L1 hit, else ``None``: the hot path,
        with no await, no validation, no store round trip and no signature.

        An L1 entry exists only for a validated (identity, thread) and only holds assertions, so a
        name or thread id that is not in it (malformed ones included) simply misses and is left to
        :meth:`authorize`. Raises what the caller's policy refuses (:class:`CallerDenied`).
        """
        if mode is not _DEFAULT_MODE or min_remaining < 0.0:
            return None
        if thread_id:
            if THREAD_SCOPE in thread_id:
                return None  # authorize refuses it: only the broker writes a scope
            thread_id = _scoped(thread_id, caller)
        hit = self._cached(identity or self._default, task_slot(thread_id), min_remaining)
        if hit is not None and caller.identities is not None:
            caller.check_identity(hit.identity)
        return hit

    def _cached(self, name: str, slot: str, min_remaining: float) -> Authorization | None:
        """The L1 header of (identity, slot) if it stays valid ``min_remaining`` longer."""
        entry = self._l1.get((name, slot))
        if entry is None or self._monotonic() + min_remaining >= entry.fresh_until:
            return None
        self.counters.l1_hit += 1
        return entry.authorization

    @staticmethod
    def check_delivery(caller: CallerPolicy, authorization: Authorization) -> None:
        """Refuse to hand a Bearer fallback to a caller whose policy forbids it."""
        reason = authorization.fallback_reason
        if authorization.scheme is Scheme.BEARER and reason is not FallbackReason.REQUESTED:
            caller.check_bearer_fallback(reason.value)

    async def _authorize(
        self,
        identity: str,
        thread_id: str,
        mode: Mode,
        min_remaining: float,
        requester: str | None = None,
    ) -> Authorization:
        runtime = self.runtime(identity)
        spec = runtime.spec
        validate_thread_id(split_thread(thread_id)[1])
        if min_remaining < 0 or min_remaining > spec.assertion_ttl - spec.refresh_margin:
            raise InvalidArgument(
                "min_remaining must be between 0 and "
                f"{spec.assertion_ttl - spec.refresh_margin:g} seconds for identity {spec.name!r}"
            )
        if mode is Mode.BEARER_ONLY:
            return await self._fallbacks.bearer(runtime, FallbackReason.REQUESTED, thread_id)
        if not spec.enabled:
            return await self._fallbacks.bearer(runtime, FallbackReason.DISABLED, thread_id)
        slot = task_slot(thread_id)
        needed = timedelta(seconds=max(min_remaining, 0.0))
        hit = self._cached(spec.name, slot, min_remaining)
        if hit is not None:
            return hit
        self.counters.l1_miss += 1
        if not thread_id and not spec.supported_host:
            return await self._fallbacks.bearer(runtime, FallbackReason.UNSUPPORTED_HOST, thread_id)
        return await self._flights.do(
            (spec.name, slot, min_remaining),
            lambda: self._resolve(runtime, thread_id, slot, needed, requester),
        )

    async def _resolve(
        self,
        runtime: IdentityRuntime,
        thread_id: str,
        slot: str,
        needed: timedelta,
        requester: str | None,
    ) -> Authorization:
        spec = runtime.spec
        if spec.source is Source.REGISTER and not (await binding(runtime))[0]:
            return await self._fallbacks.bearer(
                runtime, FallbackReason.IDENTITY_UNAVAILABLE, thread_id
            )
        if FallbackPolicy.bootstraps(runtime) and not thread_id:
            remaining = await self._store.cooldown_remaining(spec.name, BOOTSTRAP_COOLDOWN)
            if remaining is not None:
                return await self._fallbacks.bearer(
                    runtime, FallbackReason.BOOTSTRAP_UNAVAILABLE, thread_id
                )
        try:
            identity = await self._identity_manager.current(runtime)
        except _FALLBACK_ERRORS as exc:
            return await self._fallbacks.identity_failure(runtime, thread_id, exc)
        try:
            task = await self._tasks.peek(identity, slot)
            if task is None:
                identity = await self._identity_manager.reconcile(runtime, identity)
                task = await self._tasks.task_for(runtime, identity, slot, requester)
        except _FALLBACK_ERRORS as exc:
            return await self._fallbacks.task_failure(runtime, thread_id, exc)
        return await self._assertion(runtime, identity, task, needed)

    async def _assertion(
        self,
        runtime: IdentityRuntime,
        identity: IdentityRecord,
        task: TaskRecord,
        needed: timedelta,
    ) -> Authorization:
        spec = runtime.spec
        route = await self.router.route(runtime, identity.account_id)
        now = self._clock.now()
        margin = timedelta(seconds=spec.refresh_margin)
        cached = await self._store.load_assertion(spec.name, task.task_id)
        if (
            cached is None
            or cached.agent_runtime_id != identity.agent_runtime_id
            or now + needed >= cached.expires_at - margin
        ):
            envelope = build_assertion(
                identity.key, identity.agent_runtime_id, task.agent_runtime_id, task.task_id, now
            )
            issued_at = envelope.issued_at()
            minted = CachedAssertion(
                header_value=Secret(envelope.header_value()),
                agent_runtime_id=identity.agent_runtime_id,
                task_id=task.task_id,
                issued_at=issued_at,
                expires_at=issued_at + timedelta(seconds=spec.assertion_ttl),
            )
            ttl = (minted.expires_at - margin - now).total_seconds()
            cached = await self._store.save_assertion(spec.name, minted, ttl)
            # Another replica's assertion won the window; use it only if it satisfies this caller
            # (same runtime, long enough). Ours is just as valid otherwise.
            if (
                cached.agent_runtime_id != identity.agent_runtime_id
                or now + needed >= cached.expires_at - margin
            ):
                cached = minted
            self.counters.assertion_minted += 1
        else:
            self.counters.l2_hit += 1
        authorization = Authorization(
            header_value=cached.header_value,
            scheme=Scheme.AGENT_ASSERTION,
            identity=spec.name,
            agent_runtime_id=identity.agent_runtime_id,
            task_id=task.task_id,
            task_kind=task.kind,
            issued_at=cached.issued_at,
            expires_at=cached.expires_at,
            companion_headers=spec.companion_headers(identity.account_id, identity.fedramp)
            | route_headers(route),
            thread_id=task.thread_id or "",
            backend_origin=route.origin if route is not None else "",
        )
        self._remember(spec.name, task.slot, authorization, cached.expires_at - margin)
        return authorization

    # -- L1 and change notification ----------------------------------------------------------------

    def _remember(
        self, name: str, slot: str, authorization: Authorization, serve_until: datetime
    ) -> None:
        if len(self._l1) >= self._l1_max:
            self._l1.pop(next(iter(self._l1)))
        fresh_for = (serve_until - self._clock.now()).total_seconds()
        self._l1[(name, slot)] = _Entry(
            authorization, serve_until, self._clock.monotonic() + fresh_for
        )

    def serve_until(self, authorization: Authorization) -> datetime | None:
        """When the broker stops handing ``authorization`` out (``None`` for Bearer)."""
        entry = self._l1.get((authorization.identity, task_slot(authorization.thread_id)))
        if entry is None or entry.authorization is not authorization:
            return None
        return entry.serve_until

    def drop(self, name: str, slot: str) -> None:
        """Forget the L1 entry of (identity, slot) and wake its watchers (an invalidation)."""
        self._l1.pop((name, slot), None)
        self._hub.invalidate(name, slot)

    def drop_identity(self, name: str) -> None:
        """Forget every L1 entry of an identity and the cached record (rotation)."""
        self._identity_manager.forget(name)
        for key in [k for k in self._l1 if k[0] == name]:
            self.drop(*key)
        self._hub.invalidate_identity(name)

    async def discard_identity(self, name: str, *, delete_record: bool = False) -> None:
        """Every replica forgets identity ``name``'s L1 entries and cached record (rotation, a
        flush, a login bound to another account); ``delete_record`` also deletes the stored
        identity, so the next request establishes a new one."""
        if delete_record:
            await self._store.delete_identity(name)
        self.drop_identity(name)
        await self._store.publish_invalidation(name, ALL_SLOTS)

    async def follow_invalidations(self) -> None:
        """Apply every replica's invalidations to this process's L1 until cancelled."""
        async for name, slot in self._store.invalidations():
            if slot == ALL_SLOTS:
                self.drop_identity(name)
            else:
                self.drop(name, slot)

    def cache_state(self, name: str) -> tuple[int, int]:
        """(headers in this replica's L1, open watch streams) for an identity."""
        cached = sum(1 for key in self._l1 if key[0] == name)
        return cached, self._hub.watchers_of(name)

    @property
    def identity_manager(self) -> IdentityManager:
        """Establishes identities (used by the admin operations)."""
        return self._identity_manager

    @property
    def tasks(self) -> TaskRegistry:
        """Finds and registers tasks (used by the admin operations)."""
        return self._tasks

    # -- watch -------------------------------------------------------------------------------------

    async def watch(
        self,
        identity: str = "",
        thread_id: str = "",
        mode: Mode = Mode.DEFAULT,
        min_remaining: float = 0.0,
        caller: CallerPolicy = INTERNAL_CALLER,
    ) -> AsyncIterator[Authorization]:
        """Yield the current header, then a fresh one before each expiry or after an invalidation.

        Watchers of the same key share one refresher (see ``watch.py``). The request is validated
        once, up front, so a malformed or forbidden watch fails at once.
        """
        first = await self.authorize(identity, thread_id, mode, min_remaining, caller)
        key: WatchKey = (
            first.identity,
            task_slot(_scoped(thread_id, caller)),
            mode.value,
            min_remaining,
        )
        async for authorization in self._hub.watch(key):
            self.check_delivery(caller, authorization)
            yield authorization

    async def _authorize_key(self, key: WatchKey) -> Authorization:
        name, slot, mode, min_remaining = key
        thread_id = "" if slot == task_slot("") else slot.removeprefix("thread:")
        return await self._authorize(name, thread_id, Mode(mode), min_remaining)

    @property
    def watch_hub(self) -> WatchHub:
        """The fan-out hub (for stats and shutdown)."""
        return self._hub

    async def close(self) -> None:
        """End every watch stream (shutdown drain)."""
        await self._hub.close()

    # -- tasks, identities, rejections ---------------------------------------------------------------

    async def ensure_task(
        self, identity: str, thread_id: str, caller: CallerPolicy = INTERNAL_CALLER
    ) -> tuple[IdentityRuntime, TaskRecord]:
        """Register (or find) a thread's task ahead of its first use (§7.1 prewarm).

        Raises:
            InvalidArgument: ``thread_id`` is empty or malformed.
            IdentityUnusable: agent identity is off or the identity has no binding.
            TaskUnavailable: the task cannot be registered now.
            ThreadTaskBudgetExhausted: a new thread task is over a budget or the live cap.
        """
        runtime = self.runtime(identity)
        caller.check_identity(runtime.spec.name)
        if not thread_id:
            raise InvalidArgument("thread_id is required")
        thread_id = _scoped(validate_thread_id(thread_id), caller)
        if not runtime.spec.enabled:
            raise IdentityUnusable(f"agent identity is disabled for identity {runtime.spec.name!r}")
        try:
            record = await self._identity_manager.current(runtime)
            task = await self._tasks.task_for(
                runtime,
                record,
                task_slot(thread_id),
                _requester(caller),
            )
        except _FALLBACK_ERRORS as exc:
            raise TaskUnavailable(
                f"the task of thread {thread_id!r} could not be registered ({exc.reason}): "
                f"{exc.message}"
            ) from exc
        return runtime, task

    async def describe(
        self, identity: str, caller: CallerPolicy = INTERNAL_CALLER
    ) -> tuple[IdentityRuntime, IdentityRecord | None, TaskRecord | None]:
        """Public facts: the runtime, its stored record (if registered) and background task."""
        runtime = self.runtime(identity)
        caller.check_identity(runtime.spec.name)
        record = await self._identity_manager.peek(runtime)
        task = await self._tasks.peek(record, task_slot("")) if record else None
        return runtime, record, task

    async def report_rejection(
        self,
        identity: str,
        thread_id: str,
        header_value: Secret,
        http_status: int,
        caller: CallerPolicy = INTERNAL_CALLER,
    ) -> Rejection:
        """Handle a 401/403 on a header this broker issued: replace the task once, fleet-wide.

        Only a header this broker minted is acted on: an assertion must verify with the identity's
        key, a Bearer must be the account's current token. Acting (a new task, a token refresh) is
        throttled fleet-wide to once per ``rejection_min_interval`` per slot, so neither a stream of
        genuine reports nor a hostile caller can turn reports into registrations or refreshes.

        Raises:
            InvalidArgument: a status other than 401/403, or an undecodable header.
            ReportRefused: the header was not issued by this broker for this identity.
        """
        runtime = self.runtime(identity)
        spec = runtime.spec
        caller.check_identity(spec.name)
        thread_id = _scoped(validate_thread_id(thread_id), caller)
        if http_status not in (401, 403):
            raise InvalidArgument("http_status must be 401 or 403")
        value = header_value.reveal()
        if value.startswith("Bearer "):
            return await self._bearer_rejected(
                runtime,
                thread_id,
                Secret(value.removeprefix("Bearer ").strip()),
                http_status,
                caller,
            )
        try:
            envelope = parse_assertion(value)
        except ProtocolError as exc:
            raise InvalidArgument(f"header_value: {exc.message}") from exc
        slot = task_slot(thread_id)
        record = await self._identity_manager.current(runtime)
        if envelope.agent_runtime_id != record.agent_runtime_id:
            # A predecessor's header (rotation) or not ours at all: either way nothing is acted
            # on, and the caller gets what is current.
            self.counters.rejection_stale += 1
            return Rejection(await self._current(spec.name, thread_id, caller), replaced=False)
        try:
            verify_assertion(envelope, record.key.public_key_bytes)
        except ProtocolError as exc:
            self.counters.rejection_refused += 1
            raise ReportRefused(
                f"header_value was not issued by this broker for identity {spec.name!r} "
                f"({exc.message}); only headers the broker handed out can be reported",
                rule="report_not_ours",
            ) from None

        async def replace() -> Rejection:
            current = await self._claim_replacement(record, slot, envelope.task_id)
            if current is None:
                # The fleet has moved on from the reported task (an older header, or another
                # replica replaced it just now): hand out what is current.
                self.drop(spec.name, slot)
                return Rejection(await self._current(spec.name, thread_id), replaced=False)
            gate = await self._store.acquire_lock(
                spec.name,
                f"replaced:{record.agent_runtime_id}:{slot}",
                self._rejection_min_interval,
            )
            if gate is None:
                # This slot's task was replaced less than an interval ago, and now its successor
                # is reported: throttled. Let go of the task so other reporters learn it at once.
                await self._store.release_lock(spec.name, current.lock_name, current.token)
                log.warning(
                    Event.TASK_REJECTION_THROTTLED,
                    identity=spec.name,
                    task_id=envelope.task_id,
                    http_status=http_status,
                    retry_after_seconds=self._rejection_min_interval,
                )
                self.counters.rejection_throttled += 1
                return Rejection(await self._current(spec.name, thread_id), replaced=False)
            log.warning(
                Event.TASK_REJECTED,
                identity=spec.name,
                agent_runtime_id=record.agent_runtime_id,
                task_id=current.task.task_id,
                task_kind=current.task.kind.value,
                http_status=http_status,
            )
            replaced = await self._tasks.invalidate(record, current.task)
            self.drop(spec.name, slot)
            return Rejection(await self._current(spec.name, thread_id), replaced=replaced)

        outcome, leader = await self._replacements.do_and_tell(
            (spec.name, slot, envelope.task_id), replace
        )
        self.check_delivery(caller, outcome.authorization)
        # Reports that joined another report's flight did not cause the replacement themselves.
        return outcome if leader else Rejection(outcome.authorization, replaced=False)

    async def _claim_replacement(
        self, record: IdentityRecord, slot: str, task_id: str
    ) -> _Claim | None:
        """Claim, fleet-wide, the replacement of ``task_id`` in ``slot``; ``None`` once it is gone.

        One replica at a time may replace a given task (a lock named for it). A replica that
        finds the claim taken waits until the slot no longer holds the task (the claimant deleted
        it) or the claim is let go (the claimant was throttled), bounded by the registration wait.
        """
        name = f"replacing:{record.agent_runtime_id}:{slot}:{task_id}"

        async def claim() -> _Claim | bool | None:
            current = await self._tasks.peek(record, slot)
            if current is None or current.task_id != task_id:
                return False  # the task is gone: nothing left to claim
            token = await self._store.acquire_lock(record.name, name, self._rejection_min_interval)
            return None if token is None else _Claim(current, name, token)

        outcome = await poll_until(self._clock, claim, deadline=self._tasks.wait_deadline)
        return outcome if isinstance(outcome, _Claim) else None

    async def _await_new_bearer(self, runtime: IdentityRuntime, reported: Secret) -> None:
        """Wait a moment (at most 2 s) for the account's token to move on from ``reported``.

        A throttled report of the current token means a refresh started within the interval: most
        often it is still running (many workers report one 401 at once), so the reporter waits for
        its result rather than be handed the refused token, or a fallback built on it. If the token
        was refreshed already and is refused again, the wait simply runs out.
        """

        async def moved_on() -> bool | None:
            latest = await runtime.bearer.reread()
            return True if latest is None or latest != reported else None

        await poll_until(
            self._clock, moved_on, deadline=min(self._rejection_min_interval, _BEARER_WAIT_S)
        )

    async def _bearer_rejected(
        self,
        runtime: IdentityRuntime,
        thread_id: str,
        reported: Secret,
        http_status: int,
        caller: CallerPolicy,
    ) -> Rejection:
        """The account's Bearer was refused: its source refreshes it (a login, once for the fleet)
        or re-reads it (a token file), at most once per interval fleet-wide; the caller gets
        whatever is current then. A token that is not the current one changes nothing."""
        spec = runtime.spec
        current = await runtime.bearer.token()
        if current is not None and current == reported:
            gate = await self._store.acquire_lock(
                spec.name, "bearer-rejected", self._rejection_min_interval
            )
            if gate is not None:
                await runtime.bearer.rejected(reported)
            else:
                log.warning(
                    Event.BEARER_REJECTION_THROTTLED,
                    identity=spec.name,
                    http_status=http_status,
                    retry_after_seconds=self._rejection_min_interval,
                )
                self.counters.rejection_throttled += 1
                await self._await_new_bearer(runtime, reported)
        else:
            self.counters.rejection_stale += 1
        answer = await self._current(spec.name, thread_id, caller)
        stale = Secret(f"Bearer {reported.reveal()}")
        return Rejection(answer, replaced=answer.header_value != stale)
