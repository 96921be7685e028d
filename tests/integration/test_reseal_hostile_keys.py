"""Caller-chosen thread ids against ``kek reseal``: key names cannot be spoofed, odd keys are reported.

The attack: a thread id such as ``a:assertion:b`` used to land verbatim in a task key, and
``kek reseal`` classified keys by substring, so it read that HASH as a cached assertion (``GET``)
and died with WRONGTYPE until the task expired. Each test mounts it through the real gRPC API of a
real broker (real Redis, the real emulator over HTTP), then rotates the KEK and re-seals.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.sealing import KekSealer, generate_kek_line, load_kek_file
from broker.adapters.store import keys
from broker.adapters.store.reseal import reseal_all
from broker.catalog import problems
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.fixtures.redis import RedisServerProcess

pytestmark = pytest.mark.integration

HOSTILE_THREADS = (
    "a:assertion:b",  # the reported attack: a task HASH that looked like a cached assertion
    "x:identity",  # ends like an identity key
    "y:account",  # ends like a login key
    "z{q}:%41:task:thread:w",  # hash-tag braces, a percent sign and the schema's own words
)
IDENTITY = "tenant-a"
_DEADLINE_S = 30


@pytest.fixture(name="raw")
async def fixture_raw(redis_process: RedisServerProcess) -> AsyncIterator[aioredis.Redis]:
    """A client of a private Redis, so the counts below are exact whatever else ran before."""
    client = aioredis.Redis.from_url(redis_process.url)
    yield client
    await client.aclose()


def rotated_kek_file(kek_file: Path, directory: Path) -> Path:
    """A KEK file for step two of a rotation: a new primary first, the broker's KEK after it."""
    path = directory / "kek-rotated"
    path.write_text(generate_kek_line() + "\n" + kek_file.read_text())
    path.chmod(0o600)
    return path


async def mount_attack(start_broker: StartBroker, redis_url: str) -> RunningBroker:
    """A broker on ``redis_url`` that has served every hostile thread id an assertion."""
    broker = await start_broker(redis_url=redis_url, identity=IDENTITY)
    for thread in HOSTILE_THREADS:
        response = await broker.stub.GetAuthorization(
            pb.GetAuthorizationRequest(thread_id=thread), timeout=10
        )
        assert response.authorization.scheme == pb.SCHEME_AGENT_ASSERTION
        assert response.authorization.thread_id == thread
    return broker


async def sealed_key_ids(raw: aioredis.Redis) -> dict[str, str | None]:
    """Every sealed value in Redis by key, with the KEK id it names."""
    found: dict[str, str | None] = {}
    async for name in raw.scan_iter(match="cb:*"):
        key = name.decode()
        kind = await raw.type(name)
        if kind == b"hash":
            value = await raw.hget(name, "private_key")
        elif kind == b"string" and ":assertion:" in key:
            value = await raw.get(name)
        else:
            continue
        if value is not None:
            found[key] = KekSealer.key_id_of(value)
    return found


class TestHostileThreadIds:
    async def test_keys_keep_their_kind(
        self, start_broker: StartBroker, redis_process: RedisServerProcess, raw: aioredis.Redis
    ) -> None:
        """Every key the attack makes parses as what it is; the thread id is one segment."""
        broker = await mount_attack(start_broker, redis_process.url)
        runtime = (await broker.stub.GetIdentity(pb.GetIdentityRequest())).identity
        thread_keys = {
            keys.task_key(IDENTITY, runtime.agent_runtime_id, f"thread:{thread}")
            for thread in HOSTILE_THREADS
        }
        stored = {name.decode() async for name in raw.scan_iter(match="cb:*")}
        assert thread_keys <= stored
        for key in thread_keys:
            parsed = keys.parse_key(key)
            assert parsed is not None
            assert parsed.kind is keys.KeyKind.TASK
            assert parsed.thread_id in HOSTILE_THREADS
        for key in stored:
            assert keys.parse_key(key) is not None, key

    async def test_reseal_completes(
        self,
        start_broker: StartBroker,
        redis_process: RedisServerProcess,
        raw: aioredis.Redis,
        kek_file: Path,
        tmp_path: Path,
    ) -> None:
        """After the attack, a re-seal moves every secret to the new KEK and skips nothing."""
        broker = await mount_attack(start_broker, redis_process.url)
        sealer = load_kek_file(rotated_kek_file(kek_file, tmp_path))
        report = await asyncio.wait_for(reseal_all(raw, sealer), _DEADLINE_S)
        # the identity's private key and one cached assertion per thread
        assert report.resealed == 1 + len(HOSTILE_THREADS)
        assert (report.skipped, report.unreadable, report.changed_meanwhile) == (0, 0, 0)
        assert set((await sealed_key_ids(raw)).values()) == {sealer.primary_key_id}
        # a replica holding only the new KEK still serves the same thread tasks
        await broker.close()
        new_only = tmp_path / "kek-new-only"
        new_only.write_text(
            (tmp_path / "kek-rotated").read_text().splitlines()[0] + "\n", encoding="utf-8"
        )
        new_only.chmod(0o600)
        replica = await start_broker(
            redis_url=redis_process.url, identity=IDENTITY, env={"BROKER_KEK_FILE": str(new_only)}
        )
        for thread in HOSTILE_THREADS:
            again = await replica.stub.GetAuthorization(
                pb.GetAuthorizationRequest(thread_id=thread), timeout=10
            )
            assert again.authorization.scheme == pb.SCHEME_AGENT_ASSERTION


