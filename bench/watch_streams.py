"""``python -m bench.watch_streams``: many concurrent WatchAuthorization streams on one broker.

Starts the real broker (embedded store, real emulator) in its own process, opens ``--streams``
watch streams over ``--channels`` HTTP/2 connections from this process and measures three things:

- **first header**: how long until every stream has received its first header. Every stream must
  get one, and the same one, and the broker must count every stream open; otherwise the run fails
  (exit 1, naming how many streams missed out and why) instead of reporting figures for fewer
  streams than asked for.
- **memory**: the broker's resident memory before and with the streams open, and the growth
  divided by the number of streams.
- **one refresh**: a forced refresh (admin ``RevokeTask``: a new task, so a new header) goes to the
  one refresher every stream shares; the clock runs from the request until the last stream has
  read the new header (the median stream is reported too). Every stream must read it, or the run
  fails.

Timings are taken in this process, so they include this client reading every message. Everything
it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from bench.processes import BenchError, ServerProcess
from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc

_FIRST_HEADER_TIMEOUT_S: Final = 120.0  # per batch of streams
_REFRESH_TIMEOUT_S: Final = 120.0
_ADMIN_TIMEOUT_S: Final = 10.0
_SETTLE_S: Final = 1.0
_BATCH: Final = 250

WatchCall = grpc.aio.UnaryStreamCall[pb.WatchAuthorizationRequest, pb.WatchAuthorizationResponse]


@dataclass
class _Streams:
    """The channels and watch calls this process holds open; ``close`` ends them all."""

    pool: list[grpc.aio.Channel] = field(default_factory=list)
    calls: list[WatchCall] = field(default_factory=list)

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for channel in self.pool:
            await channel.close()


@dataclass(frozen=True)
class _Read:
    """One stream's next message, when it arrived, or why there was none."""

    header: str | None
    at: float
    failure: str = ""


async def _read(call: WatchCall, deadline: float) -> _Read:
    """Read the next message of ``call`` before the loop time ``deadline``; never raises."""
    try:
        async with asyncio.timeout_at(deadline):
            message = await call.read()
    except TimeoutError:
        return _Read(None, time.perf_counter(), "no message in time")
    except grpc.aio.AioRpcError as exc:
        return _Read(None, time.perf_counter(), f"ended with {exc.code().name}")
    if not isinstance(message, pb.WatchAuthorizationResponse):
        return _Read(None, time.perf_counter(), "ended without a message")
    return _Read(message.authorization.header_value, time.perf_counter())


def _deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def read_all(
    calls: Sequence[WatchCall], deadline: float, what: str
) -> list[tuple[str, float]]:
    """(header, ``perf_counter`` arrival) of every call's next message by ``deadline`` (loop time).

    Raises:
        BenchError: some calls got no message (they ended, failed or ran out of time); it says how
            many of them and why, so no stream is dropped from the figures unnoticed.
    """
    reads = await asyncio.gather(*(_read(call, deadline) for call in calls))
    received = [(read.header, read.at) for read in reads if read.header is not None]
    failures = Counter(read.failure for read in reads if read.header is None)
    if failures:
        reasons = ", ".join(f"{count} {reason}" for reason, count in failures.most_common())
        raise BenchError(
            f"{len(calls) - len(received)} of {len(calls)} watch streams got no {what} ({reasons})"
        )
    return received


def _one_header(received: Sequence[tuple[str, float]], what: str) -> str:
    headers = {header for header, _ in received}
    if len(headers) != 1:
        raise BenchError(f"watch streams received {len(headers)} different {what}s, expected 1")
    return headers.pop()


