"""One contract, every Store: the embedded store and Redis must behave the same (DESIGN §4).

TTLs are checked without sleeping: the embedded store's clock is moved by hand; for Redis the test
reads the key's PTTL and then expires it at once (Redis's own expiry is not what is under test).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
import redis.asyncio

from broker.adapters.sealing import KekSealer
from broker.adapters.store import EmbeddedStore, RedisStore, keys
from broker.core.credentials.model import (
    BACKGROUND,
    LIVE_THREAD_TASKS,
    Budget,
    CachedAssertion,
    IdentityRecord,
    TaskRecord,
    WorkspaceRouteRecord,
)
from broker.core.credentials.ports import Store
from broker.core.protocol.keys import AgentKey
from broker.secret import Secret
from tests.conftest import ManualClock

RUNTIME = "rt-1"
THREAD = "thread:th-1"
KEK = KekSealer([("test", bytes(range(32)))])
Probe = Callable[[], Awaitable[bool]]


@pytest.fixture(
    name="store", params=["embedded", pytest.param("redis", marks=pytest.mark.integration)]
)
async def fixture_store(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[Store]:
    """Each implementation of the Store port in turn."""
    store: EmbeddedStore | RedisStore
    if request.param == "embedded":
        store = EmbeddedStore(clock)
    else:
        store = RedisStore.from_url(request.getfixturevalue("redis_url"), KEK)
    yield store
    await store.close()


@pytest.fixture(name="identity")
def fixture_identity(request: pytest.FixtureRequest, store: Store) -> str:
    """A fresh identity name (for Redis, one whose keys are removed afterwards)."""
    if isinstance(store, RedisStore):
        return str(request.getfixturevalue("identity_name"))
    return "t" + uuid.uuid4().hex


class Expiry:
    """Checks TTLs: by moving the manual clock (embedded) or by reading PTTL (Redis)."""

    def __init__(self, clock: ManualClock, raw: redis.asyncio.Redis | None) -> None:
        self.clock = clock
        self.raw = raw

    async def assert_expires(self, key: str, ttl_seconds: float, present: Probe) -> None:
        """The entry at ``key`` is there until ``ttl_seconds`` have passed, then gone."""
        if self.raw is None:
            self.clock.advance(ttl_seconds - 0.01)
            assert await present()
            self.clock.advance(0.02)
        else:
            remaining_ms = await self.raw.pttl(key)
            assert 0 < remaining_ms <= ttl_seconds * 1000
            assert await present()
            await self.raw.pexpire(key, 0)
        assert not await present()

    async def assert_persists(self, key: str, present: Probe) -> None:
        """The entry at ``key`` has no TTL."""
        if self.raw is None:
            self.clock.advance(10**7)
        else:
            assert await self.raw.pttl(key) == -1
        assert await present()


@pytest.fixture(name="expiry")
async def fixture_expiry(
    request: pytest.FixtureRequest, store: Store, clock: ManualClock
) -> AsyncIterator[Expiry]:
    if not isinstance(store, RedisStore):
        yield Expiry(clock, None)
        return
    raw = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    yield Expiry(clock, raw)
    await raw.aclose()


async def ready(store: Store) -> None:
    """Wait until invalidations published from now on reach every feed."""
    assert isinstance(store, EmbeddedStore | RedisStore)
    await store.invalidations_ready()


def make_identity(
    clock: ManualClock, name: str, *, runtime: str = RUNTIME, user_id: str | None = "user-1"
) -> IdentityRecord:
    return IdentityRecord(
        name=name,
        agent_runtime_id=runtime,
        key=AgentKey.generate(bytes(range(64))),
        account_id="acct-1",
        user_id=user_id,
        registered_at=clock.now(),
        source="register",
    )


def make_task(clock: ManualClock, slot: str = BACKGROUND, task_id: str = "task-1") -> TaskRecord:
    return TaskRecord(
        agent_runtime_id=RUNTIME, task_id=task_id, slot=slot, registered_at=clock.now()
    )


def make_assertion(clock: ManualClock, header: str, task_id: str = "task-1") -> CachedAssertion:
    return CachedAssertion(
        header_value=Secret(f"AgentAssertion {header}"),
        agent_runtime_id=RUNTIME,
        task_id=task_id,
        issued_at=clock.now(),
        expires_at=clock.now() + timedelta(minutes=5),
    )


class TestBasics:
    def test_shared(self, store: Store) -> None:
        """Only the Redis store is shared between processes."""
        assert store.shared is isinstance(store, RedisStore)

    async def test_ping(self, store: Store) -> None:
        """A reachable store answers ping."""
        await store.ping()


class TestIdentity:
    async def test_round_trip(self, store: Store, clock: ManualClock, identity: str) -> None:
        """A saved identity loads back equal, private key included."""
        record = make_identity(clock, identity)
        await store.save_identity(record)
        loaded = await store.load_identity(identity)
        assert loaded == record
        assert loaded is not None
        assert loaded.key.seed == record.key.seed
        assert loaded.binding_id == "chatgpt-account-acct-1"

    async def test_missing(self, store: Store, identity: str) -> None:
        """An identity never saved is absent."""
        assert await store.load_identity(identity) is None

    async def test_overwrite(self, store: Store, clock: ManualClock, identity: str) -> None:
        """Saving again replaces every field, an absent user id included."""
        await store.save_identity(make_identity(clock, identity))
        replacement = make_identity(clock, identity, runtime="rt-2", user_id=None)
        await store.save_identity(replacement)
        assert await store.load_identity(identity) == replacement

    async def test_delete(self, store: Store, clock: ManualClock, identity: str) -> None:
        """A deleted identity is absent, and deleting it again is harmless."""
        await store.save_identity(make_identity(clock, identity))
        await store.delete_identity(identity)
        assert await store.load_identity(identity) is None
        await store.delete_identity(identity)

    async def test_delete_drops_background_task(
        self, store: Store, clock: ManualClock, identity: str
    ) -> None:
        """Deleting an identity also drops the background task of its runtime."""
        await store.save_identity(make_identity(clock, identity))
        await store.save_task(identity, make_task(clock), None)
        await store.delete_identity(identity)
        assert await store.load_task(identity, RUNTIME, BACKGROUND) is None

    async def test_identities_are_separate(
        self, store: Store, clock: ManualClock, identity: str
    ) -> None:
        """Another identity name does not see this one's record."""
        await store.save_identity(make_identity(clock, identity))
        assert await store.load_identity(identity + "-other") is None


