"""What only the Redis store does: sealing at rest, discarding corrupt values, outages and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio

from broker.adapters.sealing import KekSealer, PlaintextSealer
from broker.adapters.store import RedisStore, _redis_subscriber, keys
from broker.core.credentials.model import BACKGROUND, CachedAssertion, IdentityRecord, TaskRecord
from broker.core.protocol.keys import AgentKey
from broker.errors import ConfigError, StoreUnavailable
from broker.events import Event
from broker.secret import Secret
from tests.conftest import free_port
from tests.fixtures.redis import RedisServerProcess

pytestmark = pytest.mark.integration

KEK = KekSealer([("test", bytes(range(32)))])
OTHER_KEK = KekSealer([("other", bytes(range(50, 82)))])
NOW = datetime(2026, 4, 13, 12, 0, tzinfo=UTC)
RUNTIME = "rt-1"
HEADER = "AgentAssertion c2VjcmV0LWFzc2VydGlvbi10b2tlbi12YWx1ZQ"
Logs = list[dict[str, Any]]


@pytest.fixture(name="store")
async def fixture_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, KEK)
    yield store
    await store.close()


def make_identity(name: str) -> IdentityRecord:
    return IdentityRecord(
        name=name,
        agent_runtime_id=RUNTIME,
        key=AgentKey.generate(bytes(range(1, 65))),
        account_id="acct-1",
        user_id="user-1",
        registered_at=NOW,
    )


def make_assertion(task_id: str = "task-1", header: str = HEADER) -> CachedAssertion:
    return CachedAssertion(
        header_value=Secret(header),
        agent_runtime_id=RUNTIME,
        task_id=task_id,
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )


def raw_bytes(value: bytes | str) -> bytes:
    assert isinstance(value, bytes)
    return value


def corrupt_events(logs: Logs) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == Event.STORE_CORRUPT_VALUE]


class TestSealedAtRest:
    async def test_private_key_is_sealed(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str
    ) -> None:
        """The identity hash holds no form of the private key, only a cb1-sealed value."""
        record = make_identity(identity_name)
        await store.save_identity(record)
        fields = await raw.hgetall(keys.identity_key(identity_name))
        blob = b"".join(raw_bytes(k) + raw_bytes(v) for k, v in fields.items())
        for secret in (
            record.key.to_pkcs8_base64().encode(),
            record.key.to_pkcs8_base64(v2=False).encode(),
            record.key.to_pkcs8_der(),
            record.key.seed,
        ):
            assert secret not in blob
        assert raw_bytes(fields[b"private_key"]).startswith(b"cb1")
        assert fields[b"public_key_ssh"] == record.key.public_key_ssh.encode()

    async def test_assertion_is_sealed(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str
    ) -> None:
        """A cached assertion is stored sealed: neither the header nor its token appears."""
        await store.save_assertion(identity_name, make_assertion(), 60)
        value = await raw.get(keys.assertion_key(identity_name, "task-1"))
        assert isinstance(value, bytes)
        assert value.startswith(b"cb1")
        assert HEADER.encode() not in value
        assert HEADER.split()[1].encode() not in value

    async def test_task_layout(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str
    ) -> None:
        """A task is a plain hash of task id and registration time under the schema's key."""
        task = TaskRecord(RUNTIME, "task-1", BACKGROUND, NOW)
        await store.save_task(identity_name, task, None)
        fields = await raw.hgetall(keys.task_key(identity_name, RUNTIME, BACKGROUND))
        assert fields == {b"task_id": b"task-1", b"registered_at": NOW.isoformat().encode()}

    async def test_insecure_values_not_served_with_kek(
        self, redis_url: str, store: RedisStore, identity_name: str, log_output: Logs
    ) -> None:
        """Values written unsealed (no KEK) are discarded, not served, by a broker with a KEK."""
        insecure = RedisStore.from_url(redis_url, PlaintextSealer())
        try:
            await insecure.save_identity(make_identity(identity_name))
            assert await insecure.load_identity(identity_name) is not None
        finally:
            await insecure.close()
        assert await store.load_identity(identity_name) is None
        assert "plaintext" in corrupt_events(log_output)[0]["reason"]

    async def test_sealed_values_not_served_insecure(
        self, redis_url: str, store: RedisStore, identity_name: str
    ) -> None:
        """A broker switched to an unsealed store does not serve KEK-sealed values."""
        await store.save_assertion(identity_name, make_assertion(), 60)
        insecure = RedisStore.from_url(redis_url, PlaintextSealer())
        try:
            assert await insecure.load_assertion(identity_name, "task-1") is None
        finally:
            await insecure.close()


