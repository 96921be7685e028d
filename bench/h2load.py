"""Driving ``h2load`` (nghttp2-client) as a gRPC load generator over h2c, and reading its results.

h2load posts the same body (a framed ``GetAuthorizationRequest``) on every stream. It counts any
HTTP 200 as a success, even when the gRPC status in the trailers is an error, so the runner checks
each server's own OK counter as well. Latencies come from ``--log-file`` (one row per request: start
in µs since the epoch, HTTP status, µs until the end of the response), so p50/p99 are exact.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.payload import METHOD_PATH
from bench.processes import BenchError

_FINISHED: Final = re.compile(r"^finished in ([0-9.]+)(s|ms|us), ([0-9.]+) req/s", re.MULTILINE)
_REQUESTS: Final = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_TIME_FOR_REQUEST: Final = re.compile(
    r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE
)
_UNIT_MS: Final = {"s": 1000.0, "ms": 1.0, "us": 0.001}


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """One h2load run's shape."""

    requests: int
    connections: int
    streams: int
    timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one h2load run measured (latencies in milliseconds)."""

    requests: int
    succeeded: int
    seconds: float
    req_per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    h2load_mean_ms: float


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(s|ms|us)", text)
    if match is None:
        raise BenchError(f"h2load printed a duration this benchmark cannot read: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def parse_output(output: str) -> tuple[float, float, int, int, float]:
    """(seconds, req/s, total, succeeded, mean ms) from h2load's summary.

    Raises:
        BenchError: a line this benchmark relies on is missing.
    """
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    timing = _TIME_FOR_REQUEST.search(output)
    if finished is None or requests is None or timing is None:
        raise BenchError(f"h2load's output is not what this benchmark expects:\n{output[-2000:]}")
    seconds = float(finished.group(1)) * _UNIT_MS[finished.group(2)] / 1000.0
    return (
        seconds,
        float(finished.group(3)),
        int(requests.group(1)),
        int(requests.group(4)),
        _duration_ms(timing.group(3)),
    )


def read_latencies(log_file: Path) -> list[float]:
    """Milliseconds of each request that ended in HTTP 200, ascending."""
    latencies: list[float] = []
    for line in log_file.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200":
            latencies.append(int(fields[2]) / 1000.0)
    latencies.sort()
    return latencies


def run_h2load(
    binary: str,
    port: int,
    body: Path,
    settings: LoadSettings,
    workdir: Path,
    label: str,
    *,
    headers: Sequence[str] = (),
) -> LoadResult:
    """Run one bounded load against ``127.0.0.1:port`` and return what it measured.

    ``headers`` are extra request headers (``name: value``), e.g. a caller's authorization.

    Raises:
        BenchError: h2load failed, timed out, or not every request succeeded.
    """
    log_file = workdir / ("h2load-" + "".join(c if c.isalnum() else "-" for c in label) + ".tsv")
    argv = [
        binary,
        *("-n", str(settings.requests)),
        *("-c", str(settings.connections)),
        *("-m", str(settings.streams)),
        *("-d", str(body)),
        *("-H", "content-type: application/grpc"),
        *("-H", "te: trailers"),
        *(arg for header in headers for arg in ("-H", header)),
        *("--log-file", str(log_file)),
        f"http://127.0.0.1:{port}{METHOD_PATH}",
    ]
    try:
        done = subprocess.run(  # noqa: S603  (h2load found on PATH, arguments built here)
            argv, capture_output=True, text=True, timeout=settings.timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"h2load ({label}) did not finish in {settings.timeout_s:g} s") from exc
    if done.returncode != 0:
        raise BenchError(f"h2load ({label}) exited {done.returncode}:\n{done.stderr[-2000:]}")
    seconds, rate, total, succeeded, h2load_mean = parse_output(done.stdout)
    latencies = read_latencies(log_file)
    if succeeded != settings.requests or total != settings.requests:
        raise BenchError(
            f"h2load ({label}): {succeeded} of {settings.requests} requests succeeded:\n"
            f"{done.stdout[-2000:]}"
        )
    if len(latencies) != succeeded:
        raise BenchError(
            f"h2load ({label}) logged {len(latencies)} HTTP 200 rows for {succeeded} successes"
        )
    log_file.unlink()
    return LoadResult(
        requests=total,
        succeeded=succeeded,
        seconds=seconds,
        req_per_s=rate,
        mean_ms=sum(latencies) / len(latencies),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1],
        h2load_mean_ms=h2load_mean,
    )


def version(binary: str) -> str:
    """``nghttp2/1.52.0`` or similar."""
    done = subprocess.run(  # noqa: S603  (h2load found on PATH)
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    return done.stdout.strip().removeprefix("h2load ").strip() or "unknown"
