"""The worker API end to end: real gRPC on loopback, the real emulator, real crypto (issue: service)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.protocol.assertion import parse_assertion, verify_assertion
from broker.core.protocol.keys import parse_ssh_public_key
from cb_emulator import Emulator
from tests.fixtures.broker import StartBroker
from tests.integration.helpers import call_protected, error_reason

pytestmark = pytest.mark.integration


@pytest.fixture(name="store_url", params=["embedded", "redis"])
def fixture_store_url(request: pytest.FixtureRequest) -> str | None:
    """Each test of this module runs on the embedded store and on a real Redis."""
    if request.param == "embedded":
        return None
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(name="identity")
def fixture_identity(request: pytest.FixtureRequest, store_url: str | None) -> str:
    return "default" if store_url is None else str(request.getfixturevalue("identity_name"))


class TestGetAuthorization:
    async def test_background_assertion_verifies(
        self, start_broker: StartBroker, emulator: Emulator, store_url: str | None, identity: str
    ) -> None:
        """A cold broker registers once and returns an assertion the control plane accepts."""
        broker = await start_broker(redis_url=store_url, identity=identity)
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        auth = response.authorization
        assert auth.scheme == pb.SCHEME_AGENT_ASSERTION
        assert auth.task_kind == pb.TASK_KIND_BACKGROUND
        assert auth.fallback_reason == pb.FALLBACK_REASON_UNSPECIFIED
        assert auth.identity == identity
        assert auth.headers["ChatGPT-Account-ID"] == "acct-dev"
        assert auth.expires_at.ToDatetime() - auth.issued_at.ToDatetime() == timedelta(seconds=60)
        envelope = parse_assertion(auth.header_value)
        assert (envelope.agent_runtime_id, envelope.task_id) == (
            auth.agent_runtime_id,
            auth.task_id,
        )
        assert (await call_protected(emulator.base_url, auth)).status_code == 200
        stats = emulator.stats()
        assert (stats.identity_registrations, stats.task_registrations) == (1, 1)

    async def test_concurrent_cold_calls_register_once(
        self, start_broker: StartBroker, emulator: Emulator, store_url: str | None, identity: str
    ) -> None:
        """Fifty concurrent cold calls cause one identity and one task registration."""
        broker = await start_broker(redis_url=store_url, identity=identity)
        responses = await asyncio.gather(
            *(broker.stub.GetAuthorization(pb.GetAuthorizationRequest()) for _ in range(50))
        )
        assert len({r.authorization.header_value for r in responses}) == 1
        stats = emulator.stats()
        assert (stats.identity_registrations, stats.task_registrations) == (1, 1)

    async def test_warm_calls_reuse_the_assertion(
        self, start_broker: StartBroker, emulator: Emulator, store_url: str | None, identity: str
    ) -> None:
        """Within its window the same assertion is served again without new signatures."""
        broker = await start_broker(redis_url=store_url, identity=identity)
        first = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        second = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert first.authorization.header_value == second.authorization.header_value
        assert broker.app.authorizer.counters.assertion_minted == 1
        assert broker.app.authorizer.counters.l1_hit >= 1

    async def test_thread_tasks_are_separate(
        self, start_broker: StartBroker, emulator: Emulator, store_url: str | None, identity: str
    ) -> None:
        """Each thread gets its own task, registered once, and its assertions verify."""
        broker = await start_broker(redis_url=store_url, identity=identity)
        a1, a2, b = await asyncio.gather(
            broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="thread-a")),
            broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="thread-a")),
            broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="thread-b")),
        )
        assert a1.authorization.task_id == a2.authorization.task_id != b.authorization.task_id
        assert a1.authorization.task_kind == pb.TASK_KIND_THREAD
        assert a1.authorization.thread_id == "thread-a"
        for response in (a1, b):
            assert (
                await call_protected(emulator.base_url, response.authorization)
            ).status_code == 200
        assert emulator.stats().task_registrations == 2

    async def test_bearer_only(
        self, start_broker: StartBroker, emulator: Emulator, store_url: str | None, identity: str
    ) -> None:
        """Bearer-only mode returns the account's token and registers nothing."""
        broker = await start_broker(redis_url=store_url, identity=identity)
        response = await broker.stub.GetAuthorization(
            pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)
        )
        auth = response.authorization
        assert auth.scheme == pb.SCHEME_BEARER
        assert auth.header_value == "Bearer dev-access-token"
        assert auth.fallback_reason == pb.FALLBACK_REASON_REQUESTED
        assert auth.headers["ChatGPT-Account-ID"] == "acct-dev"
        assert emulator.stats().identity_registrations == 0

    async def test_min_remaining(
        self, start_broker: StartBroker, store_url: str | None, identity: str
    ) -> None:
        """A header returned with min_remaining stays valid at least that long."""
        broker = await start_broker(redis_url=store_url, identity=identity)
        response = await broker.stub.GetAuthorization(
            pb.GetAuthorizationRequest(min_remaining=Duration(seconds=25))
        )
        auth = response.authorization
        remaining = auth.expires_at.ToDatetime() - auth.issued_at.ToDatetime()
        assert remaining >= timedelta(seconds=25)


