"""Today's protocol shape: the authapi profile and the JWT and import sources, end to end."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.protocol.keys import AgentKey
from broker.errors import ConfigError
from cb_emulator import Emulator
from tests.fixtures.broker import StartBroker
from tests.integration.helpers import call_protected, error_reason

pytestmark = pytest.mark.integration


def authapi_env(emulator: Emulator, **extra: str) -> dict[str, str]:
    return {"BROKER_PROTOCOL": "authapi", "BROKER_AUTHAPI_URL": emulator.authapi_url, **extra}


async def get(broker: object, **fields: object) -> pb.Authorization:
    stub = broker.stub  # type: ignore[attr-defined]
    return (await stub.GetAuthorization(pb.GetAuthorizationRequest(**fields))).authorization


class TestAuthapiRegister:
    async def test_run_task_assertion(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """Registration at the AuthAPI with Bearer and a signature-only run task verify (§4.3, §5)."""
        broker = await start_broker(env=authapi_env(emulator))
        auth = await get(broker)
        assert auth.scheme == pb.SCHEME_AGENT_ASSERTION
        assert (await call_protected(emulator.base_url, auth)).status_code == 200
        stats = emulator.stats()
        assert (stats.identity_registrations, stats.task_registrations) == (1, 1)
        assert stats.task_registrations_with_credential == 0
        assert stats.requests_by_endpoint.get("authapi_register_identity") == 1
        assert stats.biscuits_minted == 0

    async def test_no_host_rule(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """The supported-host rule belongs to the older shape; authapi issues assertions anyway."""
        broker = await start_broker(supported_hosts="", env=authapi_env(emulator))
        assert (await get(broker)).scheme == pb.SCHEME_AGENT_ASSERTION

    async def test_bootstrap_unavailable_then_cooldown(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        redis_url: str,
        identity_name: str,
    ) -> None:
        """Retryable bootstrap failures give Bearer and a cooldown that every replica honours."""
        emulator.inject_fault("authapi_register_identity", status=503, count=3)
        env = authapi_env(emulator, BROKER_BOOTSTRAP_COOLDOWN="600")
        first = await start_broker(redis_url=redis_url, identity=identity_name, env=env)
        auth = await get(first)
        assert auth.scheme == pb.SCHEME_BEARER
        assert auth.fallback_reason == pb.FALLBACK_REASON_BOOTSTRAP_UNAVAILABLE
        reached = emulator.stats().requests_by_endpoint["authapi_register_identity"]
        assert reached == 3
        second = await start_broker(redis_url=redis_url, identity=identity_name, env=env)
        for broker in (first, second):
            again = await get(broker)
            assert again.fallback_reason == pb.FALLBACK_REASON_BOOTSTRAP_UNAVAILABLE
        assert emulator.stats().requests_by_endpoint["authapi_register_identity"] == reached

    async def test_bootstrap_refused_is_an_error(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A 403 at bootstrap is a precise FAILED_PRECONDITION, not masked by Bearer (§8.5)."""
        emulator.inject_fault("authapi_register_identity", status=403, count=1)
        broker = await start_broker(env=authapi_env(emulator))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(broker)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "BOOTSTRAP_REFUSED"
        assert emulator.stats().requests_by_endpoint["authapi_register_identity"] == 1

    async def test_replicas_share_one_run_task(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        redis_url: str,
        identity_name: str,
    ) -> None:
        """Three replicas on one Redis register one identity and one run task between them."""
        env = authapi_env(emulator)
        brokers = [
            await start_broker(redis_url=redis_url, identity=identity_name, env=env)
            for _ in range(3)
        ]
        results = await asyncio.gather(*(get(brokers[i % 3]) for i in range(60)))
        assert len({r.task_id for r in results}) == 1
        assert len({r.agent_runtime_id for r in results}) == 1
        stats = emulator.stats()
        assert (stats.identity_registrations, stats.task_registrations) == (1, 1)


