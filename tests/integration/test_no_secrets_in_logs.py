"""No private key, bearer token or assertion ever appears in the log stream or an error message."""

from __future__ import annotations

import io
import json
from pathlib import Path

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

    async def test_jwt_identity(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """A JWT identity's token and embedded private key never reach the log or an error."""
        stream = io.StringIO()
        configure_logging("debug", stream)
        good = emulator.mint_agent_identity_jwt("acct-j", user_id="user-j")
        jwt_file = tmp_path / "agent.jwt"
        jwt_file.write_text(good)
        broker = await start_broker(
            account_id=None,
            env={
                "BROKER_PROTOCOL": "authapi",
                "BROKER_AUTHAPI_URL": emulator.authapi_url,
                "BROKER_IDENTITY_SOURCE": "jwt",
                "BROKER_AGENT_IDENTITY_JWT_FILE": str(jwt_file),
            },
        )
        auth = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        record = await broker.app.authorizer.identity_manager.peek(
            broker.app.authorizer.runtime("")
        )
        assert record is not None
        expired = emulator.mint_agent_identity_jwt(
            "acct-j", user_id="user-j", lifetime_seconds=-3600
        )
        jwt_file.write_text(expired)
        errors = []
        for thread in ("a", "b", "c"):
            try:
                await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id=thread))
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.details() or "")
        await broker.close()
        text = stream.getvalue()
        for secret in (
            good,
            expired,
            good.split(".")[1],
            record.key.to_pkcs8_base64(),
            auth.header_value.split(" ", 1)[1],
        ):
            assert secret not in text
            assert all(secret not in message for message in errors)
