"""The rounds: start everything, alternate echo and broker runs, and collect honest deltas.

Per figure, echo and broker runs alternate (echo, broker, echo, broker, …) so that a noisy phase of
the machine hits both; each figure is the median of its runs. Around every run the server's own
counters are read (SIGUSR1, see :mod:`bench._server`): the gRPC OK count must grow by exactly the
number of requests (h2load would count a gRPC error sent with HTTP 200 as a success), and the
process's CPU time is read from ``/proc``. Before every broker run a gRPC call warms the cache and
checks that the cached assertion stays servable for longer than the run will take (waiting for the
refresh otherwise), so the run sees the warm path only; around the run, Redis ``INFO commandstats``
and the broker's authorizer counters say what the warm path did.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import client, h2load, payload
from bench.h2load import LoadSettings
from bench.model import (
    EXCLUDED_REDIS_COMMANDS,
    BenchConfig,
    Figure,
    Run,
    ServerFigure,
    WarmPath,
)
from bench.processes import BenchError, RedisProcess, ServerProcess
from broker.adapters.sealing import generate_kek_line

Progress = Callable[[str], None]


def _delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in sorted(keys)}


class _Rounds:
    """Runs loads against one figure's servers and checks each against the server's counters."""

    def __init__(
        self, config: BenchConfig, binary: str, body: Path, workdir: Path, progress: Progress
    ) -> None:
        self._config = config
        self._binary = binary
        self._body = body
        self._workdir = workdir
        self._progress = progress

    def _load(self, server: ServerProcess, requests: int, label: str) -> tuple[Run, dict[str, int]]:
        """One run; with the server's authorizer counter deltas (empty for the echo server)."""
        settings = LoadSettings(requests, self._config.connections, self._config.streams)
        before = server.stats()
        cpu_before = server.cpu_seconds()
        result = h2load.run_h2load(
            self._binary, server.port, self._body, settings, self._workdir, label
        )
        cpu_after = server.cpu_seconds()
        after = server.stats()
        ok = _delta(after["rpcs_by_code"], before["rpcs_by_code"])
        if ok.get("OK", 0) != requests or any(v for k, v in ok.items() if k != "OK"):
            raise BenchError(f"{server.name}: {requests} HTTP 200s but gRPC codes {ok}")
        cpu = None
        if cpu_before is not None and cpu_after is not None:
            cpu = (cpu_after - cpu_before) / requests * 1e6
        self._progress(
            f"{label}: {result.req_per_s:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms" + (f", {cpu:.0f} CPU us/req" if cpu else "")
        )
        return Run(result, cpu), _delta(after.get("authorizer", {}), before.get("authorizer", {}))

    def figure(
        self,
        store: str,
        echo: ServerProcess,
        broker: ServerProcess,
        redis: RedisProcess | None,
        rounds: int,
        requests: int,
    ) -> Figure:
        """Alternate ``rounds`` echo and broker runs of ``requests`` each."""
        echo_runs: list[Run] = []
        broker_runs: list[Run] = []
        warm = WarmPath(redis_commands=0 if redis else None)
        authorizer: Counter[str] = Counter()
        redis_calls: Counter[str] = Counter()
        serve_window = self._config.assertion_ttl - self._config.refresh_margin
        for index in range(1, rounds + 1):
            echo_runs.append(self._load(echo, requests, f"{store} echo {index}/{rounds}")[0])
            # the run must fit in the serve window, with room to spare on a noisy machine
            expected = requests / echo_runs[-1].load.req_per_s
            needed = min(1.5 * expected + 2.0, serve_window - 1.0)
            left, waited = client.warm_window(
                broker.port, broker.name, self._config.refresh_margin, needed, self._progress
            )
            warm.seconds_waited_for_refresh += waited
            redis_before = redis.command_calls() if redis else {}
            run, counters = self._load(broker, requests, f"{store} broker {index}/{rounds}")
            if redis is not None:
                redis_calls.update(_delta(redis.command_calls(), redis_before))
            authorizer.update(counters)
            if run.load.seconds >= left:
                warm.runs_outlasting_serve_window += 1
            broker_runs.append(run)
        warm.requests = requests * rounds
        warm.authorizer = {k: v for k, v in sorted(authorizer.items()) if v}
        warm.assertion_minted = authorizer["assertion_minted"]
        warm.signatures_per_request = warm.assertion_minted / warm.requests
        for name, calls in sorted(redis_calls.items()):
            if calls:
                excluded = name in EXCLUDED_REDIS_COMMANDS
                (warm.redis_excluded if excluded else warm.redis_commands_by_name)[name] = calls
        if redis is not None:
            warm.redis_commands = sum(warm.redis_commands_by_name.values())
        echo_figure, broker_figure = ServerFigure.of(echo_runs), ServerFigure.of(broker_runs)
        ratio = broker_figure.req_per_s / echo_figure.req_per_s
        cpu_ratio = None
        if echo_figure.cpu_us_per_request and broker_figure.cpu_us_per_request:
            cpu_ratio = echo_figure.cpu_us_per_request / broker_figure.cpu_us_per_request
        return Figure(
            store=store,
            echo=echo_figure,
            broker=broker_figure,
            ratio=ratio,
            cpu_ratio=cpu_ratio,
            meets_target=ratio >= self._config.target_ratio,
            warm_path=warm,
        )