class TestTasks:
    async def test_background_round_trip(
        self, store: Store, clock: ManualClock, identity: str, expiry: Expiry
    ) -> None:
        """A task saved without a TTL loads back and never expires."""
        task = make_task(clock)
        await store.save_task(identity, task, None)
        assert await store.load_task(identity, RUNTIME, BACKGROUND) == task

        async def present() -> bool:
            return await store.load_task(identity, RUNTIME, BACKGROUND) == task

        await expiry.assert_persists(keys.task_key(identity, RUNTIME, BACKGROUND), present)

    async def test_thread_task_expires(
        self, store: Store, clock: ManualClock, identity: str, expiry: Expiry
    ) -> None:
        """A thread task saved with a TTL disappears once it has passed."""
        task = make_task(clock, THREAD)
        await store.save_task(identity, task, 30.0)
        assert (await store.load_task(identity, RUNTIME, THREAD)) == task

        async def present() -> bool:
            return await store.load_task(identity, RUNTIME, THREAD) is not None

        await expiry.assert_expires(keys.task_key(identity, RUNTIME, THREAD), 30.0, present)

    async def test_keys_carry_the_runtime(
        self, store: Store, clock: ManualClock, identity: str
    ) -> None:
        """A task of one runtime is invisible to another runtime of the same identity."""
        await store.save_task(identity, make_task(clock), None)
        assert await store.load_task(identity, "rt-2", BACKGROUND) is None

    async def test_overwrite(self, store: Store, clock: ManualClock, identity: str) -> None:
        """Saving a slot again replaces its task."""
        await store.save_task(identity, make_task(clock, THREAD, "task-1"), 60)
        await store.save_task(identity, make_task(clock, THREAD, "task-2"), 60)
        loaded = await store.load_task(identity, RUNTIME, THREAD)
        assert loaded is not None
        assert loaded.task_id == "task-2"

    async def test_delete_matching(self, store: Store, clock: ManualClock, identity: str) -> None:
        """compare-and-delete removes the slot when it still holds the given task id."""
        await store.save_task(identity, make_task(clock), None)
        assert await store.delete_task(identity, RUNTIME, BACKGROUND, "task-1") is True
        assert await store.load_task(identity, RUNTIME, BACKGROUND) is None

    async def test_delete_other_task_refused(
        self, store: Store, clock: ManualClock, identity: str
    ) -> None:
        """compare-and-delete leaves a successor's task in place."""
        await store.save_task(identity, make_task(clock, task_id="task-2"), None)
        assert await store.delete_task(identity, RUNTIME, BACKGROUND, "task-1") is False
        assert await store.load_task(identity, RUNTIME, BACKGROUND) is not None

    async def test_delete_missing(self, store: Store, identity: str) -> None:
        """Deleting an empty slot reports that nothing was deleted."""
        assert await store.delete_task(identity, RUNTIME, BACKGROUND, "task-1") is False

    async def test_bad_arguments(self, store: Store, clock: ManualClock, identity: str) -> None:
        """A malformed slot or a non-positive TTL is a programming error."""
        with pytest.raises(ValueError, match="slot"):
            await store.load_task(identity, RUNTIME, "nonsense")
        with pytest.raises(ValueError, match="ttl_seconds"):
            await store.save_task(identity, make_task(clock, THREAD), 0)

    async def test_naive_timestamps_refused(
        self, store: Store, clock: ManualClock, identity: str
    ) -> None:
        """A naive timestamp is refused at save time rather than discarded at the next load."""
        naive = replace(make_task(clock), registered_at=datetime(2026, 4, 13, 12, 0))
        with pytest.raises(ValueError, match="registered_at must be timezone-aware"):
            await store.save_task(identity, naive, None)
        with pytest.raises(ValueError, match="expires_at must be timezone-aware"):
            await store.save_assertion(
                identity, replace(make_assertion(clock, "h"), expires_at=naive.registered_at), 60
            )


