"""Caller security end to end: tokens, mTLS, per-caller policy, rate limits, the admin service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import trustme
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.core.callers import hash_token
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.integration.helpers import call_protected, error_reason

pytestmark = pytest.mark.integration

WORKER = "worker-token-0123456789abcdef"
LIMITED = "limited-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"
NARROW = "narrow-token-0123456789abcdef"


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(
        f"""
[callers.worker]
token_sha256 = "{hash_token(WORKER)}"
bearer_fallback = false

[callers.trusted]
token_sha256 = "{hash_token(LIMITED)}"
bearer_fallback = true
bearer_only = true
rate_limit = 2
burst = 3

[callers.ops]
token_sha256 = "{hash_token(OPS)}"
admin = true
bearer_fallback = true

[callers.narrow]
token_sha256 = "{hash_token(NARROW)}"
identities = ["someone-else"]
{extra}
"""
    )
    return path


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(name="secured")
async def fixture_secured(start_broker: StartBroker, tmp_path: Path) -> RunningBroker:
    return await start_broker(env={"BROKER_CONFIG": str(config(tmp_path))})


class TestAuthentication:
    async def test_token_admits(self, secured: RunningBroker, emulator: Emulator) -> None:
        """A caller with a configured token gets an assertion that verifies."""
        response = await secured.stub.GetAuthorization(
            pb.GetAuthorizationRequest(), metadata=auth(WORKER)
        )
        assert (await call_protected(emulator.base_url, response.authorization)).status_code == 200

    @pytest.mark.parametrize("metadata", [(), auth("wrong-token"), (("authorization", "Basic x"),)])
    async def test_unauthenticated(
        self,
        secured: RunningBroker,
        metadata: tuple[tuple[str, str], ...],
        log_output: list[dict[str, object]],
    ) -> None:
        """No token, an unknown token or another scheme is UNAUTHENTICATED and logged."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await secured.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(caught.value) == "UNAUTHENTICATED"
        denied = [e for e in log_output if e["event"] == "caller.denied"]
        assert denied[-1]["rule"] == "authentication"
        assert "wrong-token" not in str(log_output)

    async def test_health_is_open(self, secured: RunningBroker) -> None:
        """Health checks need no credential (probes carry none)."""
        reply = await health_pb2_grpc.HealthStub(secured.channel).Check(
            health_pb2.HealthCheckRequest(service="")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


class TestPolicy:
    async def test_identity_not_allowed(self, secured: RunningBroker) -> None:
        """A caller may only use the identities its policy lists."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await secured.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(NARROW))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_bearer_only_needs_the_right(self, secured: RunningBroker) -> None:
        """Bearer-only mode is PERMISSION_DENIED without the right and served with it."""
        request = pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await secured.stub.GetAuthorization(request, metadata=auth(WORKER))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        allowed = await secured.stub.GetAuthorization(request, metadata=auth(LIMITED))
        assert allowed.authorization.scheme == pb.SCHEME_BEARER

    async def test_bearer_fallback_needs_the_right(
        self, start_broker: StartBroker, tmp_path: Path
    ) -> None:
        """A due fallback is FAILED_PRECONDITION for a caller that may not receive the token."""
        broker = await start_broker(
            env={"BROKER_CONFIG": str(config(tmp_path)), "BROKER_USE_AGENT_IDENTITY": "false"}
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(WORKER))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "BEARER_NOT_ALLOWED"
        assert "dev-access-token" not in (caught.value.details() or "")
        allowed = await broker.stub.GetAuthorization(
            pb.GetAuthorizationRequest(), metadata=auth(OPS)
        )
        assert allowed.authorization.fallback_reason == pb.FALLBACK_REASON_DISABLED

    async def test_rate_limit(self, secured: RunningBroker) -> None:
        """Past its burst a caller gets RESOURCE_EXHAUSTED with a RetryInfo delay."""
        results = await asyncio.gather(
            *(
                secured.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(LIMITED))
                for _ in range(6)
            ),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(refused) >= 3
        error = refused[0]
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(error)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
        assert retry.retry_delay.ToNanoseconds() > 0


class TestWarmPath:
    """A warm header is answered without a task switch into the handler (the interceptor's warm
    path, with the caller recognised while grpc looks the method up): every rule still holds."""

    async def test_warm_header_still_refused_to_a_narrow_caller(
        self, secured: RunningBroker, log_output: list[dict[str, object]]
    ) -> None:
        """Once a worker has warmed the default identity's header, a caller that may not use that
        identity is still refused, each call counted and logged once, with its RPC's fields."""
        await secured.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(WORKER))
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await secured.stub.GetAuthorization(
                    pb.GetAuthorizationRequest(), metadata=auth(NARROW)
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        denied = [e for e in log_output if e["event"] == "caller.denied"]
        assert [(e["caller"], e["rule"]) for e in denied] == [("narrow", "identity")] * 3
        assert all(e["rpc_method"].endswith("/GetAuthorization") for e in denied)  # type: ignore[union-attr]
        assert len({e["request_id"] for e in denied}) == 3
        admin = apb_grpc.CredentialBrokerAdminStub(secured.channel)
        usage = await admin.GetUsage(apb.GetUsageRequest(), metadata=auth(OPS))
        narrow = next(u for u in usage.callers if u.caller == "narrow")
        assert narrow.denied == 3
        assert narrow.rpcs_by_code["PERMISSION_DENIED"] == 3

    async def test_callers_on_one_channel_are_told_apart(self, secured: RunningBroker) -> None:
        """Callers alternating on one connection are each admitted as themselves, call by call:
        each is counted under its own name, and an unknown token is refused every time."""
        admin = apb_grpc.CredentialBrokerAdminStub(secured.channel)
        request = pb.GetAuthorizationRequest()
        for _ in range(5):
            await secured.stub.GetAuthorization(request, metadata=auth(WORKER))
            await secured.stub.GetAuthorization(request, metadata=auth(OPS))
            await secured.stub.GetAuthorization(request, metadata=auth(OPS))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await secured.stub.GetAuthorization(request, metadata=auth("not-" + WORKER))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin.GetUsage(apb.GetUsageRequest(), metadata=auth(WORKER))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        usage = await admin.GetUsage(apb.GetUsageRequest(), metadata=auth(OPS))
        by_caller = {u.caller: u for u in usage.callers}
        assert by_caller["worker"].rpcs_by_method["GetAuthorization"] == 5
        assert by_caller["ops"].rpcs_by_method["GetAuthorization"] == 10
        assert by_caller["worker"].denied == 5
        assert by_caller["unknown"].denied == 5

    async def test_rate_limit_holds_on_warm_calls(self, secured: RunningBroker) -> None:
        """A rate-limited caller spends its bucket on warm calls too."""
        request = pb.GetAuthorizationRequest()
        await secured.stub.GetAuthorization(request, metadata=auth(WORKER))  # the header is warm
        codes = []
        for _ in range(6):
            try:
                await secured.stub.GetAuthorization(request, metadata=auth(LIMITED))
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        assert codes[:3] == [grpc.StatusCode.OK] * 3
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[3:]


class TestAdmin:
    async def test_admin_needs_the_right(self, secured: RunningBroker) -> None:
        """A worker cannot use the admin service."""
        admin = apb_grpc.CredentialBrokerAdminStub(secured.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.ListIdentities(apb.ListIdentitiesRequest(), metadata=auth(WORKER))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_list_revoke_flush_usage(
        self, secured: RunningBroker, emulator: Emulator
    ) -> None:
        """Operators list identities, revoke a task, flush caches and read per-caller usage."""
        admin = apb_grpc.CredentialBrokerAdminStub(secured.channel)
        first = await secured.stub.GetAuthorization(
            pb.GetAuthorizationRequest(), metadata=auth(WORKER)
        )
        listed = await admin.ListIdentities(apb.ListIdentitiesRequest(), metadata=auth(OPS))
        state = listed.identities[0]
        assert state.identity.agent_runtime_id == first.authorization.agent_runtime_id
        assert state.cached_headers == 1
        revoked = await admin.RevokeTask(apb.RevokeTaskRequest(), metadata=auth(OPS))
        assert revoked.task_id == first.authorization.task_id
        second = await secured.stub.GetAuthorization(
            pb.GetAuthorizationRequest(), metadata=auth(WORKER)
        )
        assert second.authorization.task_id != first.authorization.task_id
        flushed = await admin.FlushCaches(apb.FlushCachesRequest(), metadata=auth(OPS))
        assert list(flushed.identities) == ["default"]
        after = await admin.ListIdentities(apb.ListIdentitiesRequest(), metadata=auth(OPS))
        assert after.identities[0].cached_headers == 0
        usage = await admin.GetUsage(apb.GetUsageRequest(), metadata=auth(OPS))
        worker = next(u for u in usage.callers if u.caller == "worker")
        assert worker.rpcs_by_code["OK"] == 2
        assert worker.rpcs_by_method["GetAuthorization"] == 2

    async def test_rotate(self, secured: RunningBroker, emulator: Emulator) -> None:
        """Rotation registers a new key; old headers are reported and answered with new ones."""
        admin = apb_grpc.CredentialBrokerAdminStub(secured.channel)
        old = (
            await secured.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(WORKER))
        ).authorization
        rotated = await admin.RotateIdentity(apb.RotateIdentityRequest(), metadata=auth(OPS))
        assert rotated.previous_agent_runtime_id == old.agent_runtime_id
        assert rotated.identity.agent_runtime_id != old.agent_runtime_id
        new = (
            await secured.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(WORKER))
        ).authorization
        assert new.agent_runtime_id == rotated.identity.agent_runtime_id
        assert (await call_protected(emulator.base_url, new)).status_code == 200
        report = await secured.stub.ReportRejection(
            pb.ReportRejectionRequest(header_value=old.header_value, http_status=401),
            metadata=auth(WORKER),
        )
        assert report.authorization.agent_runtime_id == new.agent_runtime_id
        assert emulator.stats().identity_registrations == 2


