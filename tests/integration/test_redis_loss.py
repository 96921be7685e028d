"""Redis restarting empty under running replicas: the identity is written back, not forked."""

from __future__ import annotations

import asyncio

import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.catalog import CATALOGUE
from broker.events import Event
from cb_emulator import Emulator
from tests.fixtures.broker import StartBroker
from tests.fixtures.redis import RedisServerProcess
from tests.integration.helpers import call_protected

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class TestRedisLoss:
    async def test_identity_written_back(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        redis_process: RedisServerProcess,
        log_output: list[dict[str, object]],
    ) -> None:
        """After Redis loses everything, the next cold call restores the identity for the fleet."""
        first = await start_broker(redis_url=redis_process.url)
        before = (await first.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        await asyncio.to_thread(redis_process.restart)
        after = None
        for attempt in range(50):
            try:
                after = (
                    await first.stub.GetAuthorization(
                        pb.GetAuthorizationRequest(thread_id=f"t{attempt}")
                    )
                ).authorization
                break
            except Exception:  # noqa: BLE001  (Redis may still be coming back; bounded retries)
                await asyncio.sleep(0.1)
        assert after is not None
        assert after.agent_runtime_id == before.agent_runtime_id
        restored = [e for e in log_output if e["event"] == Event.IDENTITY_RESTORED]
        assert len(restored) == 1
        spec = CATALOGUE[Event.IDENTITY_RESTORED]
        assert {f.name for f in spec.fields} <= set(restored[0])
        second = await start_broker(redis_url=redis_process.url)
        fresh = (await second.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert fresh.agent_runtime_id == before.agent_runtime_id
        assert (await call_protected(emulator.base_url, fresh)).status_code == 200
        assert emulator.stats().identity_registrations == 1
