"""The rounds: start every server, run them in turn round after round, collect honest deltas.

Five servers are measured in one run, each in its own process: the bare grpc.aio + uvloop server
(:mod:`bench.serve_bare`, no broker code), the echo on the broker's own stack
(:mod:`bench.serve_echo`), and the broker's warm ``GetAuthorization`` three ways: embedded store and
no callers, embedded store with a token-authenticated caller, Redis store and no callers.

A ceiling serves the same requests as the broker it bounds: the token caller's requests carry an
``authorization`` header, which the grpc stack itself parses and hands to Python on every call
(about 10,000 instructions per request on the bare server, of its 294,000), so the two ceilings are
also measured with that header and the token caller is compared with those. Each round runs every load once, one
after the other, in an order rotated by one place per round (no load always runs first or after the
same neighbour); a broker's ratio to a ceiling is the median of its per-round ratios (two runs of
one round ran next to each other in time), and each server figure is the median of its runs.

Around every run the server's own counters are read (SIGUSR1, see :mod:`bench._server`): the gRPC
OK count must grow by exactly the number of requests (h2load would count a gRPC error sent with
HTTP 200 as a success), and the process's CPU time is read from ``/proc``. Before every broker run a
gRPC call warms the cache and checks that the cached assertion stays servable for longer than the
run will take (waiting for the refresh otherwise), so the run sees the warm path only; around the
run, Redis ``INFO commandstats`` and the broker's authorizer counters say what the warm path did.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import client, h2load, payload
from bench.h2load import LoadSettings
from bench.model import (
    EXCLUDED_REDIS_COMMANDS,
    BenchConfig,
    BrokerFigure,
    Ratio,
    Run,
    ServerFigure,
    WarmPath,
)
from bench.processes import BenchError, RedisProcess, ServerProcess
from broker.adapters.sealing import generate_kek_line
from broker.core.callers import hash_token

Progress = Callable[[str], None]


def _delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in sorted(keys)}


@dataclass(slots=True)
class _Broker:
    """One broker set-up being measured, and what its runs did so far."""

    key: str
    label: str
    store: str
    process: ServerProcess
    token: str | None = None
    redis: RedisProcess | None = None
    runs: list[Run] = field(default_factory=list)
    warm: WarmPath = field(default_factory=WarmPath)
    authorizer: Counter[str] = field(default_factory=Counter)
    redis_calls: Counter[str] = field(default_factory=Counter)


class _Rounds:
    """Runs loads against the servers and checks each against the server's counters."""

    def __init__(
        self, config: BenchConfig, binary: str, body: Path, workdir: Path, progress: Progress
    ) -> None:
        self._config = config
        self._binary = binary
        self._body = body
        self._workdir = workdir
        self._progress = progress

    def load(
        self, server: ServerProcess, label: str, token: str | None = None
    ) -> tuple[Run, dict[str, int]]:
        """One run; with the server's authorizer counter deltas (empty for the echo servers)."""
        config = self._config
        settings = LoadSettings(config.requests, config.connections, config.streams)
        before = server.stats()
        cpu_before = server.cpu_seconds()
        result = h2load.run_h2load(
            self._binary,
            server.port,
            self._body,
            settings,
            self._workdir,
            label,
            headers=payload.caller_headers(token),
        )
        cpu_after = server.cpu_seconds()
        after = server.stats()
        ok = _delta(after["rpcs_by_code"], before["rpcs_by_code"])
        if ok.get("OK", 0) != config.requests or any(v for k, v in ok.items() if k != "OK"):
            raise BenchError(f"{server.name}: {config.requests} HTTP 200s but gRPC codes {ok}")
        cpu = None
        if cpu_before is not None and cpu_after is not None:
            cpu = (cpu_after - cpu_before) / config.requests * 1e6
        self._progress(
            f"{label}: {result.req_per_s:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms" + (f", {cpu:.0f} CPU us/req" if cpu else "")
        )
        return Run(result, cpu), _delta(after.get("authorizer", {}), before.get("authorizer", {}))

    def broker_run(self, broker: _Broker, label: str, expected_seconds: float) -> None:
        """Warm ``broker``, make sure its assertion outlives the run, run it, record the deltas."""
        config = self._config
        serve_window = config.assertion_ttl - config.refresh_margin
        # the run must fit in the serve window, with room to spare on a noisy machine
        needed = min(1.5 * expected_seconds + 2.0, serve_window - 1.0)
        left, waited = client.warm_window(
            broker.process.port,
            broker.process.name,
            config.refresh_margin,
            needed,
            self._progress,
            broker.token,
        )
        broker.warm.seconds_waited_for_refresh += waited
        redis_before = broker.redis.command_calls() if broker.redis else {}
        run, counters = self.load(broker.process, label, broker.token)
        if broker.redis is not None:
            broker.redis_calls.update(_delta(broker.redis.command_calls(), redis_before))
        broker.authorizer.update(counters)
        if run.load.seconds >= left:
            broker.warm.runs_outlasting_serve_window += 1
        broker.runs.append(run)


CEILINGS = ("bare", "bare_caller", "stack_echo", "stack_echo_caller")
"""The ceiling loads: each ceiling server without and with the token caller's header."""


def _broker_load(
    rounds: _Rounds, broker: _Broker, of: str, expected: Callable[[], float]
) -> Callable[[], None]:
    return lambda: rounds.broker_run(broker, f"{broker.process.name} {of}", expected())