class TestMutualTls:
    async def test_client_certificate_names_the_caller(
        self, start_broker: StartBroker, tmp_path: Path, emulator: Emulator
    ) -> None:
        """A client certificate whose SAN a caller lists is admitted; no certificate, no TLS."""
        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        client = ca.issue_cert("worker-a.example")
        files = {
            "cert": tmp_path / "server.pem",
            "key": tmp_path / "server.key",
            "ca": tmp_path / "ca.pem",
        }
        server.cert_chain_pems[0].write_to_path(str(files["cert"]))
        server.private_key_pem.write_to_path(str(files["key"]))
        ca.cert_pem.write_to_path(str(files["ca"]))
        toml = tmp_path / "mtls.toml"
        toml.write_text('[callers.worker-a]\ncert_names = ["worker-a.example"]\n')
        broker = await start_broker(
            env={
                "BROKER_CONFIG": str(toml),
                "BROKER_TLS_CERT_FILE": str(files["cert"]),
                "BROKER_TLS_KEY_FILE": str(files["key"]),
                "BROKER_TLS_CLIENT_CA_FILE": str(files["ca"]),
            }
        )
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.cert_pem.bytes(),
            private_key=client.private_key_pem.bytes(),
            certificate_chain=client.cert_chain_pems[0].bytes(),
        )
        options = (("grpc.ssl_target_name_override", "localhost"),)
        async with grpc.aio.secure_channel(broker.app.address, credentials, options) as channel:
            response = await pb_grpc.CredentialBrokerStub(channel).GetAuthorization(
                pb.GetAuthorizationRequest(), timeout=10
            )
        assert response.authorization.scheme == pb.SCHEME_AGENT_ASSERTION
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(broker.app.address, anonymous, options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.CredentialBrokerStub(channel).GetAuthorization(
                    pb.GetAuthorizationRequest(), timeout=5
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
