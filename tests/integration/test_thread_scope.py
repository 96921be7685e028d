"""Callers' threads are their own: the same thread id from two callers names two tasks.

Attack: a caller that learns (or guesses) another caller's thread id uses that thread's task, or
reports its header to have the task replaced under the other caller's feet. By default each
configured caller has its own thread namespace; callers whose policy says ``share_threads`` share
one. Real broker, real Redis, the emulator over HTTP.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.callers import hash_token
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL, DAVE = (f"{n}-token-0123456789abcdef" for n in ("alice", "bob", "carol", "dave"))


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(name="broker")
async def fixture_broker(
    identity_name: str, start_broker: StartBroker, redis_url: str, tmp_path: Path
) -> RunningBroker:
    config = tmp_path / "callers.toml"
    config.write_text(
        f"""
[callers.alice]
token_sha256 = "{hash_token(ALICE)}"
[callers.bob]
token_sha256 = "{hash_token(BOB)}"
[callers.carol]
token_sha256 = "{hash_token(CAROL)}"
share_threads = true
[callers.dave]
token_sha256 = "{hash_token(DAVE)}"
share_threads = true
"""
    )
    return await start_broker(
        redis_url=redis_url, identity=identity_name, env={"BROKER_CONFIG": str(config)}
    )


async def thread(broker: RunningBroker, token: str, thread_id: str = "t-1") -> pb.Authorization:
    request = pb.GetAuthorizationRequest(thread_id=thread_id)
    return (await broker.stub.GetAuthorization(request, metadata=auth(token))).authorization


async def test_the_same_thread_id_is_two_tasks_for_two_callers(
    broker: RunningBroker, emulator: Emulator
) -> None:
    before = emulator.stats().task_registrations
    alice, bob = await thread(broker, ALICE), await thread(broker, BOB)
    assert alice.task_id != bob.task_id
    assert emulator.stats().task_registrations - before == 2
    # each caller sees its thread id as it wrote it
    assert alice.thread_id == bob.thread_id == "t-1"
    # and keeps getting its own
    assert (await thread(broker, ALICE)).task_id == alice.task_id
    prewarmed = await broker.stub.EnsureTask(
        pb.EnsureTaskRequest(thread_id="t-1"), metadata=auth(BOB)
    )
    assert prewarmed.task.task_id == bob.task_id
    assert prewarmed.task.thread_id == "t-1"


async def test_a_caller_cannot_replace_another_callers_thread_task(
    broker: RunningBroker, emulator: Emulator
) -> None:
    alice = await thread(broker, ALICE)
    await thread(broker, BOB)
    before = emulator.stats().task_registrations
    # bob reports alice's (genuine) header on the thread id they both use
    outcome = await broker.stub.ReportRejection(
        pb.ReportRejectionRequest(
            thread_id="t-1", header_value=alice.header_value, http_status=401
        ),
        metadata=auth(BOB),
    )
    assert not outcome.replaced
    assert outcome.authorization.task_id != alice.task_id  # bob gets his own task back
    assert emulator.stats().task_registrations == before
    assert (await thread(broker, ALICE)).task_id == alice.task_id


async def test_callers_that_share_threads_share_tasks(
    broker: RunningBroker, emulator: Emulator
) -> None:
    carol, dave = await thread(broker, CAROL), await thread(broker, DAVE)
    assert carol.task_id == dave.task_id
    assert (await thread(broker, ALICE)).task_id != carol.task_id


async def test_a_forged_scope_in_a_thread_id_is_refused(broker: RunningBroker) -> None:
    """Only the broker writes a scope: a thread id carrying its separator is malformed."""
    await thread(broker, ALICE)
    for token in (CAROL, BOB):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await thread(broker, token, "\x1falice\x1ft-1")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
