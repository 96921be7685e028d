"""``grpc.health.v1.Health/Watch`` on a real ``credential-broker serve``, as load balancers use it.

A Watch stream must answer the current status at once and then every change: here the store's
health goes NOT_SERVING when its ``redis-server`` is stopped and SERVING again when it is back. The
health service is open to everyone (DESIGN §6: probes carry no credential), so a stream without a
caller token, with a caller's token and with a token nobody has behave the same. gRPC's client-side
health checking (a channel whose service config names ``healthCheckConfig``) is built on Watch: a
worker's channel configured that way must reach the broker. Nothing may be written to stderr.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.core.callers import hash_token
from broker.transport.grpc.server import STORE_HEALTH
from tests.fixtures.fleet import Replica, StartFleet
from tests.fixtures.redis import RedisServerProcess

pytestmark = pytest.mark.integration

WORKER = "worker-token-for-health-watch-0123456789"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# The broker checks the store every 5 s; a change must reach the stream within one check and a margin.
CHANGE_WITHIN_S = 10.0
# Caller policy: the health service is open; these are the ways a probe may (not) present itself.
CREDENTIALS = {
    "no token": (),
    "caller token": (("authorization", f"Bearer {WORKER}"),),
    "unknown token": (("authorization", "Bearer not-a-configured-caller"),),
}


class _Stream:
    """One Watch stream whose updates are piped into a queue by a task (cancelled at the end)."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[object, object]) -> None:
        self.call = call
        self.updates: asyncio.Queue[int | grpc.aio.AioRpcError] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for reply in self.call:
                assert isinstance(reply, health_pb2.HealthCheckResponse)
                await self.updates.put(int(reply.status))
        except grpc.aio.AioRpcError as exc:
            await self.updates.put(exc)

    async def next(self, within: float = CHANGE_WITHIN_S) -> int:
        """The next status on the stream; the stream's error if it ended instead."""
        update = await asyncio.wait_for(self.updates.get(), timeout=within)
        if isinstance(update, grpc.aio.AioRpcError):
            pytest.fail(f"Watch ended with {update.code().name}: {update.details()}")
        return update

    async def close(self) -> None:
        self.call.cancel()
        if self.task.done():
            return
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture(name="replica")
async def fixture_replica(
    start_fleet: StartFleet, redis_process: RedisServerProcess, tmp_path: Path
) -> Replica:
    """One ``serve`` process on a private Redis, with callers configured (authentication on)."""
    config = tmp_path / "callers.toml"
    config.write_text(f'[callers.worker]\ntoken_sha256 = "{hash_token(WORKER)}"\n')
    fleet = await start_fleet(
        redis_url=redis_process.url,
        identity="t" + uuid.uuid4().hex,
        replicas=1,
        env={"BROKER_CONFIG": str(config)},
    )
    return fleet[0]


@pytest.fixture(name="open_streams")
async def fixture_open_streams() -> AsyncIterator[list[_Stream]]:
    streams: list[_Stream] = []
    yield streams
    for stream in streams:
        await stream.close()


def _stderr(replica: Replica) -> str:
    return replica.stderr_path.read_text(errors="replace") if replica.stderr_path.exists() else ""


class TestWatch:
    async def test_first_status_then_each_change(
        self,
        replica: Replica,
        redis_process: RedisServerProcess,
        open_streams: list[_Stream],
    ) -> None:
        """Every probe gets SERVING at once, NOT_SERVING when Redis stops, SERVING when it is back."""
        health = replica.health
        request = health_pb2.HealthCheckRequest(service=STORE_HEALTH)
        for metadata in CREDENTIALS.values():
            open_streams.append(_Stream(health.Watch(request, metadata=metadata, timeout=60)))
        assert [await s.next() for s in open_streams] == [SERVING] * len(CREDENTIALS)

        await asyncio.to_thread(redis_process.stop)
        assert [await s.next() for s in open_streams] == [NOT_SERVING] * len(CREDENTIALS)

        await asyncio.to_thread(redis_process.start)
        assert [await s.next() for s in open_streams] == [SERVING] * len(CREDENTIALS)
        assert _stderr(replica) == ""

    @pytest.mark.parametrize("credential", sorted(CREDENTIALS))
    async def test_broker_and_unknown_services(
        self, replica: Replica, credential: str, open_streams: list[_Stream]
    ) -> None:
        """The broker's own services answer SERVING; a service nobody reports is SERVICE_UNKNOWN."""
        metadata = CREDENTIALS[credential]
        for service, expected in (
            ("", SERVING),
            ("credential_broker.v1.CredentialBroker", SERVING),
            ("no.such.Service", SERVICE_UNKNOWN),
        ):
            request = health_pb2.HealthCheckRequest(service=service)
            stream = _Stream(replica.health.Watch(request, metadata=metadata, timeout=60))
            open_streams.append(stream)
            assert await stream.next() == expected, service
        assert _stderr(replica) == ""

    async def test_client_side_health_checking(self, replica: Replica) -> None:
        """A channel with ``healthCheckConfig`` (gRPC's Watch-based checking) reaches the broker."""
        service_config = {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": ""},
        }
        channel = grpc.aio.insecure_channel(
            replica.address, options=[("grpc.service_config", json.dumps(service_config))]
        )
        try:
            stub = pb_grpc.CredentialBrokerStub(channel)
            reply = await stub.GetAuthorization(
                pb.GetAuthorizationRequest(),
                metadata=CREDENTIALS["caller token"],
                timeout=10,
                wait_for_ready=True,
            )
        finally:
            await channel.close()
        assert reply.authorization.scheme == pb.SCHEME_AGENT_ASSERTION
        assert _stderr(replica) == ""