class TestAssertions:
    async def test_round_trip(self, store: Store, clock: ManualClock, identity: str) -> None:
        """A cached assertion loads back equal, header included."""
        assertion = make_assertion(clock, "header-a")
        assert await store.save_assertion(identity, assertion, 60) == assertion
        assert await store.load_assertion(identity, "task-1") == assertion

    async def test_missing(self, store: Store, identity: str) -> None:
        """No assertion is cached for an unknown task."""
        assert await store.load_assertion(identity, "task-1") is None

    async def test_first_writer_wins(self, store: Store, clock: ManualClock, identity: str) -> None:
        """A second save for the same task returns the first assertion and keeps it."""
        first = make_assertion(clock, "header-a")
        await store.save_assertion(identity, first, 60)
        assert await store.save_assertion(identity, make_assertion(clock, "header-b"), 60) == first
        assert await store.load_assertion(identity, "task-1") == first

    async def test_concurrent_writers_converge(
        self, store: Store, clock: ManualClock, identity: str
    ) -> None:
        """Many concurrent saves all return the one assertion that is cached."""
        candidates = [make_assertion(clock, f"header-{i}") for i in range(25)]
        results = await asyncio.gather(*(store.save_assertion(identity, c, 60) for c in candidates))
        cached = await store.load_assertion(identity, "task-1")
        assert cached in candidates
        assert all(result == cached for result in results)

    async def test_expires(
        self, store: Store, clock: ManualClock, identity: str, expiry: Expiry
    ) -> None:
        """A cached assertion disappears after its TTL."""
        await store.save_assertion(identity, make_assertion(clock, "header-a"), 45)

        async def present() -> bool:
            return await store.load_assertion(identity, "task-1") is not None

        await expiry.assert_expires(keys.assertion_key(identity, "task-1"), 45, present)

    async def test_delete(self, store: Store, clock: ManualClock, identity: str) -> None:
        """After a delete the assertion is gone and the next writer wins."""
        await store.save_assertion(identity, make_assertion(clock, "header-a"), 60)
        await store.delete_assertion(identity, "task-1")
        assert await store.load_assertion(identity, "task-1") is None
        second = make_assertion(clock, "header-b")
        assert await store.save_assertion(identity, second, 60) == second

    async def test_per_task(self, store: Store, clock: ManualClock, identity: str) -> None:
        """Assertions of different tasks do not compete."""
        one = make_assertion(clock, "header-a", "task-1")
        two = make_assertion(clock, "header-b", "task-2")
        assert await store.save_assertion(identity, one, 60) == one
        assert await store.save_assertion(identity, two, 60) == two