def _figure(
    broker: _Broker, ceilings: Mapping[str, ServerFigure], config: BenchConfig
) -> BrokerFigure:
    warm = broker.warm
    warm.requests = config.requests * len(broker.runs)
    warm.authorizer = {k: v for k, v in sorted(broker.authorizer.items()) if v}
    warm.assertion_minted = broker.authorizer["assertion_minted"]
    warm.signatures_per_request = warm.assertion_minted / warm.requests
    if broker.redis is not None:
        for name, calls in sorted(broker.redis_calls.items()):
            if calls:
                excluded = name in EXCLUDED_REDIS_COMMANDS
                (warm.redis_excluded if excluded else warm.redis_commands_by_name)[name] = calls
        warm.redis_commands = sum(warm.redis_commands_by_name.values())
    server = ServerFigure.of(broker.runs)
    suffix = "_caller" if broker.token is not None else ""
    vs_bare = Ratio.of(server, ceilings["bare" + suffix])
    echo = ceilings["stack_echo" + suffix]
    return BrokerFigure(
        label=broker.label,
        store=broker.store,
        caller=broker.token is not None,
        server=server,
        vs_bare=vs_bare,
        vs_stack_echo=Ratio.of(server, echo),
        meets_target=vs_bare.req_per_s >= config.target_ratio
        and vs_bare.p99 <= config.p99_tolerance,
        warm_path=warm,
    )


def _broker_args(config: BenchConfig, *extra: str) -> list[str]:
    return [
        *extra,
        *("--log-level", config.log_level),
        *("--assertion-ttl", str(config.assertion_ttl)),
        *("--refresh-margin", str(config.refresh_margin)),
    ]


def run_bench(
    config: BenchConfig, binary: str, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Measure every server and return everything (dataclasses inside; see :mod:`bench.report`).

    Raises:
        BenchError: a process failed to start, a sanity call failed, or a run did not fully succeed.
    """
    body = workdir / "body.bin"
    body.write_bytes(payload.request_body())
    response_file = workdir / "response.bin"
    kek = workdir / "kek"
    kek.write_text(generate_kek_line() + "\n")
    kek.chmod(0o600)
    token = secrets.token_urlsafe(32)
    rounds = _Rounds(config, binary, body, workdir, progress)

    def start(name: str, module: str, args: list[str]) -> ServerProcess:
        server = ServerProcess(name, module, args, workdir)
        cleanup.callback(server.stop)
        progress(f"{name} on 127.0.0.1:{server.start()}")
        return server

    with contextlib.ExitStack() as cleanup:
        redis = RedisProcess(workdir)
        cleanup.callback(redis.stop)
        redis.start()
        progress(f"redis-server on 127.0.0.1:{redis.port}")
        brokers = [
            _Broker(
                "broker",
                "broker, embedded store, no callers",
                "embedded",
                start("broker", "bench.serve_broker", _broker_args(config)),
            ),
            _Broker(
                "broker_caller",
                "broker, embedded store, token caller",
                "embedded",
                start(
                    "broker (token caller)",
                    "bench.serve_broker",
                    _broker_args(config, "--caller-sha256", hash_token(token)),
                ),
                token=token,
            ),
            _Broker(
                "broker_redis",
                "broker, Redis store, no callers",
                "redis",
                start(
                    "broker (Redis store)",
                    "bench.serve_broker",
                    _broker_args(config, "--redis-url", redis.url, "--kek-file", str(kek)),
                ),
                redis=redis,
            ),
        ]
        response = client.check_broker(brokers[0].process.port, brokers[0].process.name)
        response_file.write_bytes(response)
        for broker in brokers[1:]:
            client.check_broker(broker.process.port, broker.process.name, broker.token)
        bare = start("bare", "bench.serve_bare", ["--response", str(response_file)])
        client.check_echo(bare.port, bare.name, response)
        echo = start(
            "stack echo",
            "bench.serve_echo",
            _broker_args(config, "--response", str(response_file)),
        )
        client.check_echo(echo.port, echo.name, response)
        ceiling_runs: dict[str, list[Run]] = {key: [] for key in CEILINGS}
        ceiling_servers = {"bare": bare, "stack_echo": echo}
        expected = 10.0

        def ceiling_load(key: str, of: str) -> Callable[[], None]:
            server, header = ceiling_servers[key.removesuffix("_caller")], key.endswith("_caller")

            def load() -> None:
                nonlocal expected
                label = f"{server.name}{' (caller header)' if header else ''} {of}"
                run = rounds.load(server, label, token if header else None)[0]
                ceiling_runs[key].append(run)
                expected = config.requests / run.load.req_per_s

            return load

        for index in range(config.rounds):
            of = f"{index + 1}/{config.rounds}"
            loads = [ceiling_load(key, of) for key in CEILINGS] + [
                _broker_load(rounds, broker, of, lambda: expected) for broker in brokers
            ]
            shift = index % len(loads)
            for load in loads[shift:] + loads[:shift]:
                load()
        ceilings = {key: ServerFigure.of(runs) for key, runs in ceiling_runs.items()}
        figures = {b.key: _figure(b, ceilings, config) for b in brokers}
    return {
        "config": config,
        "environment": {
            "cpus": os.cpu_count(),
            "h2load": h2load.version(binary),
            "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "request_bytes": len(payload.request_body()),
            "response_bytes": len(response),
        },
        "excluded_redis_commands": EXCLUDED_REDIS_COMMANDS,
        "ceilings": ceilings,
        "brokers": figures,
    }
