"""Single flight in process and across 'replicas' sharing one store (EmbeddedStore, ManualClock)."""

from __future__ import annotations

import asyncio

import pytest

from broker.adapters.store.embedded import EmbeddedStore
from broker.core.credentials.singleflight import SingleFlight, fleet_once
from broker.errors import SingleFlightTimeout
from tests.conftest import ManualClock


class TestSingleFlight:
    async def test_concurrent_callers_share_one_run(self) -> None:
        """A hundred concurrent callers of one key cause one run and all get its value."""
        flights: SingleFlight[str, int] = SingleFlight()
        runs = 0
        gate = asyncio.Event()

        async def produce() -> int:
            nonlocal runs
            runs += 1
            await gate.wait()
            return 42

        waiters = [asyncio.create_task(flights.do("k", produce)) for _ in range(100)]
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(*waiters) == [42] * 100
        assert runs == 1
        assert not flights.in_flight("k")

    async def test_exactly_one_leader(self) -> None:
        """do_and_tell names exactly one caller as the leader of a flight."""
        flights: SingleFlight[str, int] = SingleFlight()
        gate = asyncio.Event()

        async def produce() -> int:
            await gate.wait()
            return 1

        waiters = [asyncio.create_task(flights.do_and_tell("k", produce)) for _ in range(10)]
        await asyncio.sleep(0)
        gate.set()
        leaders = [leader for _, leader in await asyncio.gather(*waiters)]
        assert leaders.count(True) == 1

    async def test_failure_is_not_cached(self) -> None:
        """An exception reaches every caller of its flight, and the next call runs again."""
        flights: SingleFlight[str, int] = SingleFlight()
        attempts = 0

        async def produce() -> int:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise RuntimeError("first fails")
            return 7

        with pytest.raises(RuntimeError):
            await flights.do("k", produce)
        assert await flights.do("k", produce) == 7

    async def test_cancelled_caller_does_not_cancel_the_flight(self) -> None:
        """One caller giving up leaves the shared run going for the others."""
        flights: SingleFlight[str, int] = SingleFlight()
        gate = asyncio.Event()

        async def produce() -> int:
            await gate.wait()
            return 5

        first = asyncio.create_task(flights.do("k", produce))
        second = asyncio.create_task(flights.do("k", produce))
        await asyncio.sleep(0)
        first.cancel()
        gate.set()
        assert await second == 5


class TestFleetOnce:
    async def test_replicas_produce_once(self, clock: ManualClock) -> None:
        """Ten 'replicas' racing over one store produce the value once."""
        store = EmbeddedStore(clock)
        produced: list[int] = []
        value: dict[str, int] = {}

        async def lookup() -> int | None:
            return value.get("v")

        async def produce() -> int:
            produced.append(1)
            await clock.sleep(0.01)
            value["v"] = 99
            return 99

        results = await asyncio.gather(
            *(
                fleet_once(
                    store=store,
                    clock=clock,
                    identity="i",
                    lock_name="task:background",
                    lock_ttl=10,
                    wait_deadline=10,
                    lookup=lookup,
                    produce=produce,
                )
                for _ in range(10)
            )
        )
        assert results == [99] * 10
        assert len(produced) == 1

    async def test_waiter_gives_up_at_deadline(self, clock: ManualClock) -> None:
        """A loser whose winner never writes gives up once its deadline passes."""
        store = EmbeddedStore(clock)
        assert await store.acquire_lock("i", "task:background", 60) is not None

        async def lookup() -> int | None:
            clock.advance(1)
            return None

        async def produce() -> int:
            raise AssertionError("the lock is held elsewhere")

        with pytest.raises(SingleFlightTimeout):
            await fleet_once(
                store=store,
                clock=clock,
                identity="i",
                lock_name="task:background",
                lock_ttl=60,
                wait_deadline=3,
                lookup=lookup,
                produce=produce,
            )

    async def test_dead_holder_expires(self, clock: ManualClock) -> None:
        """A lock whose holder died is taken over once it expires."""
        store = EmbeddedStore(clock)
        assert await store.acquire_lock("i", "task:background", 5) is not None
        calls = 0

        async def lookup() -> int | None:
            nonlocal calls
            calls += 1
            clock.advance(1)
            return None

        async def produce() -> int:
            return 3

        result = await fleet_once(
            store=store,
            clock=clock,
            identity="i",
            lock_name="task:background",
            lock_ttl=5,
            wait_deadline=30,
            lookup=lookup,
            produce=produce,
        )
        assert result == 3
        assert calls >= 5
