"""The lock-wait helper: waiting for another replica's lock on the injected clock, no socket.

Every wait runs on a ManualClock: a 30-second deadline passes in milliseconds of real time, and
each test is bounded by a one-second real timeout so a wait on real time fails fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from broker.adapters.store.embedded import EmbeddedStore
from broker.core.credentials.waiting import FIRST_PAUSE, MAX_PAUSE, poll_until
from tests.conftest import ManualClock

REAL_TIME_LIMIT = 1.0


async def on_manual_time(wait: Awaitable[str | None]) -> str | None:
    """Run ``wait`` with a real-time bound far below the manual deadlines used here."""
    started = time.perf_counter()
    async with asyncio.timeout(REAL_TIME_LIMIT):
        outcome = await wait
    assert time.perf_counter() - started < REAL_TIME_LIMIT
    return outcome


def counting(
    clock: ManualClock, attempt: Callable[[], Awaitable[str | None]]
) -> tuple[Callable[[], Awaitable[str | None]], list[float]]:
    """Wrap ``attempt`` to record the clock's time at every call."""
    seen: list[float] = []

    async def wrapped() -> str | None:
        seen.append(clock.monotonic())
        return await attempt()

    return wrapped, seen


class TestWaitsForTheLock:
    async def test_a_free_lock_is_taken_at_once(self, clock: ManualClock) -> None:
        store = EmbeddedStore(clock)
        token = await poll_until(clock, lambda: store.acquire_lock("i", "l", 10), deadline=5)
        assert token is not None
        assert clock.slept == []

    async def test_waits_until_the_holder_releases(self, clock: ManualClock) -> None:
        """The waiter takes the lock soon after the holder lets go, and not before."""
        store = EmbeddedStore(clock)
        held = await store.acquire_lock("i", "l", 60)
        assert held is not None
        start = clock.monotonic()
        released_at = start + 1.0

        async def try_lock() -> str | None:
            if held is not None and clock.monotonic() >= released_at:
                await store.release_lock("i", "l", held)
            return await store.acquire_lock("i", "l", 60)

        attempt, seen = counting(clock, try_lock)
        token = await on_manual_time(poll_until(clock, attempt, deadline=30))
        assert token is not None
        assert token != held
        assert len(seen) > 1  # it did wait
        assert released_at <= seen[-1] < released_at + MAX_PAUSE
        assert not await store.release_lock("i", "l", held)  # the holder no longer owns it

    async def test_takes_over_from_a_holder_that_died(self, clock: ManualClock) -> None:
        """A lock whose holder never releases it is free once its TTL ends."""
        store = EmbeddedStore(clock)
        assert await store.acquire_lock("i", "l", 5) is not None
        start = clock.monotonic()
        token = await on_manual_time(
            poll_until(clock, lambda: store.acquire_lock("i", "l", 5), deadline=30)
        )
        assert token is not None
        assert start + 5 <= clock.monotonic() < start + 5 + MAX_PAUSE

    async def test_waiters_take_turns(self, clock: ManualClock) -> None:
        """Five waiters on one lock each hold it alone, one after another."""
        store = EmbeddedStore(clock)
        holders: list[int] = []
        inside = 0

        async def work(n: int) -> None:
            nonlocal inside
            token = await poll_until(clock, lambda: store.acquire_lock("i", "l", 60), deadline=30)
            assert token is not None
            inside += 1
            assert inside == 1
            holders.append(n)
            await clock.sleep(0.5)
            inside -= 1
            assert await store.release_lock("i", "l", token)

        async with asyncio.timeout(REAL_TIME_LIMIT):
            await asyncio.gather(*(work(n) for n in range(5)))
        assert sorted(holders) == list(range(5))


class TestGivesUp:
    async def test_gives_up_at_the_deadline_on_the_injected_clock(self, clock: ManualClock) -> None:
        """A lock held past the deadline: ``None`` after exactly the deadline of manual time."""
        store = EmbeddedStore(clock)
        assert await store.acquire_lock("i", "l", 600) is not None
        start = clock.monotonic()
        attempt, seen = counting(clock, lambda: store.acquire_lock("i", "l", 600))
        assert await on_manual_time(poll_until(clock, attempt, deadline=30)) is None
        assert clock.monotonic() == pytest.approx(start + 30)
        assert seen[-1] == pytest.approx(start + 30)  # one last look at the deadline itself
        assert seen[-2] < start + 30

    async def test_a_zero_deadline_looks_once(self, clock: ManualClock) -> None:
        store = EmbeddedStore(clock)
        assert await store.acquire_lock("i", "l", 600) is not None
        attempt, seen = counting(clock, lambda: store.acquire_lock("i", "l", 600))
        assert await poll_until(clock, attempt, deadline=0) is None
        assert len(seen) == 1
        assert clock.slept == []


class TestBackoff:
    async def test_pauses_grow_from_short_to_a_bounded_ceiling(self, clock: ManualClock) -> None:
        """First pause short, then growing, never above MAX_PAUSE, jittered between waits."""

        async def never() -> str | None:
            return None

        assert await on_manual_time(poll_until(clock, never, deadline=30)) is None
        pauses = clock.slept[:-1]  # the last one is cut short by the deadline
        assert FIRST_PAUSE / 2 <= pauses[0] <= FIRST_PAUSE
        assert all(0 < pause <= MAX_PAUSE for pause in clock.slept)
        assert max(pauses) > MAX_PAUSE / 2  # it does grow
        assert all(pause >= MAX_PAUSE / 2 for pause in pauses[20:])  # and stays near the ceiling
        assert len(set(pauses)) > len(pauses) // 2  # jittered, not one fixed interval
        # A 30 s wait looks at most once per MAX_PAUSE / 2 (plus the ramp-up): bounded store load.
        assert len(clock.slept) <= 30 / (MAX_PAUSE / 2) + 20
