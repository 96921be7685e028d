"""``make bench`` in a tiny configuration: real servers, real Redis, real h2load, no mocks.

It runs ``python -m bench --json`` as ``make bench`` would and checks that both servers were
measured and that the broker's warm path made no Redis command and signed nothing.
"""

from __future__ import annotations

import asyncio
import json
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
TINY = [
    "--requests",
    "500",
    "--rounds",
    "1",
    "--embedded-requests",
    "500",
    "--embedded-rounds",
    "1",
]


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


@pytest.mark.parametrize("store", ["redis", "embedded"])
def test_both_servers_measured(bench_json: dict[str, Any], store: str) -> None:
    figure = bench_json["figures"][store]
    assert figure["echo"]["req_per_s"] > 0
    assert figure["broker"]["req_per_s"] > 0
    assert figure["ratio"] > 0
    assert figure["broker"]["p50_ms"] > 0
    assert figure["broker"]["p99_ms"] >= figure["broker"]["p50_ms"]


@pytest.mark.parametrize("store", ["redis", "embedded"])
def test_warm_path_signs_nothing(bench_json: dict[str, Any], store: str) -> None:
    warm = bench_json["figures"][store]["warm_path"]
    assert warm["requests"] == 500
    assert warm["assertion_minted"] == 0
    assert warm["signatures_per_request"] == 0
    assert warm["authorizer"] == {"l1_hit": 500}


def test_warm_path_makes_no_redis_round_trip(bench_json: dict[str, Any]) -> None:
    warm = bench_json["figures"]["redis"]["warm_path"]
    assert warm["redis_commands"] == 0, warm["redis_commands_by_name"]
    assert warm["redis_commands_by_name"] == {}
    # Only the named background commands may appear, and they are not counted.
    assert set(warm["redis_excluded"]) <= set(bench_json["excluded_redis_commands"])
    assert bench_json["figures"]["embedded"]["warm_path"]["redis_commands"] is None


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
