"""The account's login: imported sealed, refreshed exactly once for the whole fleet, kept sealed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.sealing import KekSealer
from broker.adapters.store import keys
from broker.catalog import problems
from broker.core.credentials.model import AccountRecord
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.integration.helpers import call_protected, error_reason

pytestmark = pytest.mark.integration

BEARER_ONLY = pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)
TOKEN_NAMES = ("access_token", "refresh_token", "id_token")
# A bound on what the scan below collects (the test Redis holds a few hundred keys).
_SCAN_LIMIT = 100_000


def login_env(emulator: Emulator, auth_file: Path, margin: float = 60) -> dict[str, str]:
    return {
        "BROKER_ACCOUNT_SOURCE": "login",
        "BROKER_ACCOUNT_FILE": str(auth_file),
        "BROKER_OAUTH_ISSUER": emulator.issuer_url,
        "BROKER_OAUTH_CLIENT_ID": emulator.oauth_client_id,
        "BROKER_ACCOUNT_REFRESH_MARGIN": str(margin),
    }


@pytest.fixture(name="auth_file")
def fixture_auth_file(emulator: Emulator, tmp_path: Path) -> Path:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(emulator.create_login("acct-dev", user_id="user-dev")))
    return path


def assert_catalogued(entries: list[dict[str, object]]) -> None:
    """Every account event written matches the event catalogue (fields, types, level)."""
    account = [e for e in entries if str(e["event"]).startswith("account.")]
    assert account
    for entry in account:
        line = {k: v for k, v in entry.items() if k != "log_level"}  # LogCapture's own key
        assert problems(line) == [], entry


async def bearer(broker: RunningBroker) -> str:
    return (await broker.stub.GetAuthorization(BEARER_ONLY)).authorization.header_value


def login_tokens(record: AccountRecord) -> dict[str, str]:
    """The three tokens of a stored login, in clear (read back through the store's KEK)."""
    tokens = record.tokens
    return {
        "access_token": tokens.access_token.reveal(),
        "refresh_token": tokens.refresh_token.reveal(),
        "id_token": tokens.id_token.reveal(),
    }


async def redis_contents(redis_url: str) -> list[bytes]:
    """Every key name and every value, of every type, in every database of the Redis, raw."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        databases = [int(name.removeprefix("db")) for name in await client.info("keyspace")]
    finally:
        await client.aclose()
    contents: list[bytes] = []
    for db in databases:
        client = aioredis.Redis.from_url(redis_url, db=db, socket_timeout=5)
        try:
            async for key in client.scan_iter(count=1000):
                contents.append(key)
                assert len(contents) < _SCAN_LIMIT
                kind = (await client.type(key)).decode()
                if kind == "string":
                    contents.append(await client.get(key) or b"")
                elif kind == "hash":
                    for name, value in (await client.hgetall(key)).items():
                        contents += [name, value]
                elif kind == "list":
                    contents += await client.lrange(key, 0, -1)
                elif kind == "set":
                    contents += await client.smembers(key)
                elif kind == "zset":
                    contents += await client.zrange(key, 0, -1)
                elif kind == "stream":
                    for _, entry in await client.xrange(key):
                        for name, value in entry.items():
                            contents += [name, value]
                elif kind != "none":  # "none": the key expired between SCAN and TYPE
                    pytest.fail(f"a Redis {kind} this scan cannot read")
        finally:
            await client.aclose()
    return contents


def assert_not_in_clear(contents: list[bytes], tokens: Iterable[str]) -> None:
    """No token (nor a JWT token's payload or signature on its own) is in any key or value."""
    needles = set()
    for token in tokens:
        assert len(token) >= 16
        needles.add(token)
        needles.update(part for part in token.split(".")[1:] if len(part) >= 16)
    for needle in needles:
        found = needle.encode()
        assert not any(found in chunk for chunk in contents), "a login token is in Redis in clear"


async def assert_login_sealed(
    redis_url: str, identity: str, tokens: dict[str, str], earlier: dict[str, str]
) -> None:
    """Redis holds the login ``tokens`` (and the ``earlier`` ones) sealed only, nowhere in clear."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        sealed = await client.hget(keys.account_key(identity), "tokens")
    finally:
        await client.aclose()
    assert sealed is not None
    assert KekSealer.key_id_of(sealed) is not None, "the login's tokens are not KEK-sealed"
    contents = await redis_contents(redis_url)
    assert keys.account_key(identity).encode() in contents  # the scan saw the login
    assert_not_in_clear(contents, [*tokens.values(), *earlier.values()])


class TestImport:
    def test_cli_import_prints_facts_and_seals(
        self,
        emulator: Emulator,
        auth_file: Path,
        redis_url: str,
        identity_name: str,
        kek_file: Path,
    ) -> None:
        """`account import` prints public facts only, and Redis holds no token in clear."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env |= {
            "BROKER_REDIS_URL": redis_url,
            "BROKER_KEK_FILE": str(kek_file),
            "BROKER_IDENTITY": identity_name,
        }
        result = subprocess.run(
            [sys.executable, "-m", "broker", "account", "import", str(auth_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        facts = json.loads(result.stdout)
        assert (facts["account_id"], facts["user_id"], facts["state"]) == (
            "acct-dev",
            "user-dev",
            "active",
        )
        tokens = json.loads(auth_file.read_text())["tokens"]
        for name in TOKEN_NAMES:
            assert tokens[name] not in result.stdout + result.stderr
        imported = {name: tokens[name] for name in TOKEN_NAMES}
        asyncio.run(assert_login_sealed(redis_url, identity_name, imported, {}))

    def test_import_refuses_garbage(self, tmp_path: Path, redis_url: str, kek_file: Path) -> None:
        """A file that is not a ChatGPT login is refused naming what is wrong."""
        bad = tmp_path / "auth.json"
        bad.write_text(json.dumps({"tokens": {"access_token": "x", "refresh_token": "y"}}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env |= {"BROKER_REDIS_URL": redis_url, "BROKER_KEK_FILE": str(kek_file)}
        result = subprocess.run(
            [sys.executable, "-m", "broker", "account", "import", str(bad)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0
        assert "id_token" in result.stderr


class TestRefresh:
    async def test_login_token_is_used(
        self, start_broker: StartBroker, emulator: Emulator, auth_file: Path
    ) -> None:
        """The login's access token registers the identity and backs Bearer fallbacks."""
        tokens = json.loads(auth_file.read_text())["tokens"]  # noqa: ASYNC240  (a test's own tmp file)
        broker = await start_broker(token=None, env=login_env(emulator, auth_file))
        auth = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert (await call_protected(emulator.base_url, auth)).status_code == 200
        assert await bearer(broker) == f"Bearer {tokens['access_token']}"

    async def test_fleet_refreshes_once_crossing_expiry(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        tmp_path: Path,
        redis_url: str,
        identity_name: str,
    ) -> None:
        """Three replicas x 200 callers arriving after the expiry cause exactly one refresh."""
        login = emulator.create_login("acct-dev", user_id="user-dev", access_lifetime_seconds=4)
        auth_file = tmp_path / "short.json"
        auth_file.write_text(json.dumps(login))
        env = login_env(emulator, auth_file, margin=1)
        brokers = [
            await start_broker(redis_url=redis_url, identity=identity_name, token=None, env=env)
            for _ in range(3)
        ]
        await asyncio.sleep(4.5)  # let the access token expire: time itself is under test
        results = await asyncio.gather(
            *(brokers[i % 3].stub.GetAuthorization(BEARER_ONLY) for i in range(600))
        )
        stats = emulator.stats()
        assert stats.refreshes == 1
        assert stats.refresh_token_reuse == 0
        assert stats.families_revoked == 0
        headers = {r.authorization.header_value for r in results}
        assert headers == {await bearer(brokers[0])}
        assert f"Bearer {login['tokens']['access_token']}" not in headers

    async def test_reported_401_refreshes_once(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        auth_file: Path,
        redis_url: str,
        identity_name: str,
    ) -> None:
        """Fifty workers reporting the same Bearer 401 on three replicas cause one refresh."""
        env = login_env(emulator, auth_file)
        brokers = [
            await start_broker(redis_url=redis_url, identity=identity_name, token=None, env=env)
            for _ in range(3)
        ]
        old = await bearer(brokers[0])
        emulator.expire_access_tokens("acct-dev")
        report = pb.ReportRejectionRequest(header_value=old, http_status=401)
        outcomes = await asyncio.gather(
            *(brokers[i % 3].stub.ReportRejection(report) for i in range(50))
        )
        assert emulator.stats().refreshes == 1
        assert emulator.stats().refresh_token_reuse == 0
        # Each report answers with what the slot should use now (here: an assertion).
        assert {o.authorization.scheme for o in outcomes} == {pb.SCHEME_AGENT_ASSERTION}
        fresh = {await bearer(broker) for broker in brokers}
        assert len(fresh) == 1
        assert old not in fresh

    async def test_refreshed_tokens_are_sealed(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        auth_file: Path,
        redis_url: str,
        identity_name: str,
    ) -> None:
        """After a refresh Redis holds the new access, refresh and id tokens sealed, never clear."""
        document = json.loads(auth_file.read_text())  # noqa: ASYNC240  (a test's own tmp file)
        imported = {name: document["tokens"][name] for name in TOKEN_NAMES}
        env = login_env(emulator, auth_file)
        broker = await start_broker(
            redis_url=redis_url, identity=identity_name, token=None, env=env
        )
        old = await bearer(broker)
        emulator.expire_access_tokens("acct-dev")
        await broker.stub.ReportRejection(
            pb.ReportRejectionRequest(header_value=old, http_status=401)
        )
        assert emulator.stats().refreshes == 1
        record = await broker.app.store.load_account(identity_name)
        assert record is not None
        refreshed = login_tokens(record)
        assert all(refreshed[name] != imported[name] for name in TOKEN_NAMES)  # all three are new
        assert await bearer(broker) == f"Bearer {refreshed['access_token']}"
        await assert_login_sealed(redis_url, identity_name, refreshed, imported)

    async def test_invalid_grant_requires_reauth(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        auth_file: Path,
        log_output: list[dict[str, object]],
    ) -> None:
        """invalid_grant marks the login reauth_required: precise errors and one event."""
        broker = await start_broker(token=None, env=login_env(emulator, auth_file))
        old = await bearer(broker)
        emulator.revoke_login("acct-dev")
        with pytest.raises(grpc.aio.AioRpcError) as reported:
            await broker.stub.ReportRejection(
                pb.ReportRejectionRequest(header_value=old, http_status=401)
            )
        assert reported.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bearer(broker)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "REAUTH_REQUIRED"
        assert "account import" in (caught.value.details() or "")
        events = [e for e in log_output if e["event"] == "account.reauth_required"]
        assert len(events) == 1
        assert_catalogued(log_output)
        assert emulator.stats().refreshes == 0

    async def test_lost_answer_is_never_resent(
        self,
        start_broker: StartBroker,
        emulator: Emulator,
        auth_file: Path,
        log_output: list[dict[str, object]],
    ) -> None:
        """A refresh whose answer is lost is not retried: the valid token keeps being served."""
        broker = await start_broker(token=None, env=login_env(emulator, auth_file))
        old = await bearer(broker)
        emulator.fail_after_consuming(count=1, mode="drop")
        report = pb.ReportRejectionRequest(header_value=old, http_status=401)
        await broker.stub.ReportRejection(report)
        await broker.stub.ReportRejection(report)
        assert await bearer(broker) == old
        stats = emulator.stats()
        assert stats.requests_by_endpoint["oauth_token"] == 1
        assert stats.refresh_token_reuse == 0
        failed = [e for e in log_output if e["event"] == "account.refresh_failed"]
        assert failed[0]["reason"] == "outcome_unknown"
        assert_catalogued(log_output)
        tokens = json.loads(auth_file.read_text())["tokens"]  # noqa: ASYNC240  (test's tmp file)
        logged = str(log_output)
        for name in ("access_token", "refresh_token", "id_token"):
            assert tokens[name] not in logged