class TestFallbacks:
    async def test_disabled(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """With agent identity off the broker returns Bearer with reason DISABLED."""
        broker = await start_broker(env={"BROKER_USE_AGENT_IDENTITY": "false"})
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert response.authorization.scheme == pb.SCHEME_BEARER
        assert response.authorization.fallback_reason == pb.FALLBACK_REASON_DISABLED
        assert emulator.stats().identity_registrations == 0

    async def test_unsupported_host(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """A control plane outside the supported hosts gets Bearer for background calls (§3.2)."""
        broker = await start_broker(supported_hosts="")
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert response.authorization.fallback_reason == pb.FALLBACK_REASON_UNSUPPORTED_HOST
        assert emulator.stats().identity_registrations == 0

    async def test_thread_has_no_host_check(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """Thread calls get assertions even on an unlisted host (§3.2)."""
        broker = await start_broker(supported_hosts="")
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))
        assert response.authorization.scheme == pb.SCHEME_AGENT_ASSERTION

    async def test_identity_unavailable_without_binding(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """Without an account binding the broker returns Bearer, IDENTITY_UNAVAILABLE (§9.1)."""
        broker = await start_broker(account_id=None)
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert response.authorization.fallback_reason == pb.FALLBACK_REASON_IDENTITY_UNAVAILABLE
        assert "ChatGPT-Account-ID" not in response.authorization.headers

    async def test_identity_registration_refused(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A refused identity registration falls back to Bearer, IDENTITY_UNAVAILABLE."""
        emulator.inject_fault("register_identity", status=403, count=1)
        broker = await start_broker()
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert response.authorization.fallback_reason == pb.FALLBACK_REASON_IDENTITY_UNAVAILABLE
        # nothing negative is cached: the next call registers
        again = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert again.authorization.scheme == pb.SCHEME_AGENT_ASSERTION

    async def test_task_registration_unavailable(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A control plane failing task registration gives Bearer, TASK_REGISTRATION_UNAVAILABLE."""
        emulator.inject_fault("register_task", status=503, count=20)
        broker = await start_broker()
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert response.authorization.scheme == pb.SCHEME_BEARER
        assert (
            response.authorization.fallback_reason
            == pb.FALLBACK_REASON_TASK_REGISTRATION_UNAVAILABLE
        )

    async def test_thread_task_unavailable_is_an_error(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A thread whose task cannot be registered gets UNAVAILABLE, never Bearer (§8.3)."""
        emulator.inject_fault("register_task", status=503, count=20)
        broker = await start_broker()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "TASK_REGISTRATION_UNAVAILABLE"

    async def test_no_bearer_token(self, start_broker: StartBroker) -> None:
        """A Bearer that is due but missing is FAILED_PRECONDITION, not an empty header."""
        broker = await start_broker(token=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "NO_BEARER_TOKEN"


class TestBadInput:
    @pytest.mark.parametrize(
        ("request_", "field"),
        [
            (pb.GetAuthorizationRequest(thread_id="x" * 257), "thread_id"),
            (pb.GetAuthorizationRequest(thread_id="a b"), "thread_id"),
            (pb.GetAuthorizationRequest(thread_id="a\x00b"), "thread_id"),
            (pb.GetAuthorizationRequest(thread_id="tête"), "thread_id"),
            (pb.GetAuthorizationRequest(identity="no/such"), "identity"),
            (pb.GetAuthorizationRequest(identity="x" * 65), "identity"),
            (pb.GetAuthorizationRequest(mode=7), "mode"),  # type: ignore[arg-type]
            (pb.GetAuthorizationRequest(min_remaining=Duration(seconds=31)), "min_remaining"),
            (pb.GetAuthorizationRequest(min_remaining=Duration(seconds=-1)), "min_remaining"),
        ],
    )
    async def test_invalid_argument(
        self, start_broker: StartBroker, request_: pb.GetAuthorizationRequest, field: str
    ) -> None:
        """Malformed fields are INVALID_ARGUMENT naming the field, with an ErrorInfo."""
        broker = await start_broker()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(request_)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or "")
        assert error_reason(caught.value) == "INVALID_ARGUMENT"

    async def test_unknown_identity(self, start_broker: StartBroker) -> None:
        """An identity that is not configured is NOT_FOUND."""
        broker = await start_broker()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(identity="other"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(caught.value) == "UNKNOWN_IDENTITY"

    async def test_oversized_message(self, start_broker: StartBroker) -> None:
        """A request beyond the receive limit is refused by the transport."""
        broker = await start_broker()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="x" * 100_000))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class TestOtherRpcs:
    async def test_ensure_task(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """EnsureTask prewarms a thread task that GetAuthorization then uses without registering."""
        broker = await start_broker()
        ensured = await broker.stub.EnsureTask(pb.EnsureTaskRequest(thread_id="t-9"))
        assert ensured.task.task_kind == pb.TASK_KIND_THREAD
        assert ensured.task.thread_id == "t-9"
        again = await broker.stub.EnsureTask(pb.EnsureTaskRequest(thread_id="t-9"))
        assert again.task.task_id == ensured.task.task_id
        response = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t-9"))
        assert response.authorization.task_id == ensured.task.task_id
        assert emulator.stats().task_registrations == 1

    async def test_ensure_task_needs_thread(self, start_broker: StartBroker) -> None:
        """EnsureTask without a thread id is INVALID_ARGUMENT."""
        broker = await start_broker()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.EnsureTask(pb.EnsureTaskRequest())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_get_identity(self, start_broker: StartBroker) -> None:
        """GetIdentity reports public facts only, before and after registration."""
        broker = await start_broker()
        before = await broker.stub.GetIdentity(pb.GetIdentityRequest())
        assert not before.identity.registered
        auth = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        after = (await broker.stub.GetIdentity(pb.GetIdentityRequest())).identity
        assert after.registered
        assert after.has_background_task
        assert after.agent_runtime_id == auth.agent_runtime_id
        assert after.profile == "chatgpt-backend"
        verify_assertion(
            parse_assertion(auth.header_value), parse_ssh_public_key(after.public_key_ssh)
        )
        assert "PRIVATE" not in str(after)
        assert "MFEC" not in str(after)

    async def test_report_rejection_replaces_once(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """Concurrent reports of a revoked task register exactly one replacement that verifies."""
        broker = await start_broker()
        auth = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        emulator.revoke_task(auth.task_id)
        assert (await call_protected(emulator.base_url, auth)).status_code == 401
        report = pb.ReportRejectionRequest(header_value=auth.header_value, http_status=401)
        outcomes = await asyncio.gather(*(broker.stub.ReportRejection(report) for _ in range(20)))
        new_ids = {o.authorization.task_id for o in outcomes}
        assert len(new_ids) == 1
        assert auth.task_id not in new_ids
        assert sum(o.replaced for o in outcomes) == 1
        assert emulator.stats().task_registrations == 2
        assert (
            await call_protected(emulator.base_url, outcomes[0].authorization)
        ).status_code == 200
        late = await broker.stub.ReportRejection(report)
        assert not late.replaced
        assert late.authorization.task_id in new_ids
        assert emulator.stats().task_registrations == 2

    async def test_report_rejection_validates(self, start_broker: StartBroker) -> None:
        """Reports with another status or a garbage header are INVALID_ARGUMENT."""
        broker = await start_broker()
        for request in (
            pb.ReportRejectionRequest(header_value="AgentAssertion abc", http_status=500),
            pb.ReportRejectionRequest(header_value="AgentAssertion %%%", http_status=401),
            pb.ReportRejectionRequest(header_value="Basic x", http_status=401),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await broker.stub.ReportRejection(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_watch_pushes_replacement(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A watcher gets the current header at once and the replacement after a rejection."""
        broker = await start_broker()
        updates: asyncio.Queue[pb.Authorization] = asyncio.Queue()

        async def pump() -> None:
            async for update in broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest()):
                await updates.put(update.authorization)

        task = asyncio.create_task(pump())
        try:
            first = await asyncio.wait_for(updates.get(), timeout=10)
            assert first.scheme == pb.SCHEME_AGENT_ASSERTION
            emulator.revoke_task(first.task_id)
            await broker.stub.ReportRejection(
                pb.ReportRejectionRequest(header_value=first.header_value, http_status=401)
            )
            second = await asyncio.wait_for(updates.get(), timeout=10)
            assert second.task_id != first.task_id
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def test_watch_refreshes_before_expiry(self, start_broker: StartBroker) -> None:
        """With a short TTL a watcher receives a newer assertion before the old one expires."""
        broker = await start_broker(
            env={"BROKER_ASSERTION_TTL": "3", "BROKER_REFRESH_MARGIN": "1.5"}
        )
        call = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest())
        first = (await asyncio.wait_for(call.read(), timeout=10)).authorization
        second = (await asyncio.wait_for(call.read(), timeout=10)).authorization
        call.cancel()
        assert second.issued_at.ToDatetime() > first.issued_at.ToDatetime()
        assert second.task_id == first.task_id

    async def test_health_and_reflection(self, start_broker: StartBroker) -> None:
        """Health reports the broker and its store; reflection lists the service."""
        broker = await start_broker()
        health = health_pb2_grpc.HealthStub(broker.channel)
        for service in ("", "credential_broker.v1.CredentialBroker", "credential-broker.store"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(broker.channel)
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert "credential_broker.v1.CredentialBroker" in names


class TestPersistence:
    async def test_restart_reuses_identity_and_task(
        self, start_broker: StartBroker, emulator: Emulator, redis_url: str, identity_name: str
    ) -> None:
        """A restarted broker on the same Redis reuses the identity and background task."""
        first = await start_broker(redis_url=redis_url, identity=identity_name)
        before = (await first.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        await first.close()
        second = await start_broker(redis_url=redis_url, identity=identity_name)
        after = (await second.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert (after.agent_runtime_id, after.task_id) == (
            before.agent_runtime_id,
            before.task_id,
        )
        stats = emulator.stats()
        assert (stats.identity_registrations, stats.task_registrations) == (1, 1)
        assert (await call_protected(emulator.base_url, after)).status_code == 200

    async def test_binding_change_discards_identity(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        redis_url: str,
        identity_name: str,
        log_output: list[dict[str, object]],
    ) -> None:
        """A stored identity bound to another account is discarded and re-registered (§9.3)."""
        first = await start_broker(redis_url=redis_url, identity=identity_name)
        before = (await first.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        await first.close()
        second = await start_broker(
            redis_url=redis_url, identity=identity_name, account_id="acct-other"
        )
        after = (await second.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert after.agent_runtime_id != before.agent_runtime_id
        discarded = [e for e in log_output if e["event"] == "identity.discarded"]
        assert discarded
        assert discarded[0]["reason"] == "workspace_mismatch"