class TestJwtSource:
    async def start(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path, token: str
    ) -> object:
        jwt_file = tmp_path / "agent.jwt"
        jwt_file.write_text(token)
        return await start_broker(
            account_id=None,
            env=authapi_env(
                emulator,
                BROKER_IDENTITY_SOURCE="jwt",
                BROKER_AGENT_IDENTITY_JWT_FILE=str(jwt_file),
            ),
        )

    async def test_jwt_identity(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """A JWT identity signs for a run task without any identity registration (§10)."""
        token = emulator.mint_agent_identity_jwt("acct-j", user_id="user-j", fedramp=True)
        broker = await self.start(start_broker, emulator, tmp_path, token)
        auth = await get(broker)
        assert auth.headers["ChatGPT-Account-ID"] == "acct-j"
        assert auth.headers["X-OpenAI-Fedramp"] == "true"
        assert (await call_protected(emulator.base_url, auth)).status_code == 200
        stats = emulator.stats()
        assert (stats.identity_registrations, stats.task_registrations) == (0, 1)

    async def test_replaced_file_takes_effect(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """Replacing the JWT file switches the identity without a restart."""
        first = emulator.mint_agent_identity_jwt("acct-j", user_id="user-j")
        broker = await self.start(start_broker, emulator, tmp_path, first)
        before = await get(broker, thread_id="t1")
        (tmp_path / "agent.jwt").write_text(
            emulator.mint_agent_identity_jwt("acct-j", user_id="user-j")
        )
        for _ in range(100):
            after = await get(broker, thread_id=f"t{_ + 2}")
            if after.agent_runtime_id != before.agent_runtime_id:
                break
            await asyncio.sleep(0.05)
        assert after.agent_runtime_id != before.agent_runtime_id
        assert (await call_protected(emulator.base_url, after)).status_code == 200

    @pytest.mark.parametrize(
        ("mint", "reason"),
        [
            ({"lifetime_seconds": -3600}, "AGENT_JWT_INVALID"),
            ({"kid": "nobody"}, "AGENT_JWT_INVALID"),
            ({"sign_with_unknown_key": True}, "AGENT_JWT_INVALID"),
            ({"iss": "https://evil.example"}, "AGENT_JWT_INVALID"),
            ({"aud": "other"}, "AGENT_JWT_INVALID"),
        ],
    )
    async def test_bad_jwt(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        tmp_path: Path,
        mint: dict[str, object],
        reason: str,
    ) -> None:
        """Untrusted or expired JWTs make the identity unusable with a precise status."""
        token = emulator.mint_agent_identity_jwt("acct-j", user_id="user-j", **mint)  # type: ignore[arg-type]
        broker = await self.start(start_broker, emulator, tmp_path, token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(broker)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == reason
        assert token not in (caught.value.details() or "")

    @pytest.mark.parametrize("token", ["at-0123456789abcdef", "not.a.jwt", "garbage"])
    async def test_malformed_values(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path, token: str
    ) -> None:
        """Personal access tokens and malformed values are refused before any network call."""
        broker = await self.start(start_broker, emulator, tmp_path, token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(broker)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert emulator.stats().requests_by_endpoint.get("jwks", 0) == 0

    async def test_rotated_signing_key(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """A JWT signed with a newly rotated key is accepted: the unknown kid refetches the JWKS."""
        broker = await self.start(
            start_broker,
            emulator,
            tmp_path,
            emulator.mint_agent_identity_jwt("acct-j", user_id="user-j"),
        )
        await get(broker)
        fetched = emulator.stats().requests_by_endpoint["jwks"]
        emulator.rotate_jwks_key(retire_old=True)
        (tmp_path / "agent.jwt").write_text(
            emulator.mint_agent_identity_jwt("acct-j", user_id="user-j")
        )
        auth = None
        for attempt in range(200):  # the unknown kid refetches at most once per 5 s
            try:
                auth = await get(broker, thread_id=f"r{attempt}")
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
                continue
            if emulator.stats().requests_by_endpoint["jwks"] > fetched:
                break
            await asyncio.sleep(0.05)
        assert auth is not None
        assert emulator.stats().requests_by_endpoint["jwks"] == fetched + 1
        assert (await call_protected(emulator.base_url, auth)).status_code == 200

    async def test_jwks_down(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """A JWKS that cannot be fetched is UNAVAILABLE (retryable), not a crash."""
        token = emulator.mint_agent_identity_jwt("acct-j", user_id="user-j")
        emulator.inject_fault("jwks", status=503, count=10)
        broker = await self.start(start_broker, emulator, tmp_path, token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(broker)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_no_bearer(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """A JWT identity has no Bearer to hand out (§8.4)."""
        token = emulator.mint_agent_identity_jwt("acct-j", user_id="user-j")
        broker = await self.start(start_broker, emulator, tmp_path, token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(broker, mode=pb.MODE_BEARER_ONLY)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "NO_BEARER_TOKEN"


class TestImportSource:
    def record(self, tmp_path: Path, **overrides: object) -> Path:
        key = AgentKey.generate(os.urandom(64))
        data: dict[str, object] = {
            "agent_runtime_id": "agent-imported",
            "agent_private_key": key.to_pkcs8_base64(v2=False),
            "account_id": "acct-dev",
            "chatgpt_user_id": "user-dev",
        }
        data.update(overrides)
        path = tmp_path / "identity.json"
        path.write_text(json.dumps(data))
        return path

    async def test_bad_record_refused_at_start(
        self, start_broker: StartBroker, tmp_path: Path
    ) -> None:
        """A record that fails validation stops start-up naming the field."""
        path = self.record(tmp_path, agent_private_key="AAAA")
        with pytest.raises(ConfigError, match="agent_private_key"):
            await start_broker(
                env={"BROKER_IDENTITY_SOURCE": "import", "BROKER_IMPORT_FILE": str(path)}
            )

    async def test_imported_identity_signs(
        self, start_broker: StartBroker, emulator: Emulator, tmp_path: Path
    ) -> None:
        """An imported identity registers tasks under its runtime id (the emulator knows it not)."""
        path = self.record(tmp_path)
        broker = await start_broker(
            env={"BROKER_IDENTITY_SOURCE": "import", "BROKER_IMPORT_FILE": str(path)}
        )
        auth = await get(broker)
        # The emulator never registered this runtime: task registration fails (404) and the
        # background call falls back to Bearer with the precise reason.
        assert auth.fallback_reason == pb.FALLBACK_REASON_TASK_REGISTRATION_UNAVAILABLE
        assert emulator.stats().identity_registrations == 0