class TestCorruptValues:
    async def assert_discarded(
        self, raw: redis.asyncio.Redis, log_output: Logs, key: str, reason: str
    ) -> None:
        assert await raw.exists(key) == 0
        (event,) = corrupt_events(log_output)
        assert event["key"] == key
        assert reason in event["reason"]
        assert event["discarded"] is True
        assert event["log_level"] == "warning"

    async def test_garbage_private_key(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """An identity whose private key is garbage is discarded, logged and reported absent."""
        key = keys.identity_key(identity_name)
        await store.save_identity(make_identity(identity_name))
        await raw.hset(key, "private_key", b"\x00garbage")
        assert await store.load_identity(identity_name) is None
        await self.assert_discarded(raw, log_output, key, "not in a known sealed format")

    async def test_truncated_assertion(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """A truncated sealed assertion is discarded and reported absent."""
        key = keys.assertion_key(identity_name, "task-1")
        await store.save_assertion(identity_name, make_assertion(), 60)
        value = await raw.get(key)
        assert value is not None
        await raw.set(key, value[:40], px=60_000)
        assert await store.load_assertion(identity_name, "task-1") is None
        await self.assert_discarded(raw, log_output, key, "truncated")

    async def test_unknown_kek(
        self, redis_url: str, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """A value sealed under a KEK this broker lacks (a rotation rolling out) is kept, not deleted.

        The reader gets StoreUnavailable naming the KEK: deleting the value would destroy an
        identity that replicas holding the new KEK can still read.
        """
        key = keys.assertion_key(identity_name, "task-1")
        foreign = RedisStore.from_url(redis_url, OTHER_KEK)
        store = RedisStore.from_url(redis_url, KEK)
        try:
            await foreign.save_assertion(identity_name, make_assertion(), 60)
            with pytest.raises(StoreUnavailable, match="'other', which is not configured"):
                await store.load_assertion(identity_name, "task-1")
        finally:
            await foreign.close()
            await store.close()
        assert await raw.exists(key) == 1
        assert not [e for e in log_output if e["event"] == "store.corrupt_value"]

    async def test_value_copied_under_another_key(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """An assertion copied under another task's key fails to open there; the original stays."""
        await store.save_assertion(identity_name, make_assertion("task-1"), 60)
        value = await raw.get(keys.assertion_key(identity_name, "task-1"))
        assert value is not None
        copy_key = keys.assertion_key(identity_name, "task-2")
        await raw.set(copy_key, value, px=60_000)
        assert await store.load_assertion(identity_name, "task-2") is None
        assert await store.load_assertion(identity_name, "task-1") == make_assertion("task-1")
        await self.assert_discarded(raw, log_output, copy_key, "fails authentication")

    async def test_private_key_copied_from_another_identity(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """A sealed private key moved to another identity's hash does not open."""
        other = identity_name + "-b"
        try:
            await store.save_identity(make_identity(identity_name))
            await store.save_identity(make_identity(other))
            foreign = await raw.hget(keys.identity_key(other), "private_key")
            assert foreign is not None
            await raw.hset(keys.identity_key(identity_name), "private_key", foreign)
            assert await store.load_identity(identity_name) is None
            assert await store.load_identity(other) is not None
        finally:
            await raw.delete(keys.identity_key(other))
        await self.assert_discarded(
            raw, log_output, keys.identity_key(identity_name), "fails authentication"
        )

    async def test_missing_field(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """An identity hash with a field missing is discarded."""
        key = keys.identity_key(identity_name)
        await store.save_identity(make_identity(identity_name))
        await raw.hdel(key, "account_id")
        assert await store.load_identity(identity_name) is None
        await self.assert_discarded(raw, log_output, key, "'account_id' is missing")

    async def test_public_key_mismatch(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """An identity whose public key does not match its private key is discarded.

        The public key is bound into the private key's seal, so the change is caught as tampering
        before the keys are compared (``test_sealed_binding.py`` covers every bound field).
        """
        key = keys.identity_key(identity_name)
        await store.save_identity(make_identity(identity_name))
        other = AgentKey.generate(bytes(range(100, 164)))
        await raw.hset(key, "public_key_ssh", other.public_key_ssh)
        assert await store.load_identity(identity_name) is None
        await self.assert_discarded(raw, log_output, key, "sealed value fails authentication")

    async def test_bad_task(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """A task hash with a malformed timestamp is discarded."""
        key = keys.task_key(identity_name, RUNTIME, BACKGROUND)
        await raw.hset(key, mapping={"task_id": "task-1", "registered_at": "yesterday"})
        assert await store.load_task(identity_name, RUNTIME, BACKGROUND) is None
        await self.assert_discarded(raw, log_output, key, "not an ISO-8601 timestamp")

    async def test_wrong_type_identity(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """A string at the identity key is discarded instead of raising WRONGTYPE."""
        key = keys.identity_key(identity_name)
        await raw.set(key, b"foreign")
        assert await store.load_identity(identity_name) is None
        await self.assert_discarded(raw, log_output, key, "another type than a hash")

    async def test_wrong_type_assertion(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """A hash at an assertion key is discarded on load."""
        key = keys.assertion_key(identity_name, "task-1")
        await raw.hset(key, "x", "y")
        assert await store.load_assertion(identity_name, "task-1") is None
        await self.assert_discarded(raw, log_output, key, "another type than a string")

    async def test_save_replaces_corrupt_assertion(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """A save that finds a corrupt value discards it and caches its own assertion."""
        key = keys.assertion_key(identity_name, "task-1")
        await raw.set(key, b"garbage", px=60_000)
        assertion = make_assertion()
        assert await store.save_assertion(identity_name, assertion, 60) == assertion
        assert await store.load_assertion(identity_name, "task-1") == assertion
        assert [e["key"] for e in corrupt_events(log_output)] == [key]

    async def test_logs_never_hold_values(
        self, store: RedisStore, raw: redis.asyncio.Redis, identity_name: str, log_output: Logs
    ) -> None:
        """The corrupt-value event names the key and reason, never the value."""
        key = keys.assertion_key(identity_name, "task-1")
        await raw.set(key, b"cb0" + HEADER.encode(), px=60_000)
        assert await store.load_assertion(identity_name, "task-1") is None
        assert HEADER not in repr(log_output)
        assert HEADER.split()[1] not in repr(log_output)


class TestUnavailable:
    async def test_unreachable_is_store_unavailable(self) -> None:
        """A refused connection fails fast with host:port in the message and no password."""
        port = free_port()
        store = RedisStore.from_url(f"redis://user:hunter2@127.0.0.1:{port}/0", KEK)
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.load_identity("alpha")
        finally:
            await store.close()
        assert time.monotonic() - started < 3
        assert caught.value.message == (
            f"redis at 127.0.0.1:{port} is unavailable: load_identity failed (ConnectionError)"
        )
        assert "hunter2" not in repr(caught.value.__cause__)

    def test_bad_url_is_config_error(self) -> None:
        """A URL redis-py cannot use is a ConfigError without its credentials."""
        with pytest.raises(ConfigError) as caught:
            RedisStore.from_url("http://user:hunter2@example.invalid:6379", KEK)
        assert "example.invalid:6379" in caught.value.message
        assert "hunter2" not in caught.value.message

    def test_decoding_client_refused(self, redis_url: str) -> None:
        """A client that decodes responses cannot hold sealed binary values."""
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisStore(client, KEK)

    async def test_closed_store(self, store: RedisStore) -> None:
        """A closed store refuses work with StoreUnavailable."""
        await store.close()
        with pytest.raises(StoreUnavailable, match="closed"):
            await store.ping()

    async def test_hung_redis_fails_fast(self, redis_process: RedisServerProcess) -> None:
        """A Redis that stops answering (SIGSTOP) fails a call after one read timeout, not three."""
        store = RedisStore.from_url(redis_process.url, KEK)
        try:
            await store.ping()
            redis_process.pause()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"ping failed \(TimeoutError\)"):
                await store.ping()
            assert time.monotonic() - started < 2
            redis_process.resume()
            await store.ping()
        finally:
            redis_process.resume()
            await store.close()

    async def test_outage_and_recovery(
        self, redis_process: RedisServerProcess, log_output: Logs
    ) -> None:
        """Stopping Redis fails calls fast; restarting it recovers, with one event for each change."""
        store = RedisStore.from_url(redis_process.url, KEK)
        try:
            await store.save_identity(make_identity("alpha"))
            redis_process.stop()
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{redis_process.port}"):
                    await store.load_identity("alpha")
                assert time.monotonic() - started < 3
            redis_process.start()
            await store.ping()
            assert await store.load_identity("alpha") is None  # a fresh node is empty
        finally:
            await store.close()
        events = [e["event"] for e in log_output if e["event"].startswith("store.")]
        assert events == [Event.STORE_CONNECTED, Event.STORE_DEGRADED, Event.STORE_RECOVERED]
        degraded = next(e for e in log_output if e["event"] == Event.STORE_DEGRADED)
        assert degraded["redis"] == f"127.0.0.1:{redis_process.port}"
        assert degraded["operation"] == "load_identity"


async def receive(
    store: RedisStore, feed: AsyncIterator[tuple[str, str]], identity: str, deadline: float
) -> tuple[str, str]:
    """Publish probes until one reaches ``feed``: the listener resubscribes in its own time."""
    async with asyncio.timeout(deadline):
        attempt = 0
        while True:
            attempt += 1
            slot = f"thread:probe-{attempt}"
            with contextlib.suppress(StoreUnavailable):
                await store.publish_invalidation(identity, slot)
            try:
                async with asyncio.timeout(0.25):
                    return await anext(feed)
            except TimeoutError:
                continue


class TestInvalidationsAcrossRestarts:
    async def test_survive_restart(
        self, redis_process: RedisServerProcess, log_output: Logs
    ) -> None:
        """After Redis restarts the listener resubscribes and feeds receive again."""
        store = RedisStore.from_url(redis_process.url, KEK)
        other = RedisStore.from_url(redis_process.url, KEK)
        try:
            feed = store.invalidations()
            await store.invalidations_ready()
            await other.publish_invalidation("alpha", BACKGROUND)
            async with asyncio.timeout(5):
                assert await anext(feed) == ("alpha", BACKGROUND)
            redis_process.stop()
            for _ in range(3):  # a real outage, longer than redis-py's own reconnect attempts
                with pytest.raises(StoreUnavailable):
                    await other.publish_invalidation("alpha", BACKGROUND)
            redis_process.start()
            identity, slot = await receive(other, feed, "alpha", deadline=15)
            assert identity == "alpha"
            assert slot.startswith("thread:probe-")
        finally:
            await other.close()
            await store.close()
        # Each store reports its own transitions, once each (test_outage_and_recovery pins the order).
        degraded = [e for e in log_output if e["event"] == Event.STORE_DEGRADED]
        recovered = [e for e in log_output if e["event"] == Event.STORE_RECOVERED]
        assert 1 <= len(degraded) == len(recovered) <= 2

    @pytest.mark.slow
    async def test_silent_subscription_replaced(
        self,
        redis_process: RedisServerProcess,
        monkeypatch: pytest.MonkeyPatch,
        log_output: Logs,
    ) -> None:
        """A subscription that stops answering its PING (a partition) is dropped and renewed."""
        monkeypatch.setattr(_redis_subscriber, "_IDLE_PING_S", 0.2)
        store = RedisStore.from_url(redis_process.url, KEK)
        other = RedisStore.from_url(redis_process.url, KEK)
        try:
            feed = store.invalidations()
            await store.invalidations_ready()
            redis_process.pause()
            for _ in range(2):  # each times out after 1 s, while the listener gives up on its PING
                with pytest.raises(StoreUnavailable):
                    await other.publish_invalidation("alpha", BACKGROUND)
            redis_process.resume()
            identity, _ = await receive(other, feed, "alpha", deadline=15)
            assert identity == "alpha"
        finally:
            redis_process.resume()
            await other.close()
            await store.close()
        assert any(
            e["event"] == Event.STORE_DEGRADED and e["operation"] == "invalidations"
            for e in log_output
        )

    async def test_close_during_outage(self, redis_process: RedisServerProcess) -> None:
        """Closing the store ends its feeds even while the listener waits to reconnect."""
        store = RedisStore.from_url(redis_process.url, KEK)
        feed = store.invalidations()
        await store.invalidations_ready()
        redis_process.stop()
        consumer = asyncio.create_task(anext(feed, None))
        await store.close()
        async with asyncio.timeout(5):
            assert await consumer is None

    async def test_malformed_message_skipped(
        self, store: RedisStore, raw: redis.asyncio.Redis, log_output: Logs
    ) -> None:
        """A foreign message on the channel is logged and skipped; the feed keeps working."""
        feed = store.invalidations()
        await store.invalidations_ready()
        await raw.publish(keys.INVALIDATION_CHANNEL, b"no-newline")
        await raw.publish(keys.INVALIDATION_CHANNEL, b"beta\nbackground")
        async with asyncio.timeout(5):
            while (item := await anext(feed))[0] != "beta":
                pass
        assert item == ("beta", "background")
        assert any(e["key"] == keys.INVALIDATION_CHANNEL for e in corrupt_events(log_output))


async def test_a_corrupt_route_is_discarded(
    redis_url: str, identity_name: str, log_output: Logs
) -> None:
    """A route that is not the broker's JSON is deleted and read as absent (rediscovered)."""
    store = RedisStore.from_url(redis_url, PlaintextSealer())
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        await raw.set(keys.route_key(identity_name), b'{"origin": 7}')
        assert await store.load_route(identity_name) is None
        assert await raw.exists(keys.route_key(identity_name)) == 0
        (event,) = corrupt_events(log_output)
        assert "route field" in event["reason"]
    finally:
        await raw.aclose()
        await store.close()
