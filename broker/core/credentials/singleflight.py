"""Single flight: one registration per key, in this process and across the fleet.

Theory of operation
-------------------
Registering an identity, the background task, a thread task or a replacement task must happen once
however many callers ask at the same moment, on however many replicas (DESIGN §4).

1. In process, :class:`SingleFlight` keeps one ``asyncio.Task`` per key. The first caller starts it;
   every concurrent caller awaits the same task (shielded, so one caller's cancellation does not
   cancel the work the others wait for). The entry disappears when the task ends, so nothing negative
   is cached: the next caller after a failure tries again.
2. Across replicas, :func:`fleet_once` takes a lock in the shared store (``SET NX PX`` with a random
   token; released by compare-and-delete). The winner looks again (another replica may have finished
   just before), produces the value and writes it to the store before releasing. Losers look again
   (``waiting.poll_until``: a short, growing, jittered pause on the injected clock) until the value
   appears or the lock is free again, bounded by a deadline. A replica that dies holding the lock
   blocks the others only until the lock expires: its TTL is the control plane's overall deadline
   plus a margin, and the waiters' deadline is longer than that TTL, so a waiter takes over rather
   than giving up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from broker.core.credentials.ports import Clock, Store
from broker.core.credentials.waiting import poll_until
from broker.errors import SingleFlightTimeout

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Deduplicate concurrent calls with the same key inside one process."""

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}

    def in_flight(self, key: K) -> bool:
        """Whether a call for ``key`` is running."""
        return key in self._flights

    async def do(self, key: K, produce: Callable[[], Awaitable[V]]) -> V:
        """Run ``produce`` once for all concurrent callers of ``key``; everyone gets its result.

        Args:
            key: what the callers want (e.g. ``(identity, slot)``).
            produce: makes the value; called at most once per flight.

        Returns:
            The flight's value. Exceptions propagate to every caller of that flight.
        """
        value, _leader = await self.do_and_tell(key, produce)
        return value

    async def do_and_tell(self, key: K, produce: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """Like :meth:`do`, and also say whether this caller started the flight (the leader)."""
        task = self._flights.get(key)
        leader = task is None
        if task is None:

            async def run() -> V:
                return await produce()

            task = asyncio.get_running_loop().create_task(run())
            self._flights[key] = task
            task.add_done_callback(lambda _t: self._flights.pop(key, None))
        return await asyncio.shield(task), leader


@dataclass(frozen=True, slots=True)
class _Held:
    """The fleet-wide lock, taken (its fencing token)."""

    token: str


async def fleet_once(
    *,
    store: Store,
    clock: Clock,
    identity: str,
    lock_name: str,
    lock_ttl: float,
    wait_deadline: float,
    lookup: Callable[[], Awaitable[V | None]],
    produce: Callable[[], Awaitable[V]],
) -> V:
    """Return the stored value, producing it under the fleet-wide lock when nobody has.

    Args:
        store: the shared store holding the lock and the value.
        clock: for the waiters' deadline and pauses.
        identity: the identity whose hash tag the lock lives under.
        lock_name: what is being produced (e.g. ``task:background``).
        lock_ttl: seconds the lock lives if its holder dies.
        wait_deadline: seconds a loser waits for the winner before giving up.
        lookup: reads the value from the store; ``None`` when absent.
        produce: makes the value and writes it to the store.

    Raises:
        SingleFlightTimeout: the value did not appear and the lock stayed held past the deadline.
    """

    async def found_or_locked() -> V | _Held | None:
        value = await lookup()
        if value is not None:
            return value
        token = await store.acquire_lock(identity, lock_name, lock_ttl)
        return None if token is None else _Held(token)

    outcome: V | _Held | None = await poll_until(clock, found_or_locked, deadline=wait_deadline)
    if outcome is None:
        raise SingleFlightTimeout(
            f"another broker is registering {lock_name} for identity {identity!r}; "
            "it did not finish in time, retry"
        )
    if not isinstance(outcome, _Held):
        return outcome
    try:
        # The winner may have written the value and released the lock since the look above.
        value = await lookup()
        if value is not None:
            return value
        return await produce()
    finally:
        await store.release_lock(identity, lock_name, outcome.token)
