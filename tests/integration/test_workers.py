"""``serve --workers N``: several broker processes on one port under one supervising parent.

The process tests run real ``credential-broker serve --workers 2`` processes (``tests/fixtures/fleet.py``
with one replica, whose process is the supervisor), a real Redis and the in-process emulator over
HTTP. Which worker answered is read from each worker's own ``/metrics`` (worker *i* serves the ops
listener on its own port, named in its ``broker.started`` line). The kernel spreads *connections*
over the workers, so the tests call through many channels, each with its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.catalog import problems
from broker.config import available_cpus, load_settings
from broker.dashboard import Aggregator
from broker.errors import ConfigError
from broker.supervisor import RESTART_DELAY_MIN_S, restart_delay, worker_settings
from cb_emulator import Emulator
from tests.conftest import free_port
from tests.fixtures.fleet import STOP_MARGIN_S, Replica, Report, StartFleet, wait_until

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 30.0
WORKERS = {
    "BROKER_WORKERS": "2",
    "BROKER_OPS_LISTEN": "127.0.0.1:0",
    "BROKER_STATS_INTERVAL": "0.5",
}
CONNECTIONS = 16
"""Channels per spread: the chance that all land on one of two workers is 2 ** -15."""
START_S = 20.0


# -- helpers ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connections(address: str, count: int = CONNECTIONS) -> AsyncIterator[list[Any]]:
    """``count`` stubs, each on a channel with a connection of its own (no shared subchannel)."""
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count)
    ]
    try:
        yield [pb_grpc.CredentialBrokerStub(channel) for channel in channels]
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def _workers(replica: Replica) -> dict[int, dict[str, Any]]:
    """The latest ``broker.started`` line of each worker index in the replica's current run."""
    found: dict[int, dict[str, Any]] = {}
    for entry in replica.events("broker.started"):
        found[int(entry["worker"])] = entry
    return found


async def _wait_for_workers(replica: Replica, count: int = 2) -> dict[int, dict[str, Any]]:
    await wait_until(
        lambda: len(_workers(replica)) == count, within=START_S, what=f"{count} workers started"
    )
    return _workers(replica)


async def _served(ops_listen: str) -> int:
    """GetAuthorization calls one worker answered with OK, from its own ``/metrics``."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://{ops_listen}/metrics")).text
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "broker_rpcs_total"
        and sample.labels.get("method") == "GetAuthorization"
        and sample.labels.get("code") == "OK"
    )


async def _call_everywhere(address: str, calls_per_connection: int = 2) -> int:
    """Background-task calls over fresh connections; how many were answered (all, or it raises)."""
    request = pb.GetAuthorizationRequest()
    async with _connections(address) as stubs:
        replies = await asyncio.gather(
            *(
                stub.GetAuthorization(request, timeout=CALL_TIMEOUT_S)
                for stub in stubs
                for _ in range(calls_per_connection)
            )
        )
    assert {r.authorization.scheme for r in replies} == {pb.SCHEME_AGENT_ASSERTION}
    return len(replies)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _stats_since(replica: Replica, served: list[int]) -> list[dict[str, Any]]:
    """``broker.stats`` lines whose GetAuthorization count has reached the worker's ``served``."""
    return [
        e
        for e in replica.events("broker.stats")
        if isinstance(e.get("worker"), int)
        and e.get("rpcs_by_method", {}).get("GetAuthorization", 0) >= served[e["worker"]]
    ]


def _from_worker(entry: dict[str, Any]) -> bool:
    """A line a worker's broker wrote (the supervisor's own events are ``supervisor.*``)."""
    return not str(entry.get("event", "")).startswith("supervisor.")


def _assert_catalogued(replica: Replica) -> None:
    """Every line the supervisor and its workers wrote matches the event catalogue."""
    found = [
        f"{entry.get('event')}: {problem}"
        for entry in replica.events(all_runs=True)
        for problem in problems(entry)
    ]
    assert not found, "\n".join(found[:20])


async def _start(start_fleet: StartFleet, redis_url: str, identity: str) -> Replica:
    fleet = await start_fleet(redis_url=redis_url, identity=identity, replicas=1, env=WORKERS)
    return fleet[0]


# -- settings ---------------------------------------------------------------------------------------


def _settings(**env: str) -> Any:
    return load_settings({"BROKER_LISTEN": "127.0.0.1:50051", **env})


REDIS = {"BROKER_REDIS_URL": "redis://127.0.0.1:6379/0"}