class TestEdge:
    @pytest.mark.parametrize("thread", ["t" * 257, "a b", "a\nb", "a\x00b", "é"])
    async def test_malformed_thread_ids_are_refused(
        self,
        thread: str,
        start_broker: StartBroker,
        redis_process: RedisServerProcess,
        raw: aioredis.Redis,
    ) -> None:
        """Over 256 characters, whitespace, control or non-ASCII: INVALID_ARGUMENT, nothing stored."""
        broker = await start_broker(redis_url=redis_process.url, identity=IDENTITY)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(
                pb.GetAuthorizationRequest(thread_id=thread), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "thread_id" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.EnsureTask(pb.EnsureTaskRequest(thread_id=thread), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "thread_id" in (caught.value.details() or "")
        assert [k async for k in raw.scan_iter(match="cb:*:task:thread:*")] == []


class TestSkipAndReport:
    async def test_command_skips_reports_and_fails_at_the_end(
        self,
        start_broker: StartBroker,
        redis_process: RedisServerProcess,
        raw: aioredis.Redis,
        kek_file: Path,
        tmp_path: Path,
    ) -> None:
        """Keys it cannot handle are counted and logged one by one; the rest is still re-sealed.

        Besides the attack through the API, Redis holds what an older broker left for the same
        thread ids (the verbatim key names) and a value of the wrong type under a sealed key's name.
        """
        broker = await mount_attack(start_broker, redis_process.url)
        runtime = (await broker.stub.GetIdentity(pb.GetIdentityRequest())).identity.agent_runtime_id
        legacy = [f"cb:{{{IDENTITY}}}:{runtime}:task:thread:{t}" for t in HOSTILE_THREADS]
        for key in legacy:
            await raw.hset(key, mapping={"task_id": "task-old", "registered_at": "2026-01-01"})
        wrong_type = keys.assertion_key(IDENTITY, "foreign")
        await raw.hset(wrong_type, mapping={"not": "a sealed string"})
        rotated = rotated_kek_file(kek_file, tmp_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env |= {"BROKER_REDIS_URL": redis_process.url, "BROKER_KEK_FILE": str(rotated)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broker",
            "kek",
            "reseal",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), _DEADLINE_S)
        stdout, stderr = out.decode(), err.decode()
        assert "Traceback" not in stdout + stderr
        assert process.returncode == 1, stderr
        lines = [json.loads(line) for line in stdout.splitlines()]
        report = lines[-1]
        assert report["resealed"] == 1 + len(HOSTILE_THREADS)
        assert report["skipped"] == len(legacy) + 1
        assert report["unreadable"] == 0
        skipped = {
            e["key"]: e["reason"] for e in lines[:-1] if e["event"] == "store.reseal_skipped"
        }
        assert set(skipped) == {*legacy, wrong_type}
        assert all(skipped[key] == "unrecognised_key" for key in legacy)
        assert skipped[wrong_type] == "wrong_type"
        assert [p for line in lines[:-1] for p in problems(line)] == []
        assert "private_key" not in stdout
