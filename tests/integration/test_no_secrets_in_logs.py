"""No private key, bearer token or assertion ever appears in the log stream or an error message."""

from __future__ import annotations

import io
import json

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.emulator import Emulator
from broker.events import Event
from broker.logs import configure_logging
from tests.fixtures.broker import DEV_TOKEN, StartBroker

pytestmark = pytest.mark.integration


class TestNoSecrets:
    async def test_whole_scenario(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """Registration, issuance, fallback, rejection and errors at debug level leak nothing."""
        stream = io.StringIO()
        configure_logging("debug", stream)
        broker = await start_broker()
        stub = broker.stub
        secrets: set[str] = {DEV_TOKEN}
        errors: list[str] = []

        background = (await stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        thread = (
            await stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))
        ).authorization
        await stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY))
        emulator.revoke_task(background.task_id)
        replaced = await stub.ReportRejection(
            pb.ReportRejectionRequest(header_value=background.header_value, http_status=401)
        )
        emulator.inject_fault("register_task", status=503, count=50)
        for request in (
            pb.GetAuthorizationRequest(thread_id="t2"),
            pb.GetAuthorizationRequest(thread_id="bad id"),
            pb.GetAuthorizationRequest(identity="nobody"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetAuthorization(request)
            errors.append(caught.value.details() or "")
        bad_report = pb.ReportRejectionRequest(
            header_value=background.header_value[:-5] + "!!!!!", http_status=401
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportRejection(bad_report)
        errors.append(caught.value.details() or "")

        record = await broker.app.store.load_identity("default")
        assert record is not None
        secrets |= {
            record.key.to_pkcs8_base64(),
            record.key.to_pkcs8_base64(v2=False),
            record.key.seed.hex(),
        }
        for auth in (background, thread, replaced.authorization):
            secrets.add(auth.header_value)
            secrets.add(auth.header_value.split(" ", 1)[1])
        await broker.close()

        text = stream.getvalue()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        events = {line["event"] for line in lines}
        assert {
            Event.IDENTITY_REGISTERED,
            Event.TASK_REGISTERED,
            Event.TASK_REJECTED,
            Event.CONTROLPLANE_REQUEST,
            Event.RPC_COMPLETED,
            Event.AUTHORIZATION_FAILED,
        } <= events
        assert events <= {e.value for e in Event}, "every line uses a catalogued event name"
        for secret in secrets:
            assert secret not in text
            for message in errors:
                assert secret not in message
