"""Attack: one caller mints a new thread id per call, so every call is a registration upstream.

Against a real broker (real Redis, the emulator over HTTP, gRPC on loopback). Without limits,
150 distinct thread ids cost 150 task registrations in about a second; the account then meets 429s
and the shared circuit opens for every caller. The broker meters new thread tasks fleet-wide
(per caller and per identity, in Redis) and caps the identity's live thread tasks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.callers import hash_token
from broker.core.credentials.spec import ThreadTaskLimits
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.integration.helpers import error_reason

pytestmark = pytest.mark.integration

MALLORY = "mallory-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
ATTACK_THREADS = 150
BURST = ThreadTaskLimits().per_caller_burst


def callers_config(tmp_path: Path) -> Path:
    path = tmp_path / "callers.toml"
    path.write_text(
        f"""
[callers.mallory]
token_sha256 = "{hash_token(MALLORY)}"

[callers.alice]
token_sha256 = "{hash_token(ALICE)}"
"""
    )
    return path


# Refill slowly enough that a loaded CI machine's slow flood cannot earn an extra token.
SLOW_REFILL = {
    "BROKER_THREAD_TASK_RATE_PER_CALLER": "0.01",
    "BROKER_THREAD_TASK_RATE_PER_IDENTITY": "0.01",
}


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def flood(
    broker: RunningBroker, token: str | None, count: int, prefix: str
) -> list[pb.GetAuthorizationResponse | BaseException]:
    metadata = auth(token) if token else None
    return await asyncio.gather(
        *(
            broker.stub.GetAuthorization(
                pb.GetAuthorizationRequest(thread_id=f"{prefix}-{i}"), metadata=metadata
            )
            for i in range(count)
        ),
        return_exceptions=True,
    )


def refusals(
    results: list[pb.GetAuthorizationResponse | BaseException],
) -> list[grpc.aio.AioRpcError]:
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, grpc.aio.AioRpcError) for e in errors), errors
    return [e for e in errors if isinstance(e, grpc.aio.AioRpcError)]


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    return retry.retry_delay.ToNanoseconds() / 1e9


async def test_a_caller_flooding_new_threads_is_held_to_its_budget(
    identity_name: str,
    start_broker: StartBroker,
    redis_url: str,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    broker = await start_broker(
        redis_url=redis_url,
        identity=identity_name,
        env={"BROKER_CONFIG": str(callers_config(tmp_path)), **SLOW_REFILL},
    )
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(ALICE))
    before = emulator.stats().task_registrations

    results = await flood(broker, MALLORY, ATTACK_THREADS, "mallory")

    refused = refusals(results)
    registered = emulator.stats().task_registrations - before
    # the default per-caller burst: the rest never reach the control plane
    assert registered == BURST
    assert len(refused) == ATTACK_THREADS - BURST
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {error_reason(e) for e in refused} == {"THREAD_TASK_BUDGET_EXHAUSTED"}
    assert "'caller:mallory' limit" in (refused[0].details() or "")
    assert 90 < retry_delay(refused[0]) <= 100  # one token every 100 s at 0.01/s
    # another caller is not punished for mallory's flood
    answer = await broker.stub.GetAuthorization(
        pb.GetAuthorizationRequest(thread_id="alice-thread"), metadata=auth(ALICE)
    )
    assert answer.authorization.task_id
    # an existing thread keeps working for mallory too: only *new* tasks are metered
    again = await broker.stub.GetAuthorization(
        pb.GetAuthorizationRequest(thread_id="mallory-0"), metadata=auth(MALLORY)
    )
    assert again.authorization.task_id


async def test_the_budget_is_fleet_wide(
    identity_name: str,
    start_broker: StartBroker,
    redis_url: str,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    """Spreading the flood over three replicas buys the caller nothing."""
    env = {"BROKER_CONFIG": str(callers_config(tmp_path)), **SLOW_REFILL}
    replicas = [
        await start_broker(redis_url=redis_url, identity=identity_name, env=env) for _ in range(3)
    ]
    await replicas[0].stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=auth(ALICE))
    before = emulator.stats().task_registrations

    rounds = await asyncio.gather(
        *(flood(broker, MALLORY, 50, f"r{n}") for n, broker in enumerate(replicas))
    )

    assert emulator.stats().task_registrations - before == BURST
    assert sum(len(refusals(results)) for results in rounds) == 150 - BURST


async def test_the_identity_budget_bounds_all_callers_together(
    identity_name: str, start_broker: StartBroker, redis_url: str, emulator: Emulator
) -> None:
    """With no callers configured (loopback), the per-identity budget still holds."""
    broker = await start_broker(
        redis_url=redis_url,
        identity=identity_name,
        env={"BROKER_THREAD_TASK_BURST_PER_IDENTITY": "20", **SLOW_REFILL},
    )
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
    before = emulator.stats().task_registrations

    results = await flood(broker, None, 60, "anon")

    refused = refusals(results)
    assert emulator.stats().task_registrations - before == 20
    assert len(refused) == 40
    assert "'identity' limit" in (refused[0].details() or "")


async def test_live_thread_tasks_are_capped(
    identity_name: str, start_broker: StartBroker, redis_url: str, emulator: Emulator
) -> None:
    broker = await start_broker(
        redis_url=redis_url, identity=identity_name, env={"BROKER_MAX_LIVE_THREAD_TASKS": "5"}
    )
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
    before = emulator.stats().task_registrations

    for i in range(5):
        await broker.stub.EnsureTask(pb.EnsureTaskRequest(thread_id=f"t-{i}"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await broker.stub.EnsureTask(pb.EnsureTaskRequest(thread_id="t-5"))

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'live_thread_tasks' limit" in (refused.value.details() or "")
    assert emulator.stats().task_registrations - before == 5
    # the live ones are still served
    live = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t-0"))
    assert live.authorization.task_id


async def test_refusals_are_logged_once_per_interval_with_the_limit(
    identity_name: str,
    start_broker: StartBroker,
    redis_url: str,
    tmp_path: Path,
    log_output: list[dict[str, object]],
) -> None:
    broker = await start_broker(
        redis_url=redis_url,
        identity=identity_name,
        env={"BROKER_CONFIG": str(callers_config(tmp_path)), **SLOW_REFILL},
    )
    await flood(broker, MALLORY, 100, "noisy")

    lines = [e for e in log_output if e["event"] == "task.budget_exhausted"]
    assert len(lines) == 1, "a flood of refusals must not become a flood of log lines"
    assert lines[0]["caller"] == "mallory"
    assert lines[0]["limit"] == "caller:mallory"
    assert lines[0]["refused"] == 1