def _server(
    name: str, module: str, workdir: Path, config: BenchConfig, *extra: str
) -> ServerProcess:
    args = [
        *extra,
        *("--log-level", config.log_level),
        *("--assertion-ttl", str(config.assertion_ttl)),
        *("--refresh-margin", str(config.refresh_margin)),
    ]
    return ServerProcess(name, module, args, workdir)


def run_bench(
    config: BenchConfig, binary: str, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Run both figures and return everything (dataclasses inside; see :mod:`bench.report`).

    Raises:
        BenchError: a process failed to start, a sanity call failed, or a run did not fully succeed.
    """
    body = workdir / "body.bin"
    body.write_bytes(payload.request_body())
    response_file = workdir / "response.bin"
    kek = workdir / "kek"
    kek.write_text(generate_kek_line() + "\n")
    kek.chmod(0o600)
    rounds = _Rounds(config, binary, body, workdir, progress)
    with contextlib.ExitStack() as cleanup:
        redis = RedisProcess(workdir)
        cleanup.callback(redis.stop)
        redis.start()
        progress(f"redis-server on 127.0.0.1:{redis.port}")
        redis_args = ("--redis-url", redis.url, "--kek-file", str(kek))
        broker = _server("broker (Redis store)", "bench.serve_broker", workdir, config, *redis_args)
        cleanup.callback(broker.stop)
        progress(f"{broker.name} on 127.0.0.1:{broker.start()}")
        response = client.check_broker(broker.port, broker.name)
        response_file.write_bytes(response)
        echo = _server(
            "echo", "bench.serve_echo", workdir, config, "--response", str(response_file)
        )
        cleanup.callback(echo.stop)
        progress(f"{echo.name} on 127.0.0.1:{echo.start()}")
        client.check_echo(echo.port, echo.name, response)
        main = rounds.figure("redis", echo, broker, redis, config.rounds, config.requests)
        broker.stop()
        redis.stop()
        embedded = _server("broker (embedded store)", "bench.serve_broker", workdir, config)
        cleanup.callback(embedded.stop)
        progress(f"{embedded.name} on 127.0.0.1:{embedded.start()}")
        client.check_broker(embedded.port, embedded.name)
        small = rounds.figure(
            "embedded", echo, embedded, None, config.embedded_rounds, config.embedded_requests
        )
    return {
        "config": config,
        "environment": {
            "cpus": os.cpu_count(),
            "h2load": h2load.version(binary),
            "request_bytes": len(payload.request_body()),
            "response_bytes": len(response),
        },
        "excluded_redis_commands": EXCLUDED_REDIS_COMMANDS,
        "figures": {"redis": main, "embedded": small},
    }
