"""Operator actions: list, rotate, revoke, flush (the admin service's core)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from broker.core.credentials.authorizer import Authorizer
from broker.core.credentials.model import IdentityRecord, TaskRecord, task_slot
from broker.core.credentials.ports import Store
from broker.core.credentials.spec import IdentityRuntime, validate_thread_id
from broker.events import Event

log = structlog.get_logger("broker.admin")


@dataclass(frozen=True, slots=True)
class IdentityState:
    """An identity's public facts and this replica's cache state."""

    runtime: IdentityRuntime
    record: IdentityRecord | None
    background: TaskRecord | None
    cached_headers: int
    watch_streams: int


class AdminOperations:
    """What operators may do; each action is fleet-wide through the store's invalidations."""

    def __init__(self, authorizer: Authorizer, store: Store) -> None:
        self._authorizer = authorizer
        self._store = store

    async def list_identities(self) -> list[IdentityState]:
        """Every configured identity, default first."""
        states = []
        for name in self._authorizer.identity_names:
            runtime, record, background = await self._authorizer.describe(name)
            cached, watchers = self._authorizer.cache_state(name)
            states.append(IdentityState(runtime, record, background, cached, watchers))
        return states

    async def rotate(self, identity: str) -> tuple[IdentityRuntime, IdentityRecord, str | None]:
        """New key, new registration; every replica drops the old identity and its tasks.

        The old identity's tasks live under its runtime id, so no replica can serve them again.
        """
        runtime = self._authorizer.runtime(identity)
        record, previous = await self._authorizer.identity_manager.rotate(runtime)
        await self._authorizer.discard_identity(runtime.spec.name)
        return runtime, record, previous

    async def revoke_task(self, identity: str, thread_id: str) -> str | None:
        """Forget the slot's task fleet-wide; return its id (``None`` if there was none)."""
        runtime = self._authorizer.runtime(identity)
        validate_thread_id(thread_id)
        record = await self._authorizer.identity_manager.peek(runtime)
        if record is None:
            return None
        slot = task_slot(thread_id)
        task = await self._authorizer.tasks.peek(record, slot)
        if task is None:
            return None
        await self._authorizer.tasks.invalidate(record, task)
        self._authorizer.drop(runtime.spec.name, slot)
        return task.task_id

    async def flush(self, identity: str) -> list[str]:
        """Drop every replica's L1 for one identity (or all) and the cached background assertion."""
        names = (
            [self._authorizer.runtime(identity).spec.name]
            if identity
            else self._authorizer.identity_names
        )
        for name in names:
            runtime = self._authorizer.runtime(name)
            record = await self._authorizer.identity_manager.peek(runtime)
            if record is not None:
                background = await self._authorizer.tasks.peek(record, task_slot(""))
                if background is not None:
                    await self._store.delete_assertion(name, background.task_id)
            await self._authorizer.discard_identity(name)
            log.info(Event.CACHE_FLUSHED, identity=name)
        return names
