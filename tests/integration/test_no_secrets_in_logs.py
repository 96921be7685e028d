"""No private key, bearer token or assertion ever appears in the log stream or an error message.

Each scenario first proves that what it checks really happened: every expected error was raised
with its code, reason and a non-empty message, and the log holds the events (and the failed RPCs)
of the scenario. Only then does it look for secrets, so the check cannot pass on an empty log or
on errors that never occurred.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.events import Event
from broker.logs import configure_logging
from cb_emulator import Emulator
from tests.conftest import ManualClock
from tests.fixtures.broker import DEV_TOKEN, StartBroker
from tests.integration.helpers import error_reason

pytestmark = pytest.mark.integration

GET_AUTHORIZATION = "/credential_broker.v1.CredentialBroker/GetAuthorization"
REPORT_REJECTION = "/credential_broker.v1.CredentialBroker/ReportRejection"


class CallError:
    """A call that failed: its code, ErrorInfo reason and message, as the caller saw them."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self.code = error.code().name
        self.reason = error_reason(error)
        self.details = error.details() or ""


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a stream."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def failed_rpcs(lines: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """``rpc.completed`` lines that were not OK, counted by (method, code)."""
    return Counter(
        (line["rpc_method"], line["grpc_code"])
        for line in lines
        if line["event"] == Event.RPC_COMPLETED and line["grpc_code"] != "OK"
    )


def jwt_parts(token: str) -> list[str]:
    """A JWT's payload and signature: secret on their own too (the header is not)."""
    return token.split(".")[1:]


def assert_absent(secrets: set[str], text: str, errors: list[CallError]) -> None:
    """No secret is in the log text or in any error message."""
    assert secrets, "nothing to look for"
    assert all(len(secret) >= 8 for secret in secrets), "too short to be a meaningful search"
    for secret in secrets:
        assert secret not in text
        for error in errors:
            assert secret not in error.details


