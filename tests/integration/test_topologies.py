"""Redis Sentinel and Redis Cluster for real: ``redis-server`` processes on free loopback ports.

The shared Store contract (``test_store_contract``) runs unchanged against a 3-node cluster
(``redis+cluster://``) and against a master + replica + sentinel (``redis+sentinel://``). Then the
Sentinel master is killed: the store follows the failover, and a broker under concurrent load
answers every warm request from L1, refuses Redis-bound ones only as UNAVAILABLE, registers nothing
again, and within a stated bound reports its store SERVING and registers a new thread task (the
figures go to the terminal summary). A broker also issues an assertion over the cluster that
verifies at the emulator. Every process started here is stopped in a finalizer. (The URL parsing
tests need no server.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio.cluster import RedisCluster

from broker import app as broker_app
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.adapters.sealing import KekSealer
from broker.adapters.store import RedisStore, keys
from broker.adapters.store._redis_client import (
    SentinelMaster,
    Topology,
    describe_url,
    make_client,
    parse_topology,
)
from broker.core.credentials.model import BACKGROUND, TaskRecord, task_slot
from broker.errors import ConfigError, StoreUnavailable
from broker.transport.grpc.server import STORE_HEALTH
from cb_emulator import Emulator
from tests.conftest import ManualClock, free_port
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.fixtures.fleet import Report
from tests.integration import test_store_contract as contract
from tests.integration.helpers import call_protected

# The URL tests below need no server; every class that starts processes is marked slow.

KEK = KekSealer([("test", bytes(range(32)))])
SERVICE = "brokermaster"
_READY_S = 15.0
_DOWN_AFTER_MS = 3000  # the failover tests' sentinel: how long a dead master goes unnoticed


class RedisProcess:
    """One ``redis-server`` (or sentinel) child process on 127.0.0.1 with extra arguments."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: topology tests need it", pytrace=False)
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.argv = [binary, *extra, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.argv += ["--dir", str(directory), "--logfile", str(directory / "redis.log")]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and return once it answers PING (bounded)."""
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + _READY_S
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis on port {self.port} did not start: {self.log_tail()}")
                time.sleep(0.02)  # waiting for a child process to listen: nothing to await
        finally:
            client.close()

    def log_tail(self) -> str:
        """The end of the server's log file."""
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-1500:] if log.exists() else ""

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the process (``sig``, then SIGKILL) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis wants it at most 55535."""
    for _ in range(200):
        port = random.randint(20000, 55535)  # noqa: S311  (choosing a port, not a secret)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    pytest.fail("no free port pair for a cluster node")


def _wait_until(check: object, what: str, timeout: float = _READY_S) -> None:
    """Poll ``check()`` until true (bounded); external processes converge on their own time."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cluster:
    """A running 3-master Redis Cluster."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming two of the nodes as startup nodes."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])


def _cluster_ok(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        info = client.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False
    finally:
        client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


@pytest.fixture(name="cluster", scope="module")
def fixture_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three cluster-enabled nodes joined with ``redis-cli --cluster create``; stopped after."""
    root = tmp_path_factory.mktemp("cluster")
    nodes = [
        RedisProcess(
            root / f"node{i}",
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--save", "", "--appendonly", "no", "--cluster-node-timeout", "2000"),
            port=_cluster_port(),
        )
        for i in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed: the cluster test needs it", pytrace=False)
        subprocess.run(
            [
                *(cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for node in nodes:
            _wait_until(lambda port=node.port: _cluster_ok(port), "cluster_state:ok")
        yield Cluster(nodes)
    finally:
        for node in nodes:
            node.stop()


@dataclass
class SentinelSet:
    """A master, one replica and one sentinel monitoring them as ``SERVICE``."""

    master: RedisProcess
    replica: RedisProcess
    sentinel: RedisProcess

    @property
    def url(self) -> str:
        """``redis+sentinel://`` for the service."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}/0"

    def stop(self) -> None:
        """Stop every process."""
        for process in (self.sentinel, self.replica, self.master):
            process.stop()


def _replica_ready(master_port: int, sentinel_port: int) -> bool:
    master = redis.Redis(port=master_port, socket_timeout=1)
    sentinel = redis.Redis(port=sentinel_port, socket_timeout=1)
    try:
        synced = master.info("replication").get("connected_slaves", 0) >= 1
        return synced and bool(sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE))
    except redis.RedisError:
        return False
    finally:
        master.close()
        sentinel.close()


def start_sentinel_set(root: Path, down_after_ms: int = 500) -> SentinelSet:
    """Start the three processes and wait until the sentinel knows the in-sync replica.

    The sentinel fails the master over ``down_after_ms`` after it stops answering.
    """
    plain = ("--save", "", "--appendonly", "no")
    master = RedisProcess(root / "master", *plain)
    replica = RedisProcess(root / "replica", *plain, "--replicaof", "127.0.0.1", str(master.port))
    config = root / "sentinel.conf"
    config.write_text(
        f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
        f"sentinel failover-timeout {SERVICE} 3000\n"
        f"sentinel parallel-syncs {SERVICE} 1\n"
    )
    sentinel = RedisProcess(root / "sentinel")
    sentinel.argv[1:1] = [str(config), "--sentinel"]
    processes = SentinelSet(master, replica, sentinel)
    try:
        master.start()
        replica.start()
        sentinel.start()
        _wait_until(lambda: _replica_ready(master.port, sentinel.port), "replica and sentinel")
    except BaseException:
        processes.stop()
        raise
    return processes


@pytest.fixture(name="own_sentinel_set")
def fixture_own_sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A master + replica + sentinel for one test that kills its master; stopped after.

    The master is declared down after _DOWN_AFTER_MS: an outage of a few seconds, long enough for a
    broker that papered over store errors to get as far as registering something.
    """
    processes = start_sentinel_set(tmp_path, down_after_ms=_DOWN_AFTER_MS)
    try:
        yield processes
    finally:
        processes.stop()


def _wait_replicated(processes: SentinelSet, key: str) -> None:
    """Return once the replica holds ``key`` (so a failover keeps it)."""
    replica = redis.Redis(port=processes.replica.port, socket_timeout=1)
    try:
        _wait_until(lambda: replica.exists(key), "the replica to hold " + key)
    finally:
        replica.close()


@pytest.fixture(name="sentinel_set", scope="module")
def fixture_sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A master + replica + sentinel shared by the contract tests; stopped after."""
    processes = start_sentinel_set(tmp_path_factory.mktemp("sentinel"))
    try:
        yield processes
    finally:
        processes.stop()


@contextlib.asynccontextmanager
async def broker_over(
    start_broker: StartBroker, store: RedisStore, **options: Any
) -> AsyncIterator[RunningBroker]:
    """A broker on ``store`` (which it takes over): the broker stops before the store closes, on
    every way out, since a broker must never keep running on a closed store."""
    try:
        broker = await start_broker(store=store, **options)
        try:
            yield broker
        finally:
            await broker.close()
    finally:
        await store.close()


@pytest.fixture(name="topology_url", params=["cluster", "sentinel"])
def fixture_topology_url(request: pytest.FixtureRequest) -> str:
    """The URL of each topology in turn."""
    if request.param == "cluster":
        return str(request.getfixturevalue("cluster").url)
    return str(request.getfixturevalue("sentinel_set").url)


@pytest.fixture(name="store")
async def fixture_store(topology_url: str) -> AsyncIterator[RedisStore]:
    """A RedisStore built from the topology's URL, closed after the test."""
    store = RedisStore.from_url(topology_url, KEK)
    yield store
    await store.close()


@pytest.fixture(name="identity")
def fixture_identity() -> str:
    """A fresh identity name (the topology's processes are thrown away afterwards)."""
    return "t" + uuid.uuid4().hex


@pytest.fixture(name="expiry")
async def fixture_expiry(
    request: pytest.FixtureRequest, topology_url: str, clock: ManualClock
) -> AsyncIterator[contract.Expiry]:
    """TTL checks through a raw client of the same topology."""
    raw: redis.asyncio.Redis | RedisCluster
    if topology_url.startswith("redis+cluster://"):
        node = request.getfixturevalue("cluster").nodes[0]
        raw = RedisCluster(host="127.0.0.1", port=node.port)
    else:
        master = request.getfixturevalue("sentinel_set").master
        raw = redis.asyncio.Redis(port=master.port)
    yield contract.Expiry(clock, raw)  # type: ignore[arg-type]  # duck-typed: pttl and pexpire
    await raw.aclose()


# The shared contract, collected again here with the fixtures above.
@pytest.mark.slow
@pytest.mark.integration
class TestContractBasics(contract.TestBasics):
    """The Store basics on each topology."""


@pytest.mark.slow
@pytest.mark.integration
class TestContractIdentity(contract.TestIdentity):
    """Identity round trips on each topology."""


@pytest.mark.slow
@pytest.mark.integration
class TestContractTasks(contract.TestTasks):
    """Task slots on each topology."""


@pytest.mark.slow
@pytest.mark.integration
class TestContractAssertions(contract.TestAssertions):
    """First-writer-wins assertions on each topology."""


@pytest.mark.slow
@pytest.mark.integration
class TestContractLocks(contract.TestLocks):
    """Single-flight locks on each topology."""


@pytest.mark.slow
@pytest.mark.integration
class TestContractInvalidations(contract.TestInvalidations):
    """Invalidation fan-out on each topology (sharded pub/sub on the cluster)."""


@pytest.mark.slow
@pytest.mark.integration
class TestClusterLayout:
    async def test_identity_keys_share_one_slot(self, cluster: Cluster) -> None:
        """Every key of one identity hashes to the same cluster slot (the hash tag)."""
        client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        try:
            names = [
                keys.identity_key("acme"),
                keys.task_key("acme", "rt", BACKGROUND),
                keys.task_key("acme", "rt", "thread:t1"),
                keys.assertion_key("acme", "task"),
                keys.lock_key("acme", "register"),
            ]
            slots = {client.keyslot(name) for name in names}
        finally:
            await client.aclose()
        assert len(slots) == 1

    async def test_invalidations_are_sharded(self, cluster: Cluster) -> None:
        """On a cluster the store publishes with SPUBLISH: a sharded subscriber receives it."""
        store = RedisStore.from_url(cluster.url, KEK)
        client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        pubsub = client.pubsub()
        try:
            await client.initialize()
            await pubsub.ssubscribe(keys.INVALIDATION_CHANNEL)
            await store.publish_invalidation("acme", BACKGROUND)
            async with asyncio.timeout(5):
                while True:
                    message = await pubsub.get_sharded_message(timeout=1)
                    if message and message["type"] in ("smessage", b"smessage"):
                        break
            assert message["data"] == b"acme\nbackground"
        finally:
            await pubsub.aclose()
            await client.aclose()
            await store.close()


# -- Sentinel failover -----------------------------------------------------------------------------

# The stated recovery bound, counted from the master's SIGKILL: the sentinel marks the master down
# after _DOWN_AFTER_MS, promotes the replica (about 1 s more, measured on loopback), and the
# broker's store health check runs every _HEALTH_CHECK_S; the rest is room for a loaded 2-core
# machine.
_RECOVERY_S = 12.0
# The broker checks the store every 5 s; this test wants each state of a ~4 s outage seen.
_HEALTH_CHECK_S = 0.2
_WARM_CALLERS = 24  # loop on the background task's header (served from L1)
_THREAD_CALLERS = 8  # loop on thread tasks registered before the failover (served from L1)
_REDIS_BOUND_CALLERS = 4  # want more validity than L1 has left, so they read and write Redis
# Their min_remaining: an in-process copy (served for 30 s from its whole-second issue time) has
# that much left for half a second at most, so most of their calls read and write Redis.
_REDIS_BOUND_MS = 29_500
_WARM_THREADS = 4
_PACE_S = 0.02  # between one caller's calls: steady load that leaves the event loop room
_CALL_TIMEOUT_S = 5.0
_FLOWING_CALLS = 100  # warm answers the load has had before the master is killed
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Tally:
    """What one group of looping callers saw: when each call succeeded and with which scheme, and
    the failures by code."""

    flowing_after: int = 1
    ok_at: list[float] = field(default_factory=list)
    schemes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    flowing: asyncio.Event = field(default_factory=asyncio.Event)

    def succeeded(self, authorization: pb.Authorization) -> None:
        """Count a successful call now; ``flowing`` is set once ``flowing_after`` succeeded."""
        self.ok_at.append(time.monotonic())
        self.schemes[pb.Scheme.Name(authorization.scheme)] += 1
        if len(self.ok_at) >= self.flowing_after:
            self.flowing.set()

    def ok_between(self, start: float, end: float) -> int:
        """Calls that succeeded between two ``time.monotonic()`` readings."""
        return sum(start <= moment <= end for moment in self.ok_at)


async def _call_until(
    stub: pb_grpc.CredentialBrokerStub,
    request: pb.GetAuthorizationRequest,
    tally: Tally,
    stop: asyncio.Event,
) -> None:
    """Call ``request`` every ``_PACE_S`` until ``stop`` is set (each call has a deadline)."""
    while not stop.is_set():
        try:
            reply = await stub.GetAuthorization(request, timeout=_CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] += 1
        else:
            tally.succeeded(reply.authorization)
        await asyncio.sleep(_PACE_S)


class StoreHealth:
    """The broker's store health as its ``grpc.health.v1`` Watch stream reports each change."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.seen: list[tuple[float, int]] = []
        self._changed = asyncio.Condition()
        request = health_pb2.HealthCheckRequest(service=STORE_HEALTH)
        self._call = health_pb2_grpc.HealthStub(channel).Watch(request)
        self._follower = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for reply in self._call:
            async with self._changed:
                self.seen.append((time.monotonic(), reply.status))
                self._changed.notify_all()

    async def first(self, status: int, *, after: float) -> float:
        """When the stream first reported ``status`` at or after ``after`` (waits for it)."""

        def found() -> float | None:
            return next((t for t, s in self.seen if t >= after and s == status), None)

        async with self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        moment = found()
        assert moment is not None
        return moment

    async def aclose(self) -> None:
        """Stop watching."""
        self._call.cancel()
        await asyncio.gather(self._follower, return_exceptions=True)


@pytest.mark.slow
@pytest.mark.integration
class TestSentinelFailover:
    async def test_store_follows_failover(
        self, own_sentinel_set: SentinelSet, fleet_report: Report
    ) -> None:
        """After the master dies the store reads its data from the promoted replica, in time."""
        processes = own_sentinel_set
        store = RedisStore.from_url(processes.url, KEK, socket_timeout=0.5)
        try:
            task = TaskRecord(
                agent_runtime_id="rt",
                task_id="task-1",
                slot=BACKGROUND,
                registered_at=ManualClock().now(),
            )
            await store.save_task("acme", task, None)
            feed = store.invalidations()
            await store.invalidations_ready()
            _wait_replicated(processes, keys.task_key("acme", "rt", BACKGROUND))

            processes.master.stop(signal.SIGKILL)
            started, errors = time.monotonic(), 0
            async with asyncio.timeout(_RECOVERY_S):
                while True:
                    try:
                        loaded = await store.load_task("acme", "rt", BACKGROUND)
                        break
                    except StoreUnavailable:
                        errors += 1
                        await asyncio.sleep(0.1)  # the sentinel promotes on its own schedule
            recovered = time.monotonic() - started
            assert loaded is not None
            assert loaded.task_id == "task-1"
            # The invalidation listener resubscribed on the new master.
            async with asyncio.timeout(_RECOVERY_S):
                await store.invalidations_ready()
                await store.publish_invalidation("acme", BACKGROUND)
                assert await contract.next_for(feed, "acme") == ("acme", BACKGROUND)
            assert recovered < _RECOVERY_S
            fleet_report(seconds_until_read=round(recovered, 2), failed_store_calls=errors)
        finally:
            await store.close()

    async def test_broker_rides_out_failover(
        self,
        own_sentinel_set: SentinelSet,
        start_broker: StartBroker,
        emulator: Emulator,
        monkeypatch: pytest.MonkeyPatch,
        fleet_report: Report,
    ) -> None:
        """Under concurrent load through a failover no warm call fails and nothing registers again;
        the store's health and new thread tasks are back within _RECOVERY_S."""
        monkeypatch.setattr(broker_app, "_HEALTH_INTERVAL_SECONDS", _HEALTH_CHECK_S)
        processes = own_sentinel_set
        store = RedisStore.from_url(processes.url, KEK, socket_timeout=0.5)
        async with broker_over(start_broker, store) as broker:
            stub = broker.stub
            background = pb.GetAuthorizationRequest()
            threads = [
                pb.GetAuthorizationRequest(thread_id=f"t-warm-{i}") for i in range(_WARM_THREADS)
            ]
            # Calls that want more validity than their in-process copy has left go to Redis.
            redis_bound = [
                pb.GetAuthorizationRequest(thread_id=thread_id)
                for thread_id in ("", "t-redis-bound")
            ]
            for request in redis_bound:
                request.min_remaining.FromMilliseconds(_REDIS_BOUND_MS)
            for request in (background, *threads, *redis_bound):
                await stub.GetAuthorization(request)
            record = await store.load_identity("default")
            assert record is not None
            for request in (background, *threads, redis_bound[1]):
                slot = task_slot(request.thread_id)
                task_key = keys.task_key("default", record.agent_runtime_id, slot)
                _wait_replicated(processes, task_key)
            before = emulator.stats()

            health = StoreHealth(broker.channel)
            warm, thread, bound = Tally(flowing_after=_FLOWING_CALLS), Tally(), Tally()
            stop = asyncio.Event()
            load = [
                *(_call_until(stub, background, warm, stop) for _ in range(_WARM_CALLERS)),
                *(
                    _call_until(stub, threads[i % _WARM_THREADS], thread, stop)
                    for i in range(_THREAD_CALLERS)
                ),
                *(
                    _call_until(stub, redis_bound[i % 2], bound, stop)
                    for i in range(_REDIS_BOUND_CALLERS)
                ),
            ]
            callers = [asyncio.create_task(call) for call in load]
            try:
                async with asyncio.timeout(_READY_S):
                    await health.first(SERVING, after=0.0)
                    await warm.flowing.wait()
                    await thread.flowing.wait()

                processes.master.stop(signal.SIGKILL)
                killed = time.monotonic()
                async with asyncio.timeout(_RECOVERY_S):
                    down = await health.first(NOT_SERVING, after=killed)
                    up = await health.first(SERVING, after=down)
                    during = emulator.stats()
                    new_thread = pb.GetAuthorizationRequest(thread_id="t-after-failover")
                    fresh = (
                        await stub.GetAuthorization(new_thread, timeout=_CALL_TIMEOUT_S)
                    ).authorization
                recovered = time.monotonic() - killed
            finally:
                stop.set()
                await asyncio.gather(*callers)
                await health.aclose()
            after = emulator.stats()

            # Warm answers come from L1: none failed, and they kept coming while Redis was down.
            assert warm.errors == Counter()
            assert thread.errors == Counter()
            assert warm.ok_between(down, up) > 0
            assert thread.ok_between(down, up) > 0
            # Calls that need Redis fail as UNAVAILABLE, never another code, and never get a Bearer.
            assert set(bound.errors) <= {"UNAVAILABLE"}
            for tally in (warm, thread, bound):
                assert set(tally.schemes) == {"SCHEME_AGENT_ASSERTION"}
            # Nothing registered again: not the identity, not a task, during or after the failover.
            assert during.identity_registrations == before.identity_registrations
            assert during.task_registrations == before.task_registrations
            assert after.identity_registrations == before.identity_registrations
            assert after.task_registrations == before.task_registrations + 1  # t-after-failover
            # Recovered: health SERVING again and a new thread task registered, within the bound.
            assert recovered < _RECOVERY_S
            assert fresh.scheme == pb.SCHEME_AGENT_ASSERTION
            assert (await call_protected(emulator.base_url, fresh)).status_code == 200
            slot = task_slot("t-after-failover")
            assert await store.load_task("default", record.agent_runtime_id, slot) is not None
            fleet_report(
                callers=len(callers),
                seconds_until_store_down=round(down - killed, 2),
                seconds_until_store_serving=round(up - killed, 2),
                seconds_until_new_thread_task=round(recovered, 2),
                warm_ok=len(warm.ok_at),
                warm_ok_while_down=warm.ok_between(down, up),
                thread_ok=len(thread.ok_at),
                redis_bound_ok=len(bound.ok_at),
                redis_bound_unavailable=bound.errors["UNAVAILABLE"],
            )


@pytest.mark.slow
@pytest.mark.integration
class TestBrokerOnCluster:
    async def test_assertion_over_cluster_store(
        self, cluster: Cluster, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A broker on a cluster-backed store issues an assertion the emulator accepts."""
        store = RedisStore.from_url(cluster.url, KEK)
        async with broker_over(start_broker, store, identity=f"c{uuid.uuid4().hex}") as broker:
            answer = (
                await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
            ).authorization
            assert answer.scheme == pb.SCHEME_AGENT_ASSERTION
            assert (await call_protected(emulator.base_url, answer)).status_code == 200

    async def test_assertion_via_cluster_url(
        self, cluster: Cluster, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """BROKER_REDIS_URL=redis+cluster://… gives a broker whose assertions verify."""
        # start_broker reads the URL through load_settings: a refused URL fails the test here.
        # Its own identity: the cluster is shared by the module's tests, each with its own KEK.
        broker = await start_broker(redis_url=cluster.url, identity=f"c{uuid.uuid4().hex}")
        answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert answer.scheme == pb.SCHEME_AGENT_ASSERTION
        assert (await call_protected(emulator.base_url, answer)).status_code == 200
        assert broker.app.store.shared


class TestTopologyUrls:
    def test_sentinel_url(self) -> None:
        """Several sentinels, the service, the database and URL-encoded credentials are parsed."""
        url = "redis+sentinel://ops:p%40ss@10.0.0.1:26380,sentinel-b/main/2"
        assert parse_topology(url) == Topology(
            "sentinel", (("10.0.0.1", 26380), ("sentinel-b", 26379)), "main", 2, "ops", "p@ss"
        )

    def test_cluster_url(self) -> None:
        """Startup nodes default to port 6379; IPv6 hosts are bracketed; /0 is allowed."""
        url = "redis+cluster://:secret@[::1]:7000,node-b/0"
        assert parse_topology(url) == Topology(
            "cluster", (("::1", 7000), ("node-b", 6379)), password="secret"
        )

    def test_plain_urls_are_not_topologies(self) -> None:
        """redis://, rediss:// and unix:// go to redis-py's own parser."""
        for url in ("redis://h:1/0", "rediss://h", "unix:///run/redis.sock"):
            assert parse_topology(url) is None

    @pytest.mark.parametrize(
        "url",
        [
            "redis+sentinel://h:26379",
            "redis+sentinel://h:26379/svc/db",
            "redis+sentinel://h:26379/svc/0/extra",
            "redis+cluster://h:7000/1",
            "redis+cluster://h:70000",
            "redis+cluster://:7000",
            "redis+cluster://h:7000?ssl=true",
        ],
    )
    def test_malformed_urls(self, url: str) -> None:
        """A malformed topology URL is a ConfigError naming BROKER_REDIS_URL."""
        with pytest.raises(ConfigError, match="BROKER_REDIS_URL"):
            parse_topology(url)

    def test_descriptions_hide_credentials(self) -> None:
        """The description names the topology and its nodes, never the password."""
        sentinel = describe_url("redis+sentinel://u:hunter2@a:1,b:2/main")
        cluster = describe_url("redis+cluster://:hunter2@[::1]:7000")
        assert sentinel == "sentinel main via a:1,b:2"
        assert cluster == "cluster via [::1]:7000"

    async def test_clients(self) -> None:
        """The clients are redis-py's own: a Sentinel-managed master and a RedisCluster."""
        sentinel = make_client(
            "redis+sentinel://127.0.0.1:1/main", socket_timeout=1, connect_timeout=None, retries=0
        )
        cluster = make_client(
            "redis+cluster://127.0.0.1:1", socket_timeout=1, connect_timeout=None, retries=0
        )
        try:
            assert isinstance(sentinel, SentinelMaster)
            assert sentinel.sentinel_manager is not None
            assert isinstance(cluster, RedisCluster)
            assert not sentinel.get_connection_kwargs()["decode_responses"]
        finally:
            await sentinel.aclose()
            await cluster.aclose()