class TestWorkerSettings:
    def test_auto_is_one_on_the_embedded_store(self) -> None:
        """Without Redis the default is one worker: state in one process cannot be shared."""
        assert _settings().workers == 1

    def test_auto_is_every_available_cpu_with_redis(self) -> None:
        """With Redis the default is one worker per CPU this process may use."""
        assert _settings(**REDIS).workers == available_cpus()

    def test_auto_is_one_on_any_free_port(self) -> None:
        """Port 0 would give each worker a port of its own, so the default stays at one."""
        assert _settings(**REDIS, BROKER_LISTEN="127.0.0.1:0").workers == 1

    def test_several_workers_on_the_embedded_store_are_refused(self) -> None:
        """An explicit N > 1 without Redis is a ConfigError that says why."""
        with pytest.raises(ConfigError, match=r"^BROKER_WORKERS: 2 workers need a shared store"):
            _settings(BROKER_WORKERS="2")

    def test_several_workers_on_any_free_port_are_refused(self) -> None:
        """An explicit N > 1 needs a named port to share."""
        with pytest.raises(ConfigError, match=r"BROKER_LISTEN must name it"):
            _settings(**REDIS, BROKER_WORKERS="2", BROKER_LISTEN="127.0.0.1:0")

    def test_a_malformed_count_is_refused(self) -> None:
        """Zero or a word other than auto names the setting."""
        for value in ("0", "two"):
            with pytest.raises(ConfigError, match=r"^BROKER_WORKERS: "):
                _settings(**REDIS, BROKER_WORKERS=value)

    def test_each_worker_has_its_own_ops_port(self) -> None:
        """Worker i serves the ops listener on the configured port + i; port 0 stays 0."""
        settings = _settings(**REDIS, BROKER_WORKERS="3", BROKER_OPS_LISTEN="9090")
        ports = [worker_settings(settings, i).ops_listen for i in range(3)]
        assert ports == ["127.0.0.1:9090", "127.0.0.1:9091", "127.0.0.1:9092"]
        any_port = _settings(**REDIS, BROKER_WORKERS="3", BROKER_OPS_LISTEN="0")
        assert worker_settings(any_port, 2).ops_listen == "127.0.0.1:0"

    def test_ops_ports_past_65535_are_refused(self) -> None:
        """The offset ports must exist."""
        with pytest.raises(ConfigError, match=r"^BROKER_OPS_LISTEN: .*65535"):
            _settings(**REDIS, BROKER_WORKERS="4", BROKER_OPS_LISTEN="65534")

    def test_restart_delay_doubles_up_to_its_bound(self) -> None:
        """0.5 s after a first quick exit, doubling per exit in a row, never above 30 s."""
        delays = [restart_delay(n) for n in (1, 2, 3, 20)]
        assert delays == [RESTART_DELAY_MIN_S, 1.0, 2.0, 30.0]


