"""In-process state for a single broker (DESIGN §4 "Embedded default").

Nothing is shared with other processes or survives a restart (``shared`` is ``False``; the
composition root logs ``store.embedded`` to say so). Entries live in dicts keyed by the same key
schema as Redis (:mod:`broker.adapters.store.keys`) and expire against the injected clock's monotonic
time, so tests drive expiry with a manual clock. Every method runs without an ``await`` between its
read and its write, so on one event loop each is atomic and no ``asyncio.Lock`` is needed; that is
also what makes first-writer-wins and compare-and-delete hold here.

Values are kept as objects: nothing leaves process memory, so nothing is sealed.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from broker.adapters.store import keys
from broker.adapters.store._codec import iso
from broker.adapters.store._fanout import Fanout
from broker.core.credentials.model import (
    BACKGROUND,
    LIVE_THREAD_TASKS,
    AccountRecord,
    Budget,
    CachedAssertion,
    IdentityRecord,
    Refusal,
    TaskRecord,
    WorkspaceRouteRecord,
)
from broker.core.credentials.ports import Clock

if TYPE_CHECKING:
    from broker.core.credentials.ports import Store

__all__ = ["EmbeddedStore"]

_T = TypeVar("_T")
_SWEEP_INTERVAL_S: Final = 60.0


@dataclass(slots=True)
class _Entry(Generic[_T]):
    value: _T
    expires_at: float  # monotonic seconds; math.inf for no expiry


def _ttl(ttl_seconds: float) -> float:
    if not ttl_seconds > 0:
        raise ValueError("ttl_seconds must be a positive number of seconds")
    return ttl_seconds


class EmbeddedStore:
    """The :class:`~broker.core.credentials.ports.Store` of a single, unshared broker process.

    Args:
        clock: time source; entries expire against ``clock.monotonic()``.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock: Final = clock
        self._identities: Final[dict[str, IdentityRecord]] = {}
        self._tasks: Final[dict[str, _Entry[TaskRecord]]] = {}
        self._assertions: Final[dict[str, _Entry[CachedAssertion]]] = {}
        self._locks: Final[dict[str, _Entry[str]]] = {}
        self._cooldowns: Final[dict[str, _Entry[bool]]] = {}
        self._accounts: Final[dict[str, AccountRecord]] = {}
        self._routes: Final[dict[str, _Entry[WorkspaceRouteRecord]]] = {}
        self._live_threads: Final[dict[str, dict[str, float]]] = {}  # identity -> member -> until
        self._budgets: Final[dict[str, float]] = {}  # budget key -> next arrival (monotonic)
        self._fanout: Final = Fanout()
        self._next_sweep = clock.monotonic() + _SWEEP_INTERVAL_S

    def __repr__(self) -> str:
        return f"EmbeddedStore(identities={len(self._identities)})"

    @property
    def shared(self) -> bool:
        """Always ``False``: this state lives in one process only."""
        return False

    async def ping(self) -> None:
        """Nothing to reach: always succeeds."""

    async def close(self) -> None:
        """End every invalidation feed."""
        self._fanout.close()

    async def invalidations_ready(self) -> None:
        """Return at once: local feeds receive everything published after they were created."""

    # -- identities ------------------------------------------------------------------------------

    async def load_identity(self, identity: str) -> IdentityRecord | None:
        """The identity record, or ``None``."""
        return self._identities.get(identity)

    async def save_identity(self, record: IdentityRecord) -> None:
        """Store (overwrite) the identity record.

        Raises:
            ValueError: ``registered_at`` is naive (as the Redis store refuses it).
        """
        iso(record.registered_at, "registered_at")
        self._identities[record.name] = record

    async def delete_identity(self, identity: str) -> None:
        """Forget the identity record and the background task of its runtime."""
        record = self._identities.pop(identity, None)
        if record is not None:
            self._tasks.pop(keys.task_key(identity, record.agent_runtime_id, BACKGROUND), None)

    # -- tasks -----------------------------------------------------------------------------------

    async def load_task(self, identity: str, agent_runtime_id: str, slot: str) -> TaskRecord | None:
        """The task in ``slot`` for this runtime, or ``None``."""
        return self._get(self._tasks, keys.task_key(identity, agent_runtime_id, slot))

    async def save_task(self, identity: str, task: TaskRecord, ttl_seconds: float | None) -> None:
        """Store ``task`` in its slot, expiring after ``ttl_seconds`` if given.

        Raises:
            ValueError: ``ttl_seconds`` is not positive, the slot is malformed, or the timestamp
                is naive.
        """
        key = keys.task_key(identity, task.agent_runtime_id, task.slot)
        iso(task.registered_at, "registered_at")
        expires_at = math.inf if ttl_seconds is None else self._deadline(ttl_seconds)
        self._sweep()
        self._tasks[key] = _Entry(task, expires_at)

    async def delete_task(
        self, identity: str, agent_runtime_id: str, slot: str, task_id: str
    ) -> bool:
        """Delete the slot only if it still holds ``task_id``; report whether it did."""
        key = keys.task_key(identity, agent_runtime_id, slot)
        current = self._get(self._tasks, key)
        if current is None or current.task_id != task_id:
            return False
        del self._tasks[key]
        return True

    # -- assertions ------------------------------------------------------------------------------

    async def load_assertion(self, identity: str, task_id: str) -> CachedAssertion | None:
        """The cached assertion of ``task_id``, or ``None``."""
        return self._get(self._assertions, keys.assertion_key(identity, task_id))

    async def save_assertion(
        self, identity: str, assertion: CachedAssertion, ttl_seconds: float
    ) -> CachedAssertion:
        """Cache ``assertion`` unless one is cached for its task; return the cached one.

        Raises:
            ValueError: ``ttl_seconds`` is not positive, or a timestamp is naive.
        """
        key = keys.assertion_key(identity, assertion.task_id)
        iso(assertion.issued_at, "issued_at")
        iso(assertion.expires_at, "expires_at")
        expires_at = self._deadline(ttl_seconds)
        current = self._get(self._assertions, key)
        if current is not None:
            return current
        self._sweep()
        self._assertions[key] = _Entry(assertion, expires_at)
        return assertion

    async def delete_assertion(self, identity: str, task_id: str) -> None:
        """Drop the cached assertion of ``task_id``."""
        self._assertions.pop(keys.assertion_key(identity, task_id), None)

    # -- locks -----------------------------------------------------------------------------------

    async def acquire_lock(self, identity: str, name: str, ttl_seconds: float) -> str | None:
        """Take the lock if it is free; return its token, or ``None``.

        Raises:
            ValueError: ``ttl_seconds`` is not positive.
        """
        key = keys.lock_key(identity, name)
        expires_at = self._deadline(ttl_seconds)
        if self._get(self._locks, key) is not None:
            return None
        token = secrets.token_hex(16)
        self._sweep()
        self._locks[key] = _Entry(token, expires_at)
        return token

    async def load_account(self, identity: str) -> AccountRecord | None:
        """The stored login, or ``None``."""
        return self._accounts.get(identity)

    async def save_account(self, record: AccountRecord) -> None:
        """Store (overwrite) the login."""
        self._accounts[record.identity] = record

    async def load_route(self, identity: str) -> WorkspaceRouteRecord | None:
        """The account's workspace route, or ``None``."""
        return self._get(self._routes, identity)

    async def save_route(
        self, identity: str, route: WorkspaceRouteRecord, ttl_seconds: float
    ) -> None:
        """Store (overwrite) the account's workspace route for ``ttl_seconds``."""
        iso(route.discovered_at, "discovered_at")
        self._routes[identity] = _Entry(route, self._deadline(ttl_seconds))

    async def start_cooldown(self, identity: str, name: str, ttl_seconds: float) -> None:
        """Set the cooldown marker for ``ttl_seconds``."""
        self._cooldowns[keys.cooldown_key(identity, name)] = _Entry(
            True, self._deadline(ttl_seconds)
        )

    async def cooldown_remaining(self, identity: str, name: str) -> float | None:
        """Seconds left on the marker, or ``None``."""
        entry = self._cooldowns.get(keys.cooldown_key(identity, name))
        if entry is None:
            return None
        remaining = entry.expires_at - self._clock.monotonic()
        return remaining if remaining > 0 else None

    async def release_lock(self, identity: str, name: str, token: str) -> bool:
        """Release the lock if ``token`` still owns it; report whether it did."""
        key = keys.lock_key(identity, name)
        if self._get(self._locks, key) != token:
            return False
        del self._locks[key]
        return True

    # -- thread-task admission -------------------------------------------------------------------

    async def admit_thread_task(
        self,
        identity: str,
        member: str,
        *,
        ttl_seconds: float,
        live_cap: int,
        budgets: Sequence[Budget],
    ) -> Refusal | None:
        """Admit a new thread task against the live cap and every budget, all or nothing."""
        now = self._clock.monotonic()
        live = self._live_threads.setdefault(identity, {})
        for expired in [name for name, until in live.items() if until <= now]:
            del live[expired]
        if member not in live and len(live) >= live_cap:
            return Refusal(LIVE_THREAD_TASKS, max(min(live.values()) - now, 0.001))
        arrivals: list[tuple[str, float]] = []
        for budget in budgets:
            key = keys.budget_key(identity, budget.name)
            step = 1.0 / budget.per_second
            arrival = max(self._budgets.get(key, now), now)
            allow_at = arrival + step - step * budget.burst
            if allow_at > now:
                return Refusal(budget.name, allow_at - now)
            arrivals.append((key, arrival + step))
        self._budgets.update(arrivals)
        live[member] = now + _ttl(ttl_seconds)
        return None

    async def forget_thread_task(self, identity: str, member: str) -> None:
        """Stop counting ``member`` as a live thread task."""
        self._live_threads.get(identity, {}).pop(member, None)

    # -- invalidations ---------------------------------------------------------------------------

    async def publish_invalidation(self, identity: str, slot: str) -> None:
        """Deliver ``(identity, slot)`` to every open feed of this store."""
        self._fanout.publish(identity, slot)

    def invalidations(self) -> AsyncIterator[tuple[str, str]]:
        """A feed of every invalidation published from now on; it ends when the store closes."""
        return self._fanout.subscribe()

    # -- expiry ----------------------------------------------------------------------------------

    def _deadline(self, ttl_seconds: float) -> float:
        return self._clock.monotonic() + _ttl(ttl_seconds)

    def _get(self, table: dict[str, _Entry[_T]], key: str) -> _T | None:
        entry = table.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock.monotonic():
            del table[key]
            return None
        return entry.value

    def _sweep(self) -> None:
        """Drop expired entries nobody read again (at most once a minute), bounding memory."""
        now = self._clock.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_S
        for table in (self._tasks, self._assertions, self._locks):
            for key in [k for k, entry in table.items() if entry.expires_at <= now]:
                del table[key]


if TYPE_CHECKING:
    _check: type[Store] = EmbeddedStore
