"""Fail closed: a call that reaches the servicers with no caller admitted is refused, not trusted.

The caller interceptor admits every worker-facing call (``local`` stands for the caller of an open,
loopback-only broker). These tests wire the real servicers into a bare grpc.aio server on loopback
without that interceptor, the mistake the rule guards against, and check nobody is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.transport.grpc.admin import AdminServicer
from broker.transport.grpc.servicer import BrokerServicer
from tests.fixtures.broker import StartBroker
from tests.integration.helpers import error_reason

pytestmark = pytest.mark.integration


@pytest.fixture(name="bare_channel")
async def fixture_bare_channel(start_broker: StartBroker) -> AsyncIterator[grpc.aio.Channel]:
    broker = await start_broker()
    server = grpc.aio.server()
    pb_grpc.add_CredentialBrokerServicer_to_server(
        BrokerServicer(broker.app.authorizer, broker.app.gate), server
    )
    apb_grpc.add_CredentialBrokerAdminServicer_to_server(
        AdminServicer(broker.app.admin, broker.app.gate), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    await channel.close()
    await server.stop(grace=None)


async def test_worker_methods_refuse_a_call_with_no_caller(
    bare_channel: grpc.aio.Channel,
) -> None:
    stub = pb_grpc.CredentialBrokerStub(bare_channel)
    calls = [
        stub.GetAuthorization(pb.GetAuthorizationRequest()),
        stub.EnsureTask(pb.EnsureTaskRequest(thread_id="t")),
        stub.GetIdentity(pb.GetIdentityRequest()),
        stub.ReportRejection(pb.ReportRejectionRequest(header_value="Bearer x", http_status=401)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(refused.value) == "UNAUTHENTICATED"
    watch = stub.WatchAuthorization(pb.WatchAuthorizationRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await anext(aiter(watch))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_admin_methods_refuse_a_call_with_no_caller(
    bare_channel: grpc.aio.Channel,
) -> None:
    admin = apb_grpc.CredentialBrokerAdminStub(bare_channel)
    for call in (
        admin.ListIdentities(apb.ListIdentitiesRequest()),
        admin.FlushCaches(apb.FlushCachesRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