class TestNoSecrets:
    async def test_whole_scenario(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """Registration, issuance, Bearer, rejection and errors at debug level leak nothing."""
        stream = io.StringIO()
        configure_logging("debug", stream)
        broker = await start_broker()
        stub = broker.stub

        background = (await stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        thread = (
            await stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))
        ).authorization
        bearer = (
            await stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY))
        ).authorization
        emulator.revoke_task(background.task_id)
        replaced = (
            await stub.ReportRejection(
                pb.ReportRejectionRequest(header_value=background.header_value, http_status=401)
            )
        ).authorization
        # The secrets were really handed out: two assertions, the Bearer token, a replacement.
        assert {background.scheme, thread.scheme, replaced.scheme} == {pb.SCHEME_AGENT_ASSERTION}
        assert bearer.header_value == f"Bearer {DEV_TOKEN}"
        assert replaced.task_id != background.task_id

        emulator.inject_fault("register_task", status=503, count=50)
        expected = [
            (
                pb.GetAuthorizationRequest(thread_id="t2"),
                ("UNAVAILABLE", "TASK_REGISTRATION_UNAVAILABLE", "'t2'"),
            ),
            (
                pb.GetAuthorizationRequest(thread_id="bad id"),
                ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "thread_id"),
            ),
            (
                pb.GetAuthorizationRequest(identity="nobody"),
                ("NOT_FOUND", "UNKNOWN_IDENTITY", "'nobody'"),
            ),
        ]
        errors: list[CallError] = []
        for request, (code, reason, fragment) in expected:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetAuthorization(request)
            error = CallError(caught.value)
            assert (error.code, error.reason) == (code, reason)
            assert fragment in error.details
            errors.append(error)
        bad_report = pb.ReportRejectionRequest(
            header_value=background.header_value[:-5] + "!!!!!", http_status=401
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportRejection(bad_report)
        error = CallError(caught.value)
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        assert "header_value" in error.details
        errors.append(error)
        faulted = emulator.stats().faults_applied
        assert faulted >= 1  # the control plane really failed the t2 registration

        record = await broker.app.store.load_identity("default")
        assert record is not None
        await broker.close()

        text = stream.getvalue()
        lines = log_lines(text)
        events = Counter(line["event"] for line in lines)
        assert {
            Event.IDENTITY_REGISTERED,
            Event.TASK_REGISTERED,
            Event.TASK_REJECTED,
            Event.CONTROLPLANE_REQUEST,
            Event.RPC_COMPLETED,
            Event.AUTHORIZATION_FAILED,
        } <= set(events)
        assert set(events) <= {e.value for e in Event}, "every line uses a catalogued event name"
        assert events[Event.TASK_REGISTERED] == 3  # background, t1, the replacement
        rejected = [line for line in lines if line["event"] == Event.TASK_REJECTED]
        assert [line["task_id"] for line in rejected] == [background.task_id]
        failed = [line for line in lines if line["event"] == Event.AUTHORIZATION_FAILED]
        assert [(line["thread_id"], line["reason"]) for line in failed] == [
            ("t2", "CONTROL_PLANE_UNAVAILABLE")
        ]
        refused = [
            line
            for line in lines
            if line["event"] == Event.CONTROLPLANE_REQUEST and line.get("status") == 503
        ]
        assert len(refused) == faulted
        # Each error the caller saw is also a failed RPC in the log, with the same code.
        assert failed_rpcs(lines) == Counter(
            {
                (GET_AUTHORIZATION, "UNAVAILABLE"): 1,
                (GET_AUTHORIZATION, "INVALID_ARGUMENT"): 1,
                (GET_AUTHORIZATION, "NOT_FOUND"): 1,
                (REPORT_REJECTION, "INVALID_ARGUMENT"): 1,
            }
        )

        secrets = {
            DEV_TOKEN,
            record.key.to_pkcs8_base64(),
            record.key.to_pkcs8_base64(v2=False),
            record.key.seed.hex(),
        }
        for auth in (background, thread, replaced):
            secrets.add(auth.header_value)
            secrets.add(auth.header_value.split(" ", 1)[1])
        assert_absent(secrets, text, errors)

    async def test_jwt_identity(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """A JWT identity's tokens (good, expired, forged) and key never reach a log or error."""
        stream = io.StringIO()
        configure_logging("debug", stream)
        # The JWT file is looked at again at most once a second: a clock the test moves.
        clock = ManualClock(datetime.now(UTC))
        good = emulator.mint_agent_identity_jwt("acct-j", user_id="user-j")
        jwt_file = tmp_path / "agent.jwt"
        jwt_file.write_text(good)
        broker = await start_broker(
            account_id=None,
            clock=clock,
            env={
                "BROKER_PROTOCOL": "authapi",
                "BROKER_AUTHAPI_URL": emulator.authapi_url,
                "BROKER_IDENTITY_SOURCE": "jwt",
                "BROKER_AGENT_IDENTITY_JWT_FILE": str(jwt_file),
            },
        )
        auth = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert auth.scheme == pb.SCHEME_AGENT_ASSERTION
        record = await broker.app.authorizer.identity_manager.peek(
            broker.app.authorizer.runtime("")
        )
        assert record is not None
        expired = emulator.mint_agent_identity_jwt(
            "acct-j", user_id="user-j", lifetime_seconds=-3600
        )
        # Another (well-formed) signature over the same claims.
        forged = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BAAAAA")
        assert forged != good
        replacements = [
            (expired, "expired"),
            (forged, "signature does not verify"),
            ("not-a-jwt", "three non-empty dot-separated parts"),
        ]
        errors: list[CallError] = []
        for index, (text, fragment) in enumerate(replacements):
            jwt_file.write_text(text)
            clock.advance(2)
            request = pb.GetAuthorizationRequest(thread_id=f"thread-{index}")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await broker.stub.GetAuthorization(request)
            error = CallError(caught.value)
            assert (error.code, error.reason) == ("FAILED_PRECONDITION", "AGENT_JWT_INVALID")
            assert fragment in error.details
            errors.append(error)
        await broker.close()

        text = stream.getvalue()
        lines = log_lines(text)
        loaded = [line for line in lines if line["event"] == Event.IDENTITY_LOADED]
        assert loaded
        assert all(line["source"] == "jwt" for line in loaded)
        assert failed_rpcs(lines) == Counter({(GET_AUTHORIZATION, "FAILED_PRECONDITION"): 3})

        secrets = {
            good,
            expired,
            forged,
            *jwt_parts(good),
            *jwt_parts(expired),
            record.key.to_pkcs8_base64(),
            auth.header_value.split(" ", 1)[1],
        }
        assert_absent(secrets, text, errors)
