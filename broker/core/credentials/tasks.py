"""Tasks: the background task and per-thread tasks, registered once and replaced once (§5, §7)."""

from __future__ import annotations

from collections import Counter

import structlog

from broker.core.credentials.model import BACKGROUND, IdentityRecord, Refusal, TaskRecord
from broker.core.credentials.ports import Clock, Store
from broker.core.credentials.singleflight import SingleFlight, fleet_once
from broker.core.credentials.spec import IdentityRuntime
from broker.core.protocol.task_id import task_id_from_response
from broker.core.protocol.task_registration import task_registration_body
from broker.errors import NoBearerToken, ThreadTaskBudgetExhausted
from broker.events import Event
from broker.secret import Secret

log = structlog.get_logger("broker.tasks")

# Task registration in the later profile carries no credential at all (§5.1).
_NO_BEARER = Secret("")
# A thread task kept "until rejected" still needs a horizon in the live-task index.
_NO_EXPIRY_S = 365 * 24 * 3600.0
# A refused caller hammering the broker gets one log line per limit per this many seconds.
_REFUSAL_LOG_INTERVAL_S = 10.0


def _member(agent_runtime_id: str, slot: str) -> str:
    """A thread task's name in the live-task index (a value, never part of a key)."""
    return f"{agent_runtime_id} {slot}"


