"""Fleet scale: real broker replicas (subprocesses) sharing one Redis and one emulator.

Every test runs real ``credential-broker serve`` processes on loopback (``tests/fixtures/fleet.py``),
the in-process control-plane emulator and a real Redis. Registrations are counted at the emulator;
the figures each test measures are printed in the terminal summary.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter, defaultdict

import grpc
import pytest
import redis.asyncio as aioredis

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.store import keys
from cb_emulator import Emulator
from tests.fixtures.fleet import Report, StartFleet, wait_until
from tests.integration.helpers import call_protected

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CALL_TIMEOUT_S = 30.0


def _error_key(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


async def _verify_all(emulator: Emulator, authorizations: list[pb.Authorization]) -> dict[str, int]:
    """The emulator's verdict (HTTP status) on each distinct header value."""
    distinct: dict[str, pb.Authorization] = {}
    for auth in authorizations:
        distinct.setdefault(auth.header_value, auth)
    statuses = await asyncio.gather(
        *(call_protected(emulator.base_url, auth) for auth in distinct.values())
    )
    return {header: r.status_code for header, r in zip(distinct, statuses, strict=True)}


async def test_cold_fleet_registers_once(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
) -> None:
    """500 concurrent cold calls over 3 replicas: one identity and one task registration, fleet-wide."""
    fleet = await start_fleet(redis_url=redis_url, identity=identity_name, replicas=3)
    request = pb.GetAuthorizationRequest()
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def call(index: int) -> pb.Authorization | None:
        started = time.perf_counter()
        try:
            response = await fleet.stub(index).GetAuthorization(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            errors[_error_key(exc)] += 1
            return None
        latencies.append(time.perf_counter() - started)
        return response.authorization

    started = time.perf_counter()
    results = await asyncio.gather(*(call(i) for i in range(500)))
    wall = time.perf_counter() - started

    assert not errors, f"callers saw errors: {dict(errors)}"
    authorizations = [a for a in results if a is not None]
    assert len(authorizations) == 500
    assert {a.scheme for a in authorizations} == {pb.SCHEME_AGENT_ASSERTION}
    assert {a.task_kind for a in authorizations} == {pb.TASK_KIND_BACKGROUND}
    runtime_ids = {a.agent_runtime_id for a in authorizations}
    task_ids = {a.task_id for a in authorizations}
    assert len(runtime_ids) == 1, runtime_ids
    assert len(task_ids) == 1, task_ids
    stats = emulator.stats()
    assert (stats.identity_registrations, stats.task_registrations) == (1, 1)
    # Replicas converge on one assertion per window (first writer wins in Redis).
    headers = {a.header_value for a in authorizations}
    assert len(headers) == 1, f"{len(headers)} distinct assertions in one window"
    verdicts = await _verify_all(emulator, authorizations)
    assert set(verdicts.values()) == {200}, verdicts.values()
    # The broker's own account agrees: one replica registered, the others loaded or waited.
    assert len(fleet.events("identity.registered")) == 1
    assert len(fleet.events("task.registered")) == 1
    fleet_report(
        calls=500,
        errors=sum(errors.values()),
        identity_registrations=stats.identity_registrations,
        task_registrations=stats.task_registrations,
        distinct_headers=len(headers),
        wall_s=wall,
        p50_s=statistics.median(latencies),
        max_s=max(latencies),
    )


async def test_threads_register_once_each(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
) -> None:
    """50 threads, each asked for by 6 concurrent callers over all replicas: 50 task registrations."""
    fleet = await start_fleet(redis_url=redis_url, identity=identity_name, replicas=3)
    threads = [f"thread-{n:02d}" for n in range(50)]
    callers_per_thread = 6
    errors: Counter[str] = Counter()

    async def call(thread_id: str, caller: int) -> tuple[str, pb.Authorization | None]:
        # Caller k of thread n goes to replica (n + k) % 3: every thread hits every replica twice.
        stub = fleet.stub(int(thread_id.rpartition("-")[2]) + caller)
        request = pb.GetAuthorizationRequest(thread_id=thread_id)
        try:
            response = await stub.GetAuthorization(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            errors[_error_key(exc)] += 1
            return thread_id, None
        return thread_id, response.authorization

    started = time.perf_counter()
    results = await asyncio.gather(
        *(call(t, k) for k in range(callers_per_thread) for t in threads)
    )
    wall = time.perf_counter() - started

    assert not errors, f"callers saw errors: {dict(errors)}"
    by_thread: dict[str, list[pb.Authorization]] = defaultdict(list)
    for thread_id, auth in results:
        assert auth is not None
        by_thread[thread_id].append(auth)
    assert len(by_thread) == 50
    task_of: dict[str, str] = {}
    for thread_id, auths in by_thread.items():
        assert len(auths) == callers_per_thread
        assert {a.task_id for a in auths} == {auths[0].task_id}, f"{thread_id} got two tasks"
        assert {a.thread_id for a in auths} == {thread_id}
        assert {a.task_kind for a in auths} == {pb.TASK_KIND_THREAD}
        assert {a.scheme for a in auths} == {pb.SCHEME_AGENT_ASSERTION}
        task_of[thread_id] = auths[0].task_id
    assert len(set(task_of.values())) == 50, "two threads share a task"
    assert len({a.agent_runtime_id for _, a in results if a is not None}) == 1
    stats = emulator.stats()
    assert (stats.identity_registrations, stats.task_registrations) == (1, 50)
    # Every distinct header verifies at the control plane.
    verdicts = await _verify_all(emulator, [a for auths in by_thread.values() for a in auths])
    assert set(verdicts.values()) == {200}
    fleet_report(
        calls=len(results),
        errors=sum(errors.values()),
        identity_registrations=stats.identity_registrations,
        task_registrations=stats.task_registrations,
        distinct_headers=len(verdicts),
        wall_s=wall,
    )


async def test_rejection_replaces_once_fleet_wide(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
) -> None:
    """30 concurrent reports of a revoked task over 3 replicas: exactly one replacement, everywhere."""
    fleet = await start_fleet(redis_url=redis_url, identity=identity_name, replicas=3)
    request = pb.GetAuthorizationRequest()
    warm = await asyncio.gather(*(r.stub.GetAuthorization(request) for r in fleet.replicas))
    old = warm[0].authorization
    assert {w.authorization.header_value for w in warm} == {old.header_value}
    assert emulator.stats().task_registrations == 1

    emulator.revoke_task(old.task_id)
    assert (await call_protected(emulator.base_url, old)).status_code == 401
    report = pb.ReportRejectionRequest(header_value=old.header_value, http_status=401)
    errors: Counter[str] = Counter()

    async def reject(index: int) -> pb.ReportRejectionResponse | None:
        try:
            return await fleet.stub(index).ReportRejection(report, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            errors[_error_key(exc)] += 1
            return None

    outcomes = await asyncio.gather(*(reject(i) for i in range(30)))
    assert not errors, f"reporters saw errors: {dict(errors)}"
    replies = [o for o in outcomes if o is not None]
    new_ids = {o.authorization.task_id for o in replies}
    assert len(new_ids) == 1, new_ids
    (new_id,) = new_ids
    assert new_id != old.task_id
    assert sum(o.replaced for o in replies) == 1
    assert emulator.stats().task_registrations == 2
    assert len(fleet.events("task.invalidated")) == 1
    verdicts = await _verify_all(emulator, [o.authorization for o in replies])
    assert set(verdicts.values()) == {200}

    # Every replica serves the replacement at once.
    now = await asyncio.gather(*(r.stub.GetAuthorization(request) for r in fleet.replicas))
    assert {n.authorization.task_id for n in now} == {new_id}

    # A late report of the old header: the current header, and nothing replaced.
    late = await asyncio.gather(*(r.stub.ReportRejection(report) for r in fleet.replicas))
    assert {(n.authorization.task_id, n.replaced) for n in late} == {(new_id, False)}
    assert emulator.stats().task_registrations == 2

    # Pub/sub reaches the other replicas' L1. Above, every replica handled reports itself; here a
    # thread's task is rejected on replica 0 only, while replicas 1 and 2 hold it in L1 (served
    # for 30 s more without an invalidation): they must drop it and serve the replacement.
    thread = pb.GetAuthorizationRequest(thread_id="pubsub")
    held = await asyncio.gather(*(r.stub.GetAuthorization(thread) for r in fleet.replicas))
    current = held[0].authorization
    assert {h.authorization.task_id for h in held} == {current.task_id}
    assert emulator.stats().task_registrations == 3
    emulator.revoke_task(current.task_id)
    single = await fleet[0].stub.ReportRejection(
        pb.ReportRejectionRequest(
            thread_id="pubsub", header_value=current.header_value, http_status=401
        )
    )
    assert single.replaced
    newest = single.authorization.task_id
    assert newest != current.task_id

    async def others_serve_newest() -> bool:
        replies = await asyncio.gather(
            *(r.stub.GetAuthorization(thread) for r in fleet.replicas[1:])
        )
        return {r.authorization.task_id for r in replies} == {newest}

    propagation = await wait_until(
        others_serve_newest, within=2.0, what="replicas 1 and 2 serve the replacement"
    )
    assert emulator.stats().task_registrations == 4
    fleet_report(
        reports=30,
        errors=sum(errors.values()),
        replaced_true=sum(o.replaced for o in replies),
        task_registrations_after_rejection=2,
        pubsub_propagation_s=propagation,
    )


async def test_killed_lock_holder_blocks_only_until_lock_expiry(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
) -> None:
    """SIGKILL a replica in the middle of registering: the others take over once its lock expires.

    ``registration_deadline = 1`` (TOML, via ``BROKER_CONFIG``) makes the lock TTL 6 s (deadline +
    5 s, ``app.py``) and the waiters' deadline 11 s, so a waiter outlives the dead holder's lock
    and registers itself. The caller gets an assertion, not the Bearer fallback: waiting for a lock
    is none of the protocol's fallback cases (§8.1), and a waiter that gave up would get
    UNAVAILABLE with REGISTRATION_IN_PROGRESS, never a Bearer.
    """
    deadline = 1.0
    lock_ttl = deadline + 5.0
    fleet = await start_fleet(
        redis_url=redis_url,
        identity=identity_name,
        replicas=3,
        config={"registration_deadline": deadline},
    )
    a, b, c = fleet.replicas
    emulator.inject_fault("register_task", delay_seconds=60, count=1)

    async def cold_call() -> pb.GetAuthorizationResponse:
        return await a.stub.GetAuthorization(pb.GetAuthorizationRequest(), timeout=30)

    cold = asyncio.create_task(cold_call())
    await wait_until(
        lambda: emulator.stats().requests_by_endpoint["register_task"] >= 1,
        within=10,
        what="replica A's task registration reached the emulator",
    )
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        lock = keys.lock_key(identity_name, "")
        held = [k async for k in client.scan_iter(match=lock + "*")]
        assert len(held) == 1, held
        assert held[0].decode().endswith(":task:background")
        remaining = (await client.pttl(held[0])) / 1000
        assert 0 < remaining <= lock_ttl
        await a.kill()
        killed = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cold
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await client.exists(held[0]) == 1, "the dead replica's lock is still held"

        replies = await asyncio.gather(
            *(
                r.stub.GetAuthorization(pb.GetAuthorizationRequest(), timeout=lock_ttl + 10)
                for r in (b, c)
            )
        )
        recovery = time.monotonic() - killed
    finally:
        await client.aclose()
    auths = [r.authorization for r in replies]
    assert {x.scheme for x in auths} == {pb.SCHEME_AGENT_ASSERTION}
    assert len({x.task_id for x in auths}) == 1
    # They waited for the lock (it was really in the way), and no longer than its TTL + a margin.
    assert remaining - 1.0 <= recovery <= lock_ttl + 3.0, (remaining, recovery)
    stats = emulator.stats()
    # The killed replica's request died with its connection: the emulator registered nothing for it.
    assert (stats.identity_registrations, stats.task_registrations) == (1, 1)
    assert (await call_protected(emulator.base_url, auths[0])).status_code == 200

    # The killed replica comes back and serves the fleet's task without registering.
    await a.restart()
    again = await a.stub.GetAuthorization(pb.GetAuthorizationRequest(), timeout=10)
    assert again.authorization.task_id == auths[0].task_id
    assert emulator.stats().task_registrations == 1
    fleet_report(
        lock_ttl_s=lock_ttl,
        lock_remaining_at_kill_s=remaining,
        recovery_s=recovery,
        task_registrations=stats.task_registrations,
        killed_caller=caught.value.code().name,
    )


async def test_sigterm_drains(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
) -> None:
    """SIGTERM: the in-flight unary call completes, the watch stream ends, the process exits 0."""
    grace = 4.0
    fleet = await start_fleet(
        redis_url=redis_url,
        identity=identity_name,
        replicas=1,
        env={"BROKER_GRACE_PERIOD": str(grace)},
    )
    replica = fleet[0]
    watch = replica.stub.WatchAuthorization(pb.WatchAuthorizationRequest(), timeout=60)
    first = await asyncio.wait_for(watch.read(), timeout=10)
    assert first.authorization.scheme == pb.SCHEME_AGENT_ASSERTION
    registrations = emulator.stats().requests_by_endpoint["register_task"]

    emulator.inject_fault("register_task", delay_seconds=1.5, count=1)
    completed: list[float] = []

    async def in_flight() -> pb.GetAuthorizationResponse:
        request = pb.GetAuthorizationRequest(thread_id="draining")
        response = await replica.stub.GetAuthorization(request, timeout=20)
        completed.append(time.monotonic())
        return response

    unary = asyncio.create_task(in_flight())
    await wait_until(
        lambda: emulator.stats().requests_by_endpoint["register_task"] > registrations,
        within=10,
        what="the unary call's task registration is in flight",
    )
    replica.send_sigterm()
    signalled = time.monotonic()

    async def stream_end() -> tuple[str, float]:
        try:
            while await watch.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, time.monotonic() - signalled
        return (await watch.code()).name, time.monotonic() - signalled

    ended, (stream_code, stream_s) = await asyncio.wait_for(
        asyncio.gather(unary, stream_end()), timeout=grace + 5
    )
    unary_s = completed[0] - signalled
    assert unary_s > 0.5  # it really was in flight during the drain (the 1.5 s delay)
    assert ended.authorization.scheme == pb.SCHEME_AGENT_ASSERTION
    assert ended.authorization.thread_id == "draining"
    code = await replica.wait_exit(grace + 5)
    exit_s = time.monotonic() - signalled
    assert code == 0, replica.tail()
    # The broker ends watch streams itself, cleanly, before the grace period runs out (a stream
    # cancelled by the server at the end of the grace period would end CANCELLED or UNAVAILABLE).
    assert stream_code == "OK", stream_code
    assert stream_s < grace
    assert exit_s <= grace + 3.0
    assert replica.events("broker.stopping")
    assert replica.events("broker.stopped")
    fleet_report(
        grace_s=grace,
        unary_completed_s=unary_s,
        stream_end_code=stream_code,
        stream_end_s=stream_s,
        exit_code=code,
        exit_s=exit_s,
    )