def make_route(clock: ManualClock, override: str | None = "us") -> WorkspaceRouteRecord:
    return WorkspaceRouteRecord(
        account_id="acct-1",
        token_fingerprint="0" * 32,
        origin="https://us.chatgpt.com",
        override=override,
        discovered_at=clock.now(),
    )


class TestRoutes:
    @pytest.mark.parametrize("override", ["us", None])
    async def test_round_trip(
        self, store: Store, clock: ManualClock, identity: str, override: str | None
    ) -> None:
        route = make_route(clock, override)
        await store.save_route(identity, route, 3600)
        assert await store.load_route(identity) == route

    async def test_missing(self, store: Store, identity: str) -> None:
        assert await store.load_route(identity) is None

    async def test_overwrite(self, store: Store, clock: ManualClock, identity: str) -> None:
        await store.save_route(identity, make_route(clock, "us"), 3600)
        await store.save_route(identity, make_route(clock, "us_cr"), 3600)
        route = await store.load_route(identity)
        assert route is not None
        assert route.override == "us_cr"

    async def test_expires(
        self, store: Store, clock: ManualClock, identity: str, expiry: Expiry
    ) -> None:
        await store.save_route(identity, make_route(clock), 600)

        async def present() -> bool:
            return await store.load_route(identity) is not None

        await expiry.assert_expires(keys.route_key(identity), 600, present)


class TestLocks:
    async def test_exclusive(self, store: Store, identity: str) -> None:
        """A held lock cannot be taken again."""
        token = await store.acquire_lock(identity, "register", 30)
        assert token
        assert await store.acquire_lock(identity, "register", 30) is None

    async def test_tokens_are_unique(self, store: Store, identity: str) -> None:
        """Each acquisition gets a fresh fencing token."""
        first = await store.acquire_lock(identity, "register", 30)
        assert first is not None
        assert await store.release_lock(identity, "register", first)
        assert await store.acquire_lock(identity, "register", 30) not in (None, first)

    async def test_wrong_token_cannot_release(self, store: Store, identity: str) -> None:
        """Only the owner's token releases the lock."""
        token = await store.acquire_lock(identity, "register", 30)
        assert token is not None
        assert await store.release_lock(identity, "register", "not-the-token") is False
        assert await store.acquire_lock(identity, "register", 30) is None
        assert await store.release_lock(identity, "register", token) is True
        assert await store.acquire_lock(identity, "register", 30) is not None

    async def test_release_free_lock(self, store: Store, identity: str) -> None:
        """Releasing a lock nobody holds reports that nothing was released."""
        assert await store.release_lock(identity, "register", "token") is False

    async def test_expires(self, store: Store, identity: str, expiry: Expiry) -> None:
        """A lock whose holder vanished frees itself after its TTL."""
        assert await store.acquire_lock(identity, "register", 20) is not None

        async def held() -> bool:
            return await store.acquire_lock(identity, "register", 20) is None

        await expiry.assert_expires(keys.lock_key(identity, "register"), 20, held)

    async def test_names_are_separate(self, store: Store, identity: str) -> None:
        """Locks with different names are independent."""
        assert await store.acquire_lock(identity, "register", 30) is not None
        assert await store.acquire_lock(identity, "task:background", 30) is not None