class _RefusalLog:
    """Logs thread-task refusals at most once per (identity, limit, caller) and interval.

    A hostile caller can be refused a million times a minute; the log must not grow with it.
    Each line carries how many refusals it stands for, and ``counts`` keeps the exact totals.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pending: dict[tuple[str, str, str | None], tuple[float, int]] = {}
        self.counts: Counter[str] = Counter()

    def note(self, identity: str, refusal: Refusal, caller: str | None) -> None:
        self.counts[refusal.limit.partition(":")[0]] += 1
        key = (identity, refusal.limit, caller)
        now = self._clock.monotonic()
        last, suppressed = self._pending.get(key, (-_REFUSAL_LOG_INTERVAL_S, 0))
        if now - last < _REFUSAL_LOG_INTERVAL_S:
            self._pending[key] = (last, suppressed + 1)
            return
        if len(self._pending) > 10_000:
            self._pending.clear()
        self._pending[key] = (now, 0)
        log.warning(
            Event.TASK_BUDGET_EXHAUSTED,
            identity=identity,
            caller=caller,
            limit=refusal.limit,
            retry_after_seconds=round(refusal.retry_after, 3),
            refused=suppressed + 1,
        )


class TaskRegistry:
    """Finds or registers the task of a slot (``background`` or ``thread:<id>``) for an identity.

    Task keys carry the agent runtime id, so a rotated identity never sees its predecessor's tasks.
    """

    def __init__(
        self, *, store: Store, clock: Clock, lock_ttl: float, wait_deadline: float
    ) -> None:
        """Args:
        store: shared state.
        clock: injected time.
        lock_ttl: registration lock lifetime.
        wait_deadline: how long a caller waits for another replica's registration.
        """
        self._store = store
        self._clock = clock
        self._lock_ttl = lock_ttl
        self._wait_deadline = wait_deadline
        self._flights: SingleFlight[tuple[str, str, str], TaskRecord] = SingleFlight()
        self._refusals = _RefusalLog(clock)

    @property
    def wait_deadline(self) -> float:
        """How long a caller waits for another replica's registration (seconds)."""
        return self._wait_deadline

    async def peek(self, identity: IdentityRecord, slot: str) -> TaskRecord | None:
        """The stored task of ``slot``, without registering."""
        return await self._store.load_task(identity.name, identity.agent_runtime_id, slot)

    async def task_for(
        self,
        runtime: IdentityRuntime,
        identity: IdentityRecord,
        slot: str,
        requester: str | None = None,
    ) -> TaskRecord:
        """The slot's task, registering it (once, fleet-wide) when there is none (§7.1, §7.2).

        A new thread task must first be admitted against the identity's thread-task limits
        (``requester`` names the caller whose budget it draws on; ``None`` for the broker itself).

        Raises:
            ThreadTaskBudgetExhausted: a new thread task was refused by a budget or the live cap.
            NoBearerToken: a biscuit-authorised registration needs the account's token (§5.1).
            ControlPlaneError: registration failed.
            TaskIdError: the response carried no usable task id.
            StoreUnavailable: the store cannot be reached.
        """
        key = (identity.name, identity.agent_runtime_id, slot)

        async def establish() -> TaskRecord:
            return await fleet_once(
                store=self._store,
                clock=self._clock,
                identity=identity.name,
                lock_name=f"{identity.agent_runtime_id}:task:{slot}",
                lock_ttl=self._lock_ttl,
                wait_deadline=self._wait_deadline,
                lookup=lambda: self.peek(identity, slot),
                produce=lambda: self._admit_and_register(runtime, identity, slot, requester),
            )

        return await self._flights.do(key, establish)

    async def invalidate(self, identity: IdentityRecord, task: TaskRecord) -> bool:
        """Delete ``task`` from its slot if it is still there; broadcast it. Report whether it was."""
        deleted = await self._store.delete_task(
            identity.name, identity.agent_runtime_id, task.slot, task.task_id
        )
        await self._store.delete_assertion(identity.name, task.task_id)
        if deleted and task.slot != BACKGROUND:
            await self._store.forget_thread_task(
                identity.name, _member(task.agent_runtime_id, task.slot)
            )
        if deleted:
            log.info(
                Event.TASK_INVALIDATED,
                identity=identity.name,
                agent_runtime_id=identity.agent_runtime_id,
                task_id=task.task_id,
                task_kind=task.kind.value,
            )
        await self._store.publish_invalidation(identity.name, task.slot)
        return deleted

    async def _admit_and_register(
        self,
        runtime: IdentityRuntime,
        identity: IdentityRecord,
        slot: str,
        requester: str | None,
    ) -> TaskRecord:
        if slot == BACKGROUND:
            return await self._register(runtime, identity, slot)
        limits = runtime.spec.thread_limits
        member = _member(identity.agent_runtime_id, slot)
        refusal = await self._store.admit_thread_task(
            identity.name,
            member,
            ttl_seconds=runtime.spec.thread_task_ttl or _NO_EXPIRY_S,
            live_cap=limits.max_live,
            budgets=limits.budgets(requester),
        )
        if refusal is not None:
            self._refusals.note(identity.name, refusal, requester)
            raise ThreadTaskBudgetExhausted(
                f"no new thread task for identity {identity.name!r} now: the {refusal.limit!r} "
                f"limit is spent; retry in {refusal.retry_after:.1f} s or reuse a thread id",
                limit=refusal.limit,
                retry_after=refusal.retry_after,
            )
        try:
            return await self._register(runtime, identity, slot)
        except BaseException:
            # Nothing was registered: the slot must not keep counting against the cap.
            await self._store.forget_thread_task(identity.name, member)
            raise

    async def _register(
        self, runtime: IdentityRuntime, identity: IdentityRecord, slot: str
    ) -> TaskRecord:
        bearer = await runtime.bearer.token()
        if bearer is None and runtime.spec.profile.rules.biscuits:
            raise NoBearerToken(
                f"identity {identity.name!r} cannot register a task: the account's bearer token "
                "is missing (biscuit-authorised registration needs it)"
            )
        started = self._clock.monotonic()
        body = task_registration_body(identity.key, identity.agent_runtime_id, self._clock.now())
        response = await runtime.control_plane.register_task(
            bearer=bearer if bearer is not None else _NO_BEARER,
            agent_runtime_id=identity.agent_runtime_id,
            body=body,
        )
        task_id = task_id_from_response(identity.key, response)
        task = TaskRecord(
            agent_runtime_id=identity.agent_runtime_id,
            task_id=task_id,
            slot=slot,
            registered_at=self._clock.now().replace(microsecond=0),
        )
        ttl = None if slot == BACKGROUND else runtime.spec.thread_task_ttl
        await self._store.save_task(identity.name, task, ttl)
        log.info(
            Event.TASK_REGISTERED,
            identity=identity.name,
            agent_runtime_id=identity.agent_runtime_id,
            task_id=task_id,
            task_kind=task.kind.value,
            thread_id=task.thread_id,
            duration_ms=round((self._clock.monotonic() - started) * 1000, 1),
        )
        return task
