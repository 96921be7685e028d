"""WatchAuthorization fan-out: one refresher per key, slow watchers never block, clean shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.emulator import Emulator
from tests.fixtures.broker import StartBroker

pytestmark = pytest.mark.integration

SHORT_TTL = {"BROKER_ASSERTION_TTL": "3", "BROKER_REFRESH_MARGIN": "1.5"}


async def eventually(predicate: Callable[[], bool], attempts: int = 1000) -> None:
    """Poll a cheap in-process predicate until it holds (at most ``attempts`` times 10 ms)."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


class TestFanOut:
    async def test_watchers_share_one_refresher(self, start_broker: StartBroker) -> None:
        """Fifty watch streams of one key run one refresher and all get the same header."""
        broker = await start_broker()
        calls = [broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest()) for _ in range(50)]
        firsts = await asyncio.gather(*(asyncio.wait_for(c.read(), 10) for c in calls))
        assert len({f.authorization.header_value for f in firsts}) == 1
        hub = broker.app.authorizer.watch_hub
        assert hub.topics == 1
        assert hub.watchers == 50
        for call in calls:
            call.cancel()
        await eventually(lambda: hub.topics == 0)

    async def test_slow_watcher_does_not_block_others(self, start_broker: StartBroker) -> None:
        """A watcher that never reads does not delay another watcher's refreshes."""
        broker = await start_broker(env=SHORT_TTL)
        stalled = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest())
        await asyncio.wait_for(stalled.read(), 10)  # then never read again
        live = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest())
        seen = []
        for _ in range(3):
            seen.append((await asyncio.wait_for(live.read(), 10)).authorization.issued_at.seconds)
        assert seen == sorted(seen)
        assert len(set(seen)) >= 2
        live.cancel()
        stalled.cancel()

    async def test_invalid_watch_fails_at_once(self, start_broker: StartBroker) -> None:
        """A malformed watch request ends with INVALID_ARGUMENT before any value."""
        broker = await start_broker()
        call = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest(thread_id="bad id"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_thread_watch_unavailable(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A thread watch whose task cannot be registered ends with UNAVAILABLE."""
        emulator.inject_fault("register_task", status=503, count=50)
        broker = await start_broker()
        call = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest(thread_id="t"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


class TestShutdown:
    async def test_stop_ends_streams_cleanly(self, start_broker: StartBroker) -> None:
        """Stopping the broker ends open watch streams with OK, well inside the grace period."""
        broker = await start_broker()
        call = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest())
        await asyncio.wait_for(call.read(), 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await broker.app.stop(grace=5.0)
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.OK
        assert loop.time() - started < 4.0
        broker.closed = True
        await broker.channel.close()
