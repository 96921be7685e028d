"""KEK rotation: a new primary KEK seals, old values still open, and re-sealing moves them over."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from broker.adapters.sealing import KekSealer
from broker.adapters.store import keys
from broker.adapters.store.redis import RedisStore
from broker.adapters.store.reseal import reseal_all
from broker.core.credentials.model import CachedAssertion, IdentityRecord
from broker.core.protocol.keys import AgentKey
from broker.secret import Secret
from tests.fixtures.redis import RedisServerProcess

pytestmark = pytest.mark.integration

OLD_KEY = os.urandom(32)
NEW_KEY = os.urandom(32)
OLD = KekSealer([("old", OLD_KEY)])
BOTH = KekSealer([("new", NEW_KEY), ("old", OLD_KEY)])
NEW_ONLY = KekSealer([("new", NEW_KEY)])


@pytest.fixture(name="redis_url")
def fixture_private_redis_url(redis_process: RedisServerProcess) -> str:
    """A Redis of this test's own: reseal scans every identity's keys by design, so values that
    other tests sealed under their own KEKs would show up here as unreadable."""
    return redis_process.url


async def seed(redis_url: str, identity: str, sealer: KekSealer) -> tuple[IdentityRecord, str]:
    store = RedisStore.from_url(redis_url, sealer)
    try:
        record = IdentityRecord(
            name=identity,
            agent_runtime_id="agent-1",
            key=AgentKey.generate(os.urandom(64)),
            account_id="acct",
            user_id=None,
            registered_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        await store.save_identity(record)
        moment = datetime.now(UTC).replace(microsecond=0)
        await store.save_assertion(
            identity,
            CachedAssertion(
                header_value=Secret("AgentAssertion e30"),
                agent_runtime_id="agent-1",
                task_id="task-1",
                issued_at=moment,
                expires_at=moment,
            ),
            600,
        )
    finally:
        await store.close()
    return record, keys.assertion_key(identity, "task-1")


class TestReseal:
    async def test_reseal_moves_values_to_the_new_kek(
        self, redis_url: str, identity_name: str, raw: aioredis.Redis
    ) -> None:
        """After re-sealing, a broker holding only the new KEK reads everything; TTLs are kept."""
        record, assertion_key = await seed(redis_url, identity_name, OLD)
        report = await reseal_all(raw, BOTH)
        assert (report.resealed, report.unreadable) == (2, 0)
        sealed = await raw.hget(keys.identity_key(identity_name), "private_key")
        assert KekSealer.key_id_of(sealed) == "new"
        assert await raw.pttl(assertion_key) > 500_000
        store = RedisStore.from_url(redis_url, NEW_ONLY)
        try:
            loaded = await store.load_identity(identity_name)
            assert loaded is not None
            assert loaded.key == record.key
            cached = await store.load_assertion(identity_name, "task-1")
            assert cached is not None
            assert cached.header_value.reveal() == "AgentAssertion e30"
        finally:
            await store.close()
        again = await reseal_all(raw, BOTH)
        assert (again.resealed, again.already_current) == (0, 2)

    async def test_unknown_kek_left_alone(
        self, redis_url: str, identity_name: str, raw: aioredis.Redis
    ) -> None:
        """Values no configured KEK opens are counted and not touched."""
        await seed(redis_url, identity_name, OLD)
        stranger = KekSealer([("other", os.urandom(32))])
        before = await raw.hget(keys.identity_key(identity_name), "private_key")
        report = await reseal_all(raw, stranger)
        assert report.unreadable >= 2
        assert await raw.hget(keys.identity_key(identity_name), "private_key") == before

    async def test_no_plaintext_key_material(
        self, redis_url: str, identity_name: str, raw: aioredis.Redis
    ) -> None:
        """Raw Redis holds neither the PKCS#8 key nor the seed in any encoding."""
        record, _ = await seed(redis_url, identity_name, OLD)
        dump = b""
        async for key in raw.scan_iter(match=f"cb:{{{identity_name}}}:*"):
            kind = await raw.type(key)
            if kind == b"hash":
                dump += b"".join(k + v for k, v in (await raw.hgetall(key)).items())
            elif kind == b"string":
                dump += await raw.get(key) or b""
        for needle in (
            record.key.to_pkcs8_base64().encode(),
            record.key.seed,
            record.key.seed.hex().encode(),
            base64.b64encode(record.key.seed),
            b"AgentAssertion",
        ):
            assert needle not in dump


class TestResealCommand:
    def test_cli(self, redis_url: str, identity_name: str, tmp_path: Path) -> None:
        """`credential-broker kek reseal` moves stored secrets to the file's first KEK."""
        asyncio.run(seed(redis_url, identity_name, OLD))
        kek = tmp_path / "kek"
        kek.write_text(
            f"new {base64.b64encode(NEW_KEY).decode()}\nold {base64.b64encode(OLD_KEY).decode()}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env |= {"BROKER_REDIS_URL": redis_url, "BROKER_KEK_FILE": str(kek)}
        result = subprocess.run(
            [sys.executable, "-m", "broker", "kek", "reseal"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["resealed"] >= 2
        assert report["unreadable"] == 0
