"""``python -m bench.watch_streams``: many concurrent WatchAuthorization streams on one broker.

Starts the real broker (embedded store, real emulator) in its own process, opens ``--streams``
watch streams over ``--channels`` HTTP/2 connections from this process, waits until every stream has
received its first header, and reports how long that took and the broker's resident memory before and
with the streams open (per stream). Every stream shares one refresher (one topic), so the broker's
cost per watcher is one open RPC. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.processes import BenchError, ServerProcess
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc

_FIRST_HEADER_TIMEOUT_S = 120.0
_BATCH = 250


async def _open_streams(port: int, streams: int, channels: int) -> tuple[list[Any], float]:
    address = f"127.0.0.1:{port}"
    # one TCP connection per channel (channels with equal options share one by default)
    options = [("grpc.use_local_subchannel_pool", 1)]
    pool = [grpc.aio.insecure_channel(address, options=options) for _ in range(channels)]
    calls: list[Any] = []
    firsts: list[object] = []
    started = time.perf_counter()
    # Open in batches, as a fleet of workers starting up would: gRPC's transport refuses (with
    # CANCELLED) RPCs that arrive faster than the server accepts them in one burst.
    for offset in range(0, streams, _BATCH):
        batch = [
            pb_grpc.CredentialBrokerStub(pool[index % channels]).WatchAuthorization(
                pb.WatchAuthorizationRequest()
            )
            for index in range(offset, min(offset + _BATCH, streams))
        ]
        firsts += await asyncio.wait_for(
            asyncio.gather(*(call.read() for call in batch)), _FIRST_HEADER_TIMEOUT_S
        )
        calls += batch
    elapsed = time.perf_counter() - started
    headers = {
        first.authorization.header_value
        for first in firsts
        if isinstance(first, pb.WatchAuthorizationResponse)
    }
    if len(headers) != 1:
        raise BenchError(f"watchers received {len(headers)} different headers, expected 1")
    return [calls, pool], elapsed


async def _close(handles: list[Any]) -> None:
    calls, pool = handles
    for call in calls:
        call.cancel()
    for channel in pool:
        await channel.close()


async def measure(server: ServerProcess, streams: int, channels: int) -> dict[str, Any]:
    """Open the streams against a started broker and measure it."""
    baseline = server.rss_bytes() or 0
    handles, elapsed = await _open_streams(server.port, streams, channels)
    try:
        await asyncio.sleep(1.0)  # let the broker settle before reading its memory
        loaded = server.rss_bytes() or 0
        stats = server.stats()
    finally:
        await _close(handles)
    return {
        "streams": streams,
        "channels": channels,
        "seconds_to_first_header_on_all": round(elapsed, 3),
        "broker_rss_before_mib": round(baseline / 2**20, 1),
        "broker_rss_with_streams_mib": round(loaded / 2**20, 1),
        "broker_rss_per_stream_kib": round((loaded - baseline) / max(streams, 1) / 1024, 2),
        "watch_streams_reported": stats.get("watch_streams"),
        "watch_topics_reported": stats.get("watch_topics"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the watch-stream benchmark and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.watch_streams", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
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
