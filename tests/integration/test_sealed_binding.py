"""Attack: a Redis writer without the KEK flips the plain fields stored beside sealed ones.

A login's ``state``, ``version`` and ``burned_refresh`` and an identity's runtime id, account and
source sit in clear next to the sealed tokens / private key. Clearing ``burned_refresh`` would make
a replica resend a refresh token whose answer was lost (the provider then revokes the login);
flipping ``state`` would revive a login the provider refused. These fields are bound into the
seal, so any change makes the record fail to open: it is discarded as corrupt, never used.
Real Redis, real sealing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio

from broker.adapters.sealing import KekSealer
from broker.adapters.store import RedisStore, keys
from broker.adapters.store._codec import encode_identity, field_associated_data
from broker.core.credentials.model import AccountRecord, AccountState, IdentityRecord
from broker.core.protocol.keys import AgentKey
from broker.core.protocol.login import tokens_from
from cb_emulator import Emulator

pytestmark = pytest.mark.integration

KEK = KekSealer([("test", bytes(range(32)))])
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture(name="store")
async def fixture_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, KEK)
    yield store
    await store.close()


def identity(name: str) -> IdentityRecord:
    return IdentityRecord(
        name=name,
        agent_runtime_id="agent-1",
        key=AgentKey.generate(bytes(range(64))),
        account_id="acct-1",
        user_id="user-1",
        registered_at=NOW,
        source="register",
    )


def login(name: str, emulator: Emulator) -> AccountRecord:
    tokens = emulator.create_login("acct-dev", user_id="user-dev")["tokens"]
    return AccountRecord(
        identity=name,
        tokens=tokens_from(tokens["access_token"], tokens["refresh_token"], tokens["id_token"]),
        last_refresh=NOW,
        state=AccountState.REAUTH_REQUIRED,
        burned_refresh="ab" * 32,
        version=7,
        detail="the provider refused the refresh token",
    )


@pytest.mark.parametrize(
    ("field", "forged"),
    [("state", b"active"), ("burned_refresh", b""), ("version", b"6"), ("detail", b"")],
)
async def test_a_flipped_login_field_makes_the_login_unusable(
    identity_name: str,
    store: RedisStore,
    raw: redis.asyncio.Redis,
    emulator: Emulator,
    field: str,
    forged: bytes,
) -> None:
    await store.save_account(login(identity_name, emulator))
    assert await store.load_account(identity_name) is not None
    await raw.hset(keys.account_key(identity_name), field, forged)

    assert await store.load_account(identity_name) is None  # judged corrupt and discarded
    assert await raw.exists(keys.account_key(identity_name)) == 0


@pytest.mark.parametrize(
    ("field", "forged"),
    [("runtime_id", b"agent-2"), ("account_id", b"acct-2"), ("source", b"jwt"), ("bound", b"")],
)
async def test_a_flipped_identity_field_makes_the_record_unusable(
    identity_name: str,
    store: RedisStore,
    raw: redis.asyncio.Redis,
    field: str,
    forged: bytes,
) -> None:
    await store.save_identity(identity(identity_name))
    await raw.hset(keys.identity_key(identity_name), field, forged)

    assert await store.load_identity(identity_name) is None


async def test_the_bound_list_cannot_be_stripped(
    identity_name: str, store: RedisStore, raw: redis.asyncio.Redis
) -> None:
    """Removing ``bound`` (to pass as a record written before fields were bound) fails too."""
    await store.save_identity(identity(identity_name))
    await raw.hdel(keys.identity_key(identity_name), "bound")
    assert await store.load_identity(identity_name) is None


async def test_records_written_before_binding_still_open(
    identity_name: str, store: RedisStore, raw: redis.asyncio.Redis
) -> None:
    """An identity sealed with the key and field names only (no ``bound``) still loads."""
    record = identity(identity_name)
    key = keys.identity_key(identity_name)
    fields = encode_identity(record, key, KEK)
    del fields["bound"]
    pkcs8 = record.key.to_pkcs8_base64().encode("ascii")
    fields["private_key"] = KEK.seal(pkcs8, field_associated_data(key, "private_key"))
    await raw.hset(key, mapping=fields)

    loaded = await store.load_identity(identity_name)
    assert loaded is not None
    assert loaded.agent_runtime_id == record.agent_runtime_id
    assert loaded.key.public_key_ssh == record.key.public_key_ssh