# -- the command, refused or failing --------------------------------------------------------------


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run(
        [sys.executable, "-m", "broker", "serve", *args],
        env={**base, "BROKER_LISTEN": f"127.0.0.1:{free_port()}", **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


class TestWorkerCommand:
    def test_workers_on_the_embedded_store_are_refused(self) -> None:
        """``serve --workers 2`` without Redis exits 2 with one line saying why, starting nothing."""
        done = _serve({}, "--workers", "2")
        assert done.returncode == 2
        assert done.stderr.startswith(
            "credential-broker: configuration error: BROKER_WORKERS: 2 workers need a shared "
            "store (BROKER_REDIS_URL)"
        ), done.stderr
        assert [line["event"] for line in _lines(done.stdout)] == ["config.invalid"]

    def test_a_worker_that_cannot_start_stops_the_supervisor(self) -> None:
        """A worker that fails before it serves (no KEK) ends the supervisor with its status,
        and the error is reported once: the other worker never starts."""
        done = _serve({"BROKER_REDIS_URL": "redis://127.0.0.1:1/0"}, "--workers", "2")
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("BROKER_KEK_FILE: Redis state must be sealed") == 1, done.stderr
        lines = _lines(done.stdout)
        events = [line["event"] for line in lines]
        assert events[-3:] == [
            "supervisor.worker_failed",
            "supervisor.stopping",
            "supervisor.stopped",
        ], events
        assert lines[-3]["worker"] == 0
        assert lines[-3]["exit_code"] == 2
        assert lines[-1]["exit_code"] == 2
        assert not [p for line in lines for p in problems(line)]


# -- supervised workers -----------------------------------------------------------------------------


@pytest.mark.slow
class TestSupervisedWorkers:
    async def test_both_workers_serve_one_port(
        self, start_fleet: StartFleet, redis_url: str, identity_name: str
    ) -> None:
        """Two workers, children of the supervisor, bind one port and both answer calls."""
        replica = await _start(start_fleet, redis_url, identity_name)
        workers = await _wait_for_workers(replica)
        assert {w["listen"] for w in workers.values()} == {replica.address}
        assert len({w["pid"] for w in workers.values()}) == 2
        assert {_parent_of(w["pid"]) for w in workers.values()} == {replica.pid}
        assert len({w["ops_listen"] for w in workers.values()}) == 2
        await replica.wait_for_event("supervisor.started", within=START_S)

        answered = await _call_everywhere(replica.address)

        served = [await _served(workers[i]["ops_listen"]) for i in (0, 1)]
        assert sum(served) == answered
        assert min(served) > 0, f"one worker answered everything: {served}"
        _assert_catalogued(replica)

        # Every line a worker writes names it, so one merged stream (kubectl logs) keeps the
        # workers apart: the dashboard shows two replicas whose RPCs add up to the calls made.
        await wait_until(
            lambda: {e.get("worker") for e in _stats_since(replica, served)} == {0, 1},
            within=START_S,
            what="a broker.stats line from each worker after the calls",
        )
        pids = {w["pid"]: i for i, w in workers.items()}
        lines = [e for e in replica.events() if e.get("pid") in pids or "worker" in e]
        assert all(e.get("worker") == pids.get(e.get("pid"), e.get("worker")) for e in lines)
        unnamed = [e["event"] for e in replica.events() if _from_worker(e) and "worker" not in e]
        assert not unnamed, f"worker lines without their worker: {unnamed[:5]}"
        aggregator = Aggregator(window=600)
        for entry in replica.events():
            aggregator.feed_text(json.dumps(entry), time.time(), default_replica="pod")
        shown = aggregator.snapshot(time.time())["replicas"]
        by_worker = {
            name: view["rpcs"]["by_method"].get("GetAuthorization", 0)
            for name, view in shown.items()
            if name.startswith("pod/worker-")
        }
        assert sorted(by_worker) == ["pod/worker-0", "pod/worker-1"]
        assert sorted(by_worker.values()) == sorted(served)

    async def test_a_killed_worker_is_replaced(
        self, start_fleet: StartFleet, redis_url: str, identity_name: str
    ) -> None:
        """A worker killed with SIGKILL is replaced after the shortest backoff while the port keeps
        answering, and the new worker serves too."""
        replica = await _start(start_fleet, redis_url, identity_name)
        killed = (await _wait_for_workers(replica))[1]
        await _call_everywhere(replica.address)

        os.kill(killed["pid"], signal.SIGKILL)
        exited = await replica.wait_for_event(
            "supervisor.worker_exited", within=START_S, where=lambda e: e["pid"] == killed["pid"]
        )
        assert (exited["worker"], exited["exit_code"]) == (1, -signal.SIGKILL)
        assert exited["restart_in_s"] == RESTART_DELAY_MIN_S
        # The survivor answers every new connection while worker 1 is gone or starting again.
        assert await _call_everywhere(replica.address) == 2 * CONNECTIONS

        await wait_until(
            lambda: _workers(replica)[1]["pid"] != killed["pid"],
            within=START_S,
            what="worker 1 started again",
        )
        replacement = _workers(replica)[1]
        assert _parent_of(replacement["pid"]) == replica.pid
        assert await _call_everywhere(replica.address) == 2 * CONNECTIONS
        assert await _served(replacement["ops_listen"]) > 0
        assert replica.running
        _assert_catalogued(replica)

    async def test_sigterm_drains_every_worker(
        self, start_fleet: StartFleet, emulator: Emulator, redis_url: str, identity_name: str
    ) -> None:
        """SIGTERM reaches every worker; the calls in flight on each finish, and the supervisor
        exits 0 within the grace period."""
        replica = await _start(start_fleet, redis_url, identity_name)
        workers = await _wait_for_workers(replica)
        await _call_everywhere(replica.address)  # identity and background task registered
        before = {w["pid"]: await _served(w["ops_listen"]) for w in workers.values()}
        registered = emulator.stats().requests_by_endpoint.get("register_task", 0)
        emulator.inject_fault("register_task", delay_seconds=1.5, count=CONNECTIONS)

        async with _connections(replica.address) as stubs:
            calls = [
                asyncio.ensure_future(
                    stub.GetAuthorization(
                        pb.GetAuthorizationRequest(thread_id=f"drain-{n}"), timeout=CALL_TIMEOUT_S
                    )
                )
                for n, stub in enumerate(stubs)
            ]
            await wait_until(
                lambda: (
                    emulator.stats().requests_by_endpoint.get("register_task", 0)
                    == registered + CONNECTIONS
                ),
                within=START_S,
                what="every thread registration in flight at the emulator",
            )
            started = time.monotonic()
            replica.send_sigterm()
            replies = await asyncio.gather(*calls)
            code = await replica.wait_exit(replica.grace_period + STOP_MARGIN_S)
            took = time.monotonic() - started

        assert {r.authorization.task_kind for r in replies} == {pb.TASK_KIND_THREAD}
        assert code == 0, replica.tail()
        assert took < replica.grace_period + STOP_MARGIN_S
        assert len(replica.events("broker.stopping")) == 2
        stopped = {line["pid"]: line for line in replica.events("broker.stopped")}
        assert set(stopped) == set(before)
        # Each worker drained calls that were in flight when SIGTERM came.
        drained = {
            pid: line["rpcs_by_method"]["GetAuthorization"] - before[pid]
            for pid, line in stopped.items()
        }
        assert sum(drained.values()) == CONNECTIONS
        assert min(drained.values()) > 0, drained
        assert {_alive(w["pid"]) for w in workers.values()} == {False}
        assert replica.events("supervisor.stopping")[0]["reason"] == "SIGTERM"
        assert replica.events("supervisor.stopped")[0]["exit_code"] == 0
        _assert_catalogued(replica)

    async def test_a_killed_supervisor_takes_its_workers_along(
        self, start_fleet: StartFleet, redis_url: str, identity_name: str
    ) -> None:
        """When the supervisor dies (SIGKILL), the kernel stops its workers and they drain, so no
        orphan keeps the port."""
        replica = await _start(start_fleet, redis_url, identity_name)
        workers = await _wait_for_workers(replica)

        await replica.kill()

        try:
            await wait_until(
                lambda: not any(_alive(w["pid"]) for w in workers.values()),
                within=replica.grace_period + STOP_MARGIN_S,
                what="both workers exited after their supervisor",
            )
        finally:  # orphans would outlive the test
            for worker in workers.values():
                if _alive(worker["pid"]):
                    os.kill(worker["pid"], signal.SIGKILL)
        assert len(replica.events("broker.stopped")) == 2
        async with _connections(replica.address, 1) as (stub,):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetAuthorization(pb.GetAuthorizationRequest(), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_registrations_stay_once_per_fleet(
        self,
        start_fleet: StartFleet,
        emulator: Emulator,
        redis_url: str,
        identity_name: str,
        fleet_report: Report,
    ) -> None:
        """Cold: 2 workers x 400 concurrent callers (background and 20 threads) register the
        identity once, the background task once and each thread's task once."""
        replica = await _start(start_fleet, redis_url, identity_name)
        workers = await _wait_for_workers(replica)
        threads = [f"thread-{n:02d}" for n in range(20)]
        requests = [pb.GetAuthorizationRequest() for _ in range(200)] + [
            pb.GetAuthorizationRequest(thread_id=t) for t in threads for _ in range(10)
        ]
        errors: Counter[str] = Counter()

        async with _connections(replica.address) as stubs:

            async def call(n: int, request: pb.GetAuthorizationRequest) -> pb.Authorization | None:
                try:
                    reply = await stubs[n % len(stubs)].GetAuthorization(
                        request, timeout=CALL_TIMEOUT_S
                    )
                except grpc.aio.AioRpcError as exc:
                    errors[f"{exc.code().name}: {exc.details()}"] += 1
                    return None
                return reply.authorization

            started = time.perf_counter()
            results = await asyncio.gather(*(call(n, r) for n, r in enumerate(requests)))
            wall = time.perf_counter() - started

        assert not errors, dict(errors)
        stats = emulator.stats()
        assert stats.identity_registrations == 1
        assert stats.task_registrations == 1 + len(threads)
        assert len({a.agent_runtime_id for a in results if a is not None}) == 1
        task_ids = {(r.thread_id, a.task_id) for r, a in zip(requests, results, strict=True) if a}
        assert len(task_ids) == 1 + len(threads), "a slot got two tasks"
        assert len(replica.events("identity.registered")) == 1
        assert len(replica.events("task.registered")) == 1 + len(threads)
        served = [await _served(workers[i]["ops_listen"]) for i in (0, 1)]
        assert sum(served) == len(requests)
        assert min(served) > 0, f"one worker answered everything: {served}"
        fleet_report(
            workers=2,
            calls=len(requests),
            served_per_worker=served,
            identity_registrations=stats.identity_registrations,
            task_registrations=stats.task_registrations,
            wall_s=wall,
        )
