"""Tasks: the background task and per-thread tasks, registered once and replaced once (§5, §7)."""

from __future__ import annotations

import structlog

from broker.core.credentials.model import BACKGROUND, IdentityRecord, TaskRecord
from broker.core.credentials.ports import Clock, Store
from broker.core.credentials.singleflight import SingleFlight, fleet_once
from broker.core.credentials.spec import IdentityRuntime, Profile
from broker.core.protocol.task_id import task_id_from_response
from broker.core.protocol.task_registration import task_registration_body
from broker.errors import NoBearerToken
from broker.events import Event
from broker.secrets import Secret

log = structlog.get_logger("broker.tasks")

# Task registration in the later profile carries no credential at all (§5.1).
_NO_BEARER = Secret("")


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

    async def peek(self, identity: IdentityRecord, slot: str) -> TaskRecord | None:
        """The stored task of ``slot``, without registering."""
        return await self._store.load_task(identity.name, identity.agent_runtime_id, slot)

    async def task_for(
        self, runtime: IdentityRuntime, identity: IdentityRecord, slot: str
    ) -> TaskRecord:
        """The slot's task, registering it (once, fleet-wide) when there is none (§7.1, §7.2).

        Raises:
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
                produce=lambda: self._register(runtime, identity, slot),
            )

        return await self._flights.do(key, establish)

    async def invalidate(self, identity: IdentityRecord, task: TaskRecord) -> bool:
        """Delete ``task`` from its slot if it is still there; broadcast it. Report whether it was."""
        deleted = await self._store.delete_task(
            identity.name, identity.agent_runtime_id, task.slot, task.task_id
        )
        await self._store.delete_assertion(identity.name, task.task_id)
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

    async def _register(
        self, runtime: IdentityRuntime, identity: IdentityRecord, slot: str
    ) -> TaskRecord:
        bearer = await runtime.bearer.token()
        if bearer is None and runtime.spec.profile is Profile.CHATGPT_BACKEND:
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
