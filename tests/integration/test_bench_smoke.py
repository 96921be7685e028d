"""``make bench`` in a tiny configuration: real servers, real Redis, real h2load, no mocks.

It runs ``python -m bench`` as ``make bench`` would and checks that every server was measured, that
both ratios (broker/bare, broker/stack-echo) and the latencies are printed, and that the broker's
warm path made no Redis command and signed nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.processes import BenchError, h2load_binary
from bench.watch_streams import read_all
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from tests.fixtures.broker import StartBroker

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--requests", "500", "--rounds", "1"]
BROKERS = ["broker", "broker_caller", "broker_redis"]


@pytest.fixture(name="h2load", scope="module")
def fixture_h2load() -> str:
    """h2load, installed from Debian's nghttp2-client when it is missing and we can."""
    binary = h2load_binary(install=True)
    if binary is None:
        pytest.skip("h2load is absent and nghttp2-client could not be installed (root + apt-get)")
    return binary


@pytest.fixture(name="bench_json", scope="module")
def fixture_bench_json(h2load: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--json", "--quiet", *TINY],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("ceiling", ["bare", "bare_caller", "stack_echo", "stack_echo_caller"])
def test_ceilings_measured(bench_json: dict[str, Any], ceiling: str) -> None:
    """The bare grpc.aio server and the broker's stack echo are measured in the same run."""
    figure = bench_json["ceilings"][ceiling]
    assert figure["req_per_s"] > 0
    assert figure["p99_ms"] >= figure["p50_ms"] > 0


@pytest.mark.parametrize("broker", BROKERS)
def test_brokers_measured_against_both(bench_json: dict[str, Any], broker: str) -> None:
    """Each broker set-up has its latencies and its ratios to both ceilings."""
    figure = bench_json["brokers"][broker]
    assert figure["server"]["req_per_s"] > 0
    assert figure["server"]["p99_ms"] >= figure["server"]["p50_ms"] > 0
    for ratio in (figure["vs_bare"], figure["vs_stack_echo"]):
        assert ratio["req_per_s"] > 0
        assert ratio["p99"] > 0
        assert len(ratio["rounds"]) == 1
    assert figure["caller"] is (broker == "broker_caller")


@pytest.mark.parametrize("broker", BROKERS)
def test_each_broker_is_bounded_by_a_ceiling_serving_the_same_requests(
    bench_json: dict[str, Any], broker: str
) -> None:
    """The token caller's requests carry a header the grpc stack itself parses: its ceilings are
    the runs that sent the same header; the other brokers' are the runs without it."""
    figure = bench_json["brokers"][broker]
    suffix = "_caller" if broker == "broker_caller" else ""
    rate = figure["server"]["runs"][0]["load"]["req_per_s"]
    for ratio, ceiling in (("vs_bare", "bare"), ("vs_stack_echo", "stack_echo")):
        bound = bench_json["ceilings"][ceiling + suffix]["runs"][0]["load"]["req_per_s"]
        assert figure[ratio]["rounds"][0] == pytest.approx(rate / bound, rel=1e-3)


@pytest.mark.parametrize("broker", BROKERS)
def test_warm_path_signs_nothing(bench_json: dict[str, Any], broker: str) -> None:
    warm = bench_json["brokers"][broker]["warm_path"]
    assert warm["requests"] == 500
    assert warm["assertion_minted"] == 0
    assert warm["signatures_per_request"] == 0
    assert warm["authorizer"] == {"l1_hit": 500}


def test_warm_path_makes_no_redis_round_trip(bench_json: dict[str, Any]) -> None:
    warm = bench_json["brokers"]["broker_redis"]["warm_path"]
    assert warm["redis_commands"] == 0, warm["redis_commands_by_name"]
    assert warm["redis_commands_by_name"] == {}
    # Only the named background commands may appear, and they are not counted.
    assert set(warm["redis_excluded"]) <= set(bench_json["excluded_redis_commands"])
    assert bench_json["brokers"]["broker"]["warm_path"]["redis_commands"] is None


def test_table_prints_both_ratios(h2load: str) -> None:
    """The table names every server with its p50 and p99, and both ratios of each broker."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quiet", "--requests", "200", "--rounds", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    assert re.search(r"p50 ms\s+p99 ms", table), table
    assert re.search(r"broker/bare\s+broker/echo", table), table
    for label in ("bare grpc.aio + uvloop (ceiling)", "broker's stack, echo (ceiling)"):
        assert re.search(rf"^{re.escape(label)}\s+[\d,]+\s", table, re.MULTILINE), table
    for label in (
        "broker, embedded store, no callers",
        "broker, embedded store, token caller",
        "broker, Redis store, no callers",
    ):
        # one row of figures and one row of ratios (broker/bare, broker/echo, p99s, CPU)
        assert re.search(rf"^{re.escape(label)}\s+[\d,]+\s", table, re.MULTILINE), table
        ratios = rf"^{re.escape(label)}(\s+\d+\.\d\d){{4}}\s+(\d+\.\d\d|-)\s+(met|BELOW TARGET)$"
        assert re.search(ratios, table, re.MULTILINE), table


class TestWatchStreamsSmoke:
    def test_many_streams_share_one_refresher(self) -> None:
        """A few hundred watch streams on one broker all get the header from one topic, then one
        forced refresh; the run reports memory per stream and the refresh's time to reach all."""
        result = subprocess.run(
            [sys.executable, "-m", "bench.watch_streams", "--streams", "300", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=Path(__file__).parents[2],
        )
        assert result.returncode == 0, result.stderr[-2000:]
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        assert figures["watch_streams_reported"] == 300
        assert figures["watch_topics_reported"] == 1
        assert figures["streams_with_first_header"] == 300
        assert figures["streams_with_refreshed_header"] == 300
        assert figures["broker_rss_with_streams_mib"] >= figures["broker_rss_before_mib"] > 0
        assert figures["broker_rss_per_stream_kib"] > 0
        assert figures["refresh_to_all_streams_s"] >= figures["refresh_to_median_stream_s"] > 0

    async def test_a_stream_without_a_header_fails_the_run(self, start_broker: StartBroker) -> None:
        """A stream that ends without a message is named in a BenchError, not left out silently."""
        broker = await start_broker()
        calls = [
            broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest(thread_id=thread))
            for thread in ("", "", "bad id")
        ]
        deadline = asyncio.get_running_loop().time() + 10
        with pytest.raises(
            BenchError,
            match=r"^1 of 3 watch streams got no first header \(1 ended with INVALID_ARGUMENT\)$",
        ):
            await read_all(calls, deadline, "first header")
        for call in calls:
            call.cancel()


def _bench_json(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m <module> --json --quiet <args>`` as ``make bench`` would; its figures."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--json", "--quiet", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class TestWorkersBenchSmoke:
    def test_one_and_two_workers_are_measured(self, h2load: str) -> None:
        """A tiny ``bench.workers``: each broker measured once, both workers of the second one
        answered, every request counted OK by the workers themselves, no Redis on the warm path."""
        result = _bench_json("bench.workers", "--requests", "400", "--rounds", "1")
        assert [run["workers"] for run in result["runs"]] == [1, 2]
        one, two = result["runs"]
        assert one["per_worker"] == [400]
        assert sum(two["per_worker"]) == 400
        assert min(two["per_worker"]) > 0, two["per_worker"]
        assert result["workers_1"]["req_per_s"] > 0
        assert result["workers_2"]["req_per_s"] > 0
        assert result["ratio"] > 0
        assert len(result["round_ratios"]) == 1
        assert result["redis_commands"] == 0


class TestColdFleetSmoke:
    def test_a_cold_fleet_registers_once(self) -> None:
        """A tiny ``bench.cold_fleet``: every cold caller over 3 replicas is answered, and the
        fleet registered the identity and the background task once each."""
        result = _bench_json("bench.cold_fleet", "--callers", "60", "--connections", "6")
        assert result["replicas"] == 3
        assert result["answered"] == 60
        assert (result["identity_registrations"], result["task_registrations"]) == (1, 1)
        assert result["time_to_last_answer_s"] >= result["median_answer_s"] > 0
        assert result["redis_commands"] > 0