async def next_for(feed: AsyncIterator[tuple[str, str]], identity: str) -> tuple[str, str]:
    """The next invalidation of ``identity`` (other tests may share the channel)."""
    async with asyncio.timeout(5):
        async for item in feed:
            if item[0] == identity:
                return item
    raise AssertionError("the feed ended")


class TestInvalidations:
    async def test_fan_out(self, store: Store, identity: str) -> None:
        """Every subscriber, the publisher's own process included, receives each invalidation."""
        first, second = store.invalidations(), store.invalidations()
        await ready(store)
        await store.publish_invalidation(identity, THREAD)
        await store.publish_invalidation(identity, BACKGROUND)
        for feed in (first, second):
            assert await next_for(feed, identity) == (identity, THREAD)
            assert await next_for(feed, identity) == (identity, BACKGROUND)

    async def test_close_ends_feeds(self, store: Store) -> None:
        """Closing the store finishes open feeds and later ones."""
        feed = store.invalidations()
        await ready(store)
        consumer = asyncio.create_task(anext(feed, None))
        await store.close()
        async with asyncio.timeout(5):
            assert await consumer is None
        assert await anext(store.invalidations(), None) is None


class TestThreadTaskAdmission:
    """Fleet-wide limits on new thread tasks: GCRA budgets and a cap on live ones, all or nothing."""

    async def test_burst_then_refusal_names_the_budget(self, store: Store, identity: str) -> None:
        budgets = [Budget("identity", 0.01, 3), Budget("caller:a", 0.01, 2)]
        admitted = [
            await store.admit_thread_task(
                identity, f"m{i}", ttl_seconds=60, live_cap=100, budgets=budgets
            )
            for i in range(3)
        ]
        assert admitted[:2] == [None, None]
        refusal = admitted[2]
        assert refusal is not None
        assert refusal.limit == "caller:a"
        assert 99 <= refusal.retry_after <= 100.1  # one token every 100 s
        # a refusal takes nothing: the identity budget still has its third token
        other = await store.admit_thread_task(
            identity, "m9", ttl_seconds=60, live_cap=100, budgets=budgets[:1]
        )
        assert other is None
        spent = await store.admit_thread_task(
            identity, "m10", ttl_seconds=60, live_cap=100, budgets=budgets[:1]
        )
        assert spent is not None
        assert spent.limit == "identity"

    async def test_live_cap_counts_members_once(self, store: Store, identity: str) -> None:
        for member in ("a", "b", "a"):
            assert (
                await store.admit_thread_task(
                    identity, member, ttl_seconds=60, live_cap=2, budgets=[]
                )
                is None
            )
        refusal = await store.admit_thread_task(
            identity, "c", ttl_seconds=60, live_cap=2, budgets=[]
        )
        assert refusal is not None
        assert refusal.limit == LIVE_THREAD_TASKS
        assert 0 < refusal.retry_after <= 60
        await store.forget_thread_task(identity, "a")
        assert (
            await store.admit_thread_task(identity, "c", ttl_seconds=60, live_cap=2, budgets=[])
            is None
        )

    async def test_live_members_expire(
        self, store: Store, identity: str, clock: ManualClock, request: pytest.FixtureRequest
    ) -> None:
        assert (
            await store.admit_thread_task(identity, "a", ttl_seconds=0.2, live_cap=1, budgets=[])
            is None
        )
        if isinstance(store, RedisStore):
            await asyncio.sleep(0.25)  # the script reads Redis's own clock
        else:
            clock.advance(0.25)
        assert (
            await store.admit_thread_task(identity, "b", ttl_seconds=60, live_cap=1, budgets=[])
            is None
        )
