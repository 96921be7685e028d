"""Faults with real processes: Redis stopped, the control plane failing, corrupt values in Redis.

Replicas are real ``credential-broker serve`` subprocesses (``tests/fixtures/fleet.py``); Redis is a
real ``redis-server`` (a private one where the test stops it); the control plane is the emulator,
misbehaving through its ``/_emulator/`` controls. Registrations are counted at the emulator; the
figures each test measures are printed in the terminal summary.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.store import keys
from broker.core.protocol.assertion import parse_assertion
from cb_emulator import Emulator
from tests.fixtures.fleet import Fleet, Replica, Report, StartFleet, wait_until
from tests.fixtures.redis import RedisServerProcess
from tests.integration.helpers import call_protected, error_reason

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STORE_HEALTH = "credential-broker.store"


async def emulator_control(emulator: Emulator, path: str, body: dict[str, Any]) -> None:
    """POST to one of the emulator's ``/_emulator/`` controls, as an out-of-process test would."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(f"{emulator.root_url}/_emulator/{path}", json=body)
    assert response.status_code == 200, response.text


async def outcome(
    replica: Replica, request: pb.GetAuthorizationRequest, deadline: float = 10.0
) -> tuple[pb.Authorization | None, str, str, float]:
    """One call: (authorization or None, gRPC code, ErrorInfo reason, seconds)."""
    started = time.monotonic()
    try:
        response = await replica.stub.GetAuthorization(request, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        reason = error_reason(exc) if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED else ""
        return None, exc.code().name, reason, time.monotonic() - started
    return response.authorization, "OK", "", time.monotonic() - started


def serve_window_end(auth: pb.Authorization, margin: float) -> float:
    """The ``time.monotonic()`` at which the broker stops handing ``auth`` out."""
    expires = auth.expires_at.seconds + auth.expires_at.nanos / 1e9
    return time.monotonic() + (expires - margin - time.time())


async def all_health(fleet: Fleet, service: str, status: int) -> bool:
    """Whether every running replica reports ``status`` for ``service``."""
    statuses = await asyncio.gather(*(r.health_status(service) for r in fleet.replicas))
    return set(statuses) == {status}


# -- Redis stopped mid-load ------------------------------------------------------------------------


async def test_redis_outage_serves_warm_refuses_cold_and_recovers(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_process: RedisServerProcess,
    fleet_report: Report,
) -> None:
    """Redis stops under load: L1 serves warm headers to the end of their window, cold calls fail
    fast with UNAVAILABLE, health says the store is down, nothing is registered; then it recovers.
    """
    ttl, margin = 6.0, 3.0
    fleet = await start_fleet(
        redis_url=redis_process.url,
        identity="t" + uuid.uuid4().hex,
        replicas=2,
        env={"BROKER_ASSERTION_TTL": str(ttl), "BROKER_REFRESH_MARGIN": str(margin)},
    )
    assert await all_health(fleet, STORE_HEALTH, SERVING)
    background = pb.GetAuthorizationRequest()
    warm_thread = pb.GetAuthorizationRequest(thread_id="warm")
    warm = await asyncio.gather(
        *(r.stub.GetAuthorization(q) for r in fleet.replicas for q in (background, warm_thread))
    )
    warm_headers = {w.authorization.header_value for w in warm}
    assert len(warm_headers) == 2  # replicas converged: one background, one thread assertion
    window_end = min(serve_window_end(w.authorization, margin) for w in warm)
    before = emulator.stats()
    assert (before.identity_registrations, before.task_registrations) == (1, 2)

    await asyncio.to_thread(redis_process.stop)
    stopped = time.monotonic()
    assert window_end - stopped > 1.0, "the warm window ended before Redis stopped"
    # Watch health from the first moment (the broker checks the store every 5 s).
    health_down = asyncio.create_task(
        wait_until(
            lambda: all_health(fleet, STORE_HEALTH, NOT_SERVING),
            within=8.0,
            what="store health NOT_SERVING on every replica",
        )
    )

    # Mid-load: warm calls on both replicas, paced, until just before their window ends; cold calls
    # (threads never seen) at the same time.
    warm_ok = 0
    warm_errors: Counter[str] = Counter()

    async def warm_load() -> None:
        nonlocal warm_ok
        while time.monotonic() < window_end - 0.3:
            results = await asyncio.gather(
                *(outcome(r, q, 2.0) for r in fleet.replicas for q in (background, warm_thread))
            )
            for auth, code, _reason, _s in results:
                if auth is None:
                    warm_errors[code] += 1
                else:
                    assert auth.header_value in warm_headers
                    warm_ok += 1
            await asyncio.sleep(0.05)

    async def cold_load() -> list[tuple[pb.Authorization | None, str, str, float]]:
        return await asyncio.gather(
            *(
                outcome(fleet[n % 2], pb.GetAuthorizationRequest(thread_id=f"cold-{n}"), 10.0)
                for n in range(6)
            )
        )

    _, cold = await asyncio.gather(warm_load(), cold_load())
    assert not warm_errors, f"warm calls failed inside their window: {dict(warm_errors)}"
    assert warm_ok > 0
    assert {(c[1], c[2]) for c in cold} == {("UNAVAILABLE", "STORE_UNAVAILABLE")}
    cold_max = max(c[3] for c in cold)
    assert cold_max < 3.0

    # Past the window, warm slots need Redis too: UNAVAILABLE, never a Bearer (that would let a
    # replica that cannot see the shared task register a second one).
    async def background_refused() -> bool:
        results = await asyncio.gather(*(outcome(r, background, 5.0) for r in fleet.replicas))
        return all(
            code == "UNAVAILABLE" and reason == "STORE_UNAVAILABLE"
            for _a, code, reason, _s in results
        )

    await wait_until(
        background_refused,
        within=window_end - time.monotonic() + 3.0,
        what="warm background refused after its window",
    )
    health_down_s = await health_down
    during = emulator.stats()
    assert (during.identity_registrations, during.task_registrations) == (1, 2)
    for replica in fleet.replicas:
        assert replica.events("store.degraded"), replica.name

    # Redis comes back (empty, like a fresh node): everything recovers without a restart.
    await asyncio.to_thread(redis_process.start)
    health_back = asyncio.create_task(
        wait_until(
            lambda: all_health(fleet, STORE_HEALTH, SERVING),
            within=8.0,
            what="store health SERVING again on every replica",
        )
    )

    async def cold_thread_served() -> bool:
        results = await asyncio.gather(
            *(
                outcome(r, pb.GetAuthorizationRequest(thread_id="after"), 5.0)
                for r in fleet.replicas
            )
        )
        return all(code == "OK" for _a, code, _r, _s in results)

    calls_back_s = await wait_until(
        cold_thread_served, within=10.0, what="cold calls succeed again"
    )
    recovered = await asyncio.gather(*(r.stub.GetAuthorization(background) for r in fleet.replicas))
    assert {r.authorization.scheme for r in recovered} == {pb.SCHEME_AGENT_ASSERTION}
    assert len({r.authorization.task_id for r in recovered}) == 1
    assert (await call_protected(emulator.base_url, recovered[0].authorization)).status_code == 200
    health_back_s = await health_back
    after = emulator.stats()
    # The empty Redis lost the background task: exactly one replacement fleet-wide, plus the thread.
    assert (after.identity_registrations, after.task_registrations) == (1, 4)
    for replica in fleet.replicas:
        assert replica.running
        assert replica.events("store.recovered"), replica.name
    fleet_report(
        warm_calls_ok=warm_ok,
        warm_errors=sum(warm_errors.values()),
        cold_calls=len(cold),
        cold_unavailable=sum(c[1] == "UNAVAILABLE" for c in cold),
        cold_max_latency_s=cold_max,
        task_registrations_during_outage=during.task_registrations - before.task_registrations,
        health_not_serving_after_s=health_down_s,
        calls_recovered_after_s=calls_back_s,
        health_serving_after_s=health_back_s,
    )


# -- control plane failing -------------------------------------------------------------------------

FAULTS = {
    "http-503": {"status": 503},
    "connection-reset": {"reset_connection": True},
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_controlplane_failure_falls_back_then_recovers(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
    fault: str,
) -> None:
    """Task registration keeps failing: background → Bearer (TASK_REGISTRATION_UNAVAILABLE), thread
    → UNAVAILABLE; once the fault is cleared, the next calls get assertions, no restart needed.

    Two failed registrations stay below the circuit breaker's threshold (3), so "the next call"
    really is the next one (the breaker itself is ``test_circuit.py``'s subject).
    """
    fleet = await start_fleet(redis_url=redis_url, identity=identity_name, replicas=1)
    replica = fleet[0]
    await emulator_control(
        emulator, "faults", {"endpoint": "register_task", "count": 1000, **FAULTS[fault]}
    )
    bg, code, _reason, bg_s = await outcome(replica, pb.GetAuthorizationRequest(), 30.0)
    assert code == "OK"
    assert bg is not None
    assert bg.scheme == pb.SCHEME_BEARER
    assert bg.fallback_reason == pb.FALLBACK_REASON_TASK_REGISTRATION_UNAVAILABLE
    assert bg.header_value == "Bearer dev-access-token"
    _none, thread_code, thread_reason, thread_s = await outcome(
        replica, pb.GetAuthorizationRequest(thread_id="t-1"), 30.0
    )
    assert (thread_code, thread_reason) == ("UNAVAILABLE", "TASK_REGISTRATION_UNAVAILABLE")
    failing = emulator.stats()
    assert failing.task_registrations == 0
    attempts = failing.requests_by_endpoint["register_task"]
    assert attempts > 2  # the client retried the registrations (two calls, several attempts)
    assert replica.events("fallback.bearer")

    await emulator_control(emulator, "reset", {})  # clears faults (and counters)
    bg_after, code, _reason, _s = await outcome(replica, pb.GetAuthorizationRequest(), 30.0)
    thread_after, thread_code, _reason, _s = await outcome(
        replica, pb.GetAuthorizationRequest(thread_id="t-1"), 30.0
    )
    assert (code, thread_code) == ("OK", "OK")
    assert bg_after is not None
    assert thread_after is not None
    assert bg_after.scheme == thread_after.scheme == pb.SCHEME_AGENT_ASSERTION
    for auth in (bg_after, thread_after):
        assert (await call_protected(emulator.base_url, auth)).status_code == 200
    assert emulator.stats().task_registrations == 2
    assert replica.running
    fleet_report(
        fault=fault,
        register_task_attempts=attempts,
        background_fallback_s=bg_s,
        thread_unavailable_s=thread_s,
        task_registrations_after_clear=2,
    )


async def test_slow_controlplane_beyond_timeouts(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
) -> None:
    """A task registration slower than the worker's deadline and than the broker's own HTTP timeout.

    The worker with a 1 s deadline gets DEADLINE_EXCEEDED at once; the registration goes on for the
    other callers. The broker's control-plane client gives up on the hung exchange after its 15 s
    per-exchange deadline (``ControlPlaneTimeouts``; not configurable, hence the test's length),
    retries, and a patient caller gets an assertion: one task, registered once.
    """
    fleet = await start_fleet(redis_url=redis_url, identity=identity_name, replicas=1)
    replica = fleet[0]
    await emulator_control(
        emulator, "faults", {"endpoint": "register_task", "count": 1, "delay_seconds": 25}
    )
    impatient, patient = await asyncio.gather(
        outcome(replica, pb.GetAuthorizationRequest(), 1.0),
        outcome(replica, pb.GetAuthorizationRequest(), 40.0),
    )
    assert impatient[1] == "DEADLINE_EXCEEDED"
    assert impatient[3] < 2.0
    auth, code, _reason, patient_s = patient
    assert code == "OK"
    assert auth is not None
    assert auth.scheme == pb.SCHEME_AGENT_ASSERTION
    assert 14.0 < patient_s < 25.0  # cut at the client's deadline, not at the emulator's delay
    retries = replica.events("controlplane.retry")
    assert retries
    assert retries[0]["operation"] == "register_task"
    assert retries[0]["previous_status"] is None  # no HTTP answer: the client's timeout fired
    stats = emulator.stats()
    assert stats.task_registrations == 1  # the hung attempt died with its connection
    assert stats.requests_by_endpoint["register_task"] == 2
    assert (await call_protected(emulator.base_url, auth)).status_code == 200
    fleet_report(
        impatient=impatient[1],
        impatient_s=impatient[3],
        patient_s=patient_s,
        task_registrations=stats.task_registrations,
        register_task_requests=stats.requests_by_endpoint["register_task"],
    )


# -- corrupt values in Redis -----------------------------------------------------------------------


async def test_corrupt_values_are_discarded_and_reestablished(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    identity_name: str,
    fleet_report: Report,
) -> None:
    """Garbage in the cached assertion, the background task hash and the identity hash: each is
    logged (``store.corrupt_value``, a warning), deleted and re-established; never served; no crash.

    Replica A writes the shared state; replicas B and C have nothing in memory, so their first call
    reads what is in Redis; a restarted replica reads the identity again.
    """
    fleet = await start_fleet(redis_url=redis_url, identity=identity_name, replicas=3)
    a, b, c = fleet.replicas
    request = pb.GetAuthorizationRequest()
    first = (await a.stub.GetAuthorization(request)).authorization
    runtime_id, task_id = first.agent_runtime_id, first.task_id
    identity_key = keys.identity_key(identity_name)
    task_key = keys.task_key(identity_name, runtime_id, "background")
    assertion_key = keys.assertion_key(identity_name, task_id)
    served: list[pb.Authorization] = [first]

    def discarded(replica: Replica, key: str) -> Awaitable[dict[str, Any]]:
        return replica.wait_for_event(
            "store.corrupt_value",
            within=5,
            where=lambda e: (
                (e.get("key"), e.get("discarded"), e.get("level")) == (key, True, "warning")
            ),
        )

    client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        # 1. The cached assertion: garbage instead of a sealed blob. B re-mints for the same task.
        assert await client.exists(assertion_key) == 1
        await client.set(assertion_key, b"\x00garbage-not-sealed", px=60_000)
        one = (await b.stub.GetAuthorization(request)).authorization
        served.append(one)
        assert (one.agent_runtime_id, one.task_id) == (runtime_id, task_id)
        await discarded(b, assertion_key)

        # 2. The background task hash: fields that do not parse. C registers a new task.
        await client.hset(task_key, mapping={"task_id": b"\xff\xfe", "registered_at": b"soon"})
        two = (await c.stub.GetAuthorization(request)).authorization
        served.append(two)
        assert two.agent_runtime_id == runtime_id
        assert two.task_id not in (task_id, "\ufffd\ufffd")
        await discarded(c, task_key)
        assert emulator.stats().task_registrations == 2

        # 3. The identity hash: the sealed private key cut in half. A restarted replica must
        # discard the record and register a new identity (and task).
        sealed = await client.hget(identity_key, "private_key")
        assert sealed
        await client.hset(identity_key, "private_key", sealed[: len(sealed) // 2])
        await a.restart()
        three = (await a.stub.GetAuthorization(request)).authorization
        served.append(three)
        assert three.agent_runtime_id != runtime_id
        await discarded(a, identity_key)
        assert await client.hget(identity_key, "runtime_id") == three.agent_runtime_id.encode()
    finally:
        await client.aclose()

    stats = emulator.stats()
    assert (stats.identity_registrations, stats.task_registrations) == (2, 3)
    # Every header served is a real assertion the control plane accepts (tasks are not revoked by
    # a discard, so the earlier ones still verify).
    for auth in served:
        envelope = parse_assertion(auth.header_value)
        assert (envelope.agent_runtime_id, envelope.task_id) == (
            auth.agent_runtime_id,
            auth.task_id,
        )
        assert (await call_protected(emulator.base_url, auth)).status_code == 200
    for replica in fleet.replicas:
        assert replica.running, replica.name
        assert "Traceback" not in replica.stderr_path.read_text(errors="replace")
    assert not fleet.events("rpc.internal_error")
    fleet_report(
        corrupt_values_logged=len(fleet.events("store.corrupt_value")),
        identity_registrations=stats.identity_registrations,
        task_registrations=stats.task_registrations,
        internal_errors=len(fleet.events("rpc.internal_error")),
    )
