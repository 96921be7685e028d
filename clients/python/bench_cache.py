"""Micro-benchmark: cached header fetches per second, and what a cache miss costs.

Starts the control-plane emulator and a broker in process (the development setup), then measures on
one core:

- cached ``await BrokerClient.get_authorization()`` and blocking
  ``SyncBrokerClient.get_authorization()`` calls per second (the target is above 500,000/s);
- the latency of a miss: a unary ``GetAuthorization`` round trip to a warm broker (what a call costs
  while the watch stream is down), and a new key's first call (opening its watch stream and waiting
  for the first message).

Run it from the repository root: ``.venv/bin/python clients/python/bench_cache.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from broker.app import BrokerApp
from broker.config import load_settings
from cb_emulator import Emulator

from credential_broker_client import BrokerClient, SyncBrokerClient

TARGET_PER_SECOND = 500_000


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1e6:8.1f} µs   p99 {p99 * 1e6:8.1f} µs   (n={len(ordered)})"


async def _rate(call: Callable[[], Awaitable[object]], seconds: float) -> float:
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(10_000):
            await call()
        count += 10_000
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def _sync_rate(call: Callable[[], object], seconds: float) -> float:
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(10_000):
            call()
        count += 10_000
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


async def _measure(address: str, seconds: float, misses: int) -> bool:
    async with BrokerClient(address) as client:
        await client.get_authorization()
        await _rate(client.get_authorization, 0.2)  # warm-up
        async_rate = await _rate(client.get_authorization, seconds)

        first_calls = []
        for n in range(misses // 10):
            started = time.perf_counter()
            await client.get_authorization(f"bench-thread-{n}")
            first_calls.append(time.perf_counter() - started)

    async with BrokerClient(address, watch=False) as unary:
        await unary.get_authorization()
        round_trips = []
        for _ in range(misses):
            started = time.perf_counter()
            await unary.get_authorization()
            round_trips.append(time.perf_counter() - started)

    sync_rate = await asyncio.to_thread(_sync_bench, address, seconds)

    verdict = "ok" if min(async_rate, sync_rate) > TARGET_PER_SECOND else "BELOW TARGET"
    print(f"cached get_authorization (asyncio):  {async_rate:12,.0f} /s   [{verdict}]")
    print(f"cached get_authorization (sync):     {sync_rate:12,.0f} /s")
    print(f"  target: > {TARGET_PER_SECOND:,} /s on one core")
    print(f"cache miss, unary round trip:        {_percentiles(round_trips)}")
    print(f"cache miss, new key (watch + task):  {_percentiles(first_calls)}")
    return verdict == "ok"


def _sync_bench(address: str, seconds: float) -> float:
    with SyncBrokerClient(address) as client:
        client.get_authorization()
        _sync_rate(client.get_authorization, 0.2)
        return _sync_rate(client.get_authorization, seconds)


async def _main(seconds: float, misses: int) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as workdir:
        token_file = Path(workdir) / "access-token"
        token_file.write_text("dev-access-token\n")
        async with Emulator() as emulator:
            url = await emulator.start("127.0.0.1", 0)
            app = BrokerApp(
                load_settings(
                    {
                        "BROKER_LISTEN": "127.0.0.1:0",
                        "BROKER_CONTROLPLANE_URL": url,
                        "BROKER_SUPPORTED_HOSTS": "127.0.0.1",
                        "BROKER_BEARER_TOKEN_FILE": str(token_file),
                        "BROKER_ACCOUNT_ID": "acct-dev",
                        "BROKER_STATS_INTERVAL": "3600",
                    }
                )
            )
            await app.start()
            try:
                ok = await _measure(app.address, seconds, misses)
            finally:
                await app.stop(grace=1.0)
    return 0 if ok else 1


def main() -> int:
    """Run the benchmark; exit status 1 when the cached rate is below the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput figure")
    parser.add_argument("--misses", type=int, default=500, help="unary round trips to time")
    args = parser.parse_args()
    return asyncio.run(_main(args.seconds, args.misses))


if __name__ == "__main__":
    raise SystemExit(main())