async def _open(streams: _Streams, port: int, count: int, channels: int) -> tuple[str, int, float]:
    """Open ``count`` streams; (the first header, streams that got it, seconds until all had)."""
    address = f"127.0.0.1:{port}"
    # one TCP connection per channel (channels with equal options share one by default)
    options = [("grpc.use_local_subchannel_pool", 1)]
    streams.pool += [grpc.aio.insecure_channel(address, options=options) for _ in range(channels)]
    reads: list[tuple[str, float]] = []
    started = time.perf_counter()
    # Open in batches, as a fleet of workers starting up would: gRPC's transport refuses (with
    # CANCELLED) RPCs that arrive faster than the server accepts them in one burst.
    for offset in range(0, count, _BATCH):
        batch = [
            pb_grpc.CredentialBrokerStub(streams.pool[index % channels]).WatchAuthorization(
                pb.WatchAuthorizationRequest()
            )
            for index in range(offset, min(offset + _BATCH, count))
        ]
        streams.calls += batch
        try:
            reads += await read_all(batch, _deadline(_FIRST_HEADER_TIMEOUT_S), "first header")
        except BenchError as exc:
            raise BenchError(f"{exc}, after {len(reads)} streams had theirs") from None
    return _one_header(reads, "first header"), len(reads), time.perf_counter() - started


async def _refresh(streams: _Streams, first: str) -> list[float]:
    """Force one refresh; the seconds until each stream had read the new header."""
    admin = apb_grpc.CredentialBrokerAdminStub(streams.pool[0])
    started = time.perf_counter()
    try:
        await admin.RevokeTask(apb.RevokeTaskRequest(), timeout=_ADMIN_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise BenchError(f"RevokeTask failed: {exc.code().name} {exc.details()}") from None
    reads = await read_all(streams.calls, _deadline(_REFRESH_TIMEOUT_S), "refreshed header")
    if _one_header(reads, "refreshed header") == first:
        raise BenchError("the refresh pushed the header the streams already had")
    return [at - started for _, at in reads]


def _rss(server: ServerProcess) -> int:
    rss = server.rss_bytes()
    if not rss:
        raise BenchError(f"{server.name}: resident memory unreadable (/proc/<pid>/status)")
    return rss


async def measure(server: ServerProcess, count: int, channels: int) -> dict[str, Any]:
    """Open the streams against a started broker and measure it.

    Raises:
        BenchError: a stream got no first header or no refreshed header, or the broker's counts
            disagree with the streams opened.
    """
    baseline = _rss(server)
    streams = _Streams()
    try:
        first, with_first, opened_s = await _open(streams, server.port, count, channels)
        await asyncio.sleep(_SETTLE_S)  # let the broker settle before reading its memory
        loaded = _rss(server)
        stats = server.stats()
        if stats.get("watch_streams") != count:
            raise BenchError(
                f"the broker counts {stats.get('watch_streams')} watch streams, {count} are open"
            )
        arrivals = await _refresh(streams, first)
    finally:
        await streams.close()
    return {
        "streams": count,
        "channels": channels,
        "streams_with_first_header": with_first,
        "seconds_to_first_header_on_all": round(opened_s, 3),
        "broker_rss_before_mib": round(baseline / 2**20, 1),
        "broker_rss_with_streams_mib": round(loaded / 2**20, 1),
        "broker_rss_per_stream_kib": round((loaded - baseline) / count / 1024, 2),
        "streams_with_refreshed_header": len(arrivals),
        "refresh_to_all_streams_s": round(max(arrivals), 3),
        "refresh_to_median_stream_s": round(statistics.median(arrivals), 3),
        "watch_streams_reported": stats.get("watch_streams"),
        "watch_topics_reported": stats.get("watch_topics"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the watch-stream benchmark and print its figures (exit 1 if any stream missed out)."""
    parser = argparse.ArgumentParser(prog="python -m bench.watch_streams", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.channels < 1:
        parser.error("--streams and --channels must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="credential-broker-watch-"))
    server = ServerProcess(
        "broker (watch)", "bench.serve_broker", ["--log-level", "warning"], workdir
    )
    try:
        server.start()
        result = asyncio.run(measure(server, args.streams, args.channels))
    except BenchError as exc:
        sys.stderr.write(f"bench.watch_streams: FAILED: {exc}\n")
        return 1
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    else:
        sys.stdout.write("\ncredential-broker bench: concurrent WatchAuthorization streams\n")
        for key, value in result.items():
            sys.stdout.write(f"  {key:36s} {value}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
