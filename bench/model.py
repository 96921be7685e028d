"""What the benchmark measures, as plain data (the report renders it; ``--json`` prints it)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Final

from bench.h2load import LoadResult

# Redis commands that may run while the broker is under load without being the warm path's doing.
EXCLUDED_REDIS_COMMANDS: Final = {
    "ping": "the broker's store health monitor (every 5 s) and the subscriber's keepalive",
    "info": "this benchmark's own INFO commandstats probe",
    "subscribe": "the broker's invalidation subscriber (re)subscribing",
}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """How much load, how it is shaped, and what the broker should reach."""

    requests: int = 20_000
    connections: int = 4
    streams: int = 8
    rounds: int = 5
    log_level: str = "info"
    assertion_ttl: float = 60.0
    refresh_margin: float = 30.0
    target_ratio: float = 0.90
    """Broker/bare throughput the warm path should reach."""
    p99_tolerance: float = 1.20
    """How much higher than the bare stack's the broker's p99 may be."""


@dataclass(frozen=True, slots=True)
class Run:
    """One h2load run against one server, and the CPU time the server process spent on it."""

    load: LoadResult
    cpu_us_per_request: float | None


@dataclass(frozen=True, slots=True)
class ServerFigure:
    """One server's runs; the headline values are medians over the runs."""

    req_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_us_per_request: float | None
    runs: list[Run]

    @classmethod
    def of(cls, runs: list[Run]) -> ServerFigure:
        """Medians of ``runs``."""
        cpu = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
        return cls(
            req_per_s=statistics.median(r.load.req_per_s for r in runs),
            p50_ms=statistics.median(r.load.p50_ms for r in runs),
            p99_ms=statistics.median(r.load.p99_ms for r in runs),
            mean_ms=statistics.median(r.load.mean_ms for r in runs),
            cpu_us_per_request=statistics.median(cpu) if len(cpu) == len(runs) else None,
            runs=runs,
        )


@dataclass(frozen=True, slots=True)
class Ratio:
    """A broker against a ceiling measured in the same rounds.

    Attributes:
        req_per_s: broker/ceiling throughput: the median of the per-round ratios (``rounds``).
        p99: broker/ceiling p99 latency.
        cpu: ceiling/broker server CPU time per request (the same question asked of a steadier
            quantity on a shared machine); ``None`` when not measured.
        rounds: broker/ceiling throughput of each round (runs next to each other in time).
    """

    req_per_s: float
    p99: float
    cpu: float | None
    rounds: list[float]

    @classmethod
    def of(cls, broker: ServerFigure, ceiling: ServerFigure) -> Ratio:
        """``broker`` against ``ceiling``."""
        cpu = None
        if broker.cpu_us_per_request and ceiling.cpu_us_per_request:
            cpu = ceiling.cpu_us_per_request / broker.cpu_us_per_request
        rounds = [
            b.load.req_per_s / c.load.req_per_s
            for b, c in zip(broker.runs, ceiling.runs, strict=True)
        ]
        return cls(
            req_per_s=statistics.median(rounds),
            p99=broker.p99_ms / ceiling.p99_ms,
            cpu=cpu,
            rounds=rounds,
        )


@dataclass(slots=True)
class WarmPath:
    """What the broker did for the measured requests, summed over its runs."""

    requests: int = 0
    redis_commands: int | None = None
    redis_commands_by_name: dict[str, int] = field(default_factory=dict)
    redis_excluded: dict[str, int] = field(default_factory=dict)
    assertion_minted: int = 0
    signatures_per_request: float = 0.0
    authorizer: dict[str, int] = field(default_factory=dict)
    seconds_waited_for_refresh: float = 0.0
    runs_outlasting_serve_window: int = 0


@dataclass(frozen=True, slots=True)
class BrokerFigure:
    """One broker set-up's warm ``GetAuthorization`` against both ceilings.

    Attributes:
        label: what was measured, for people.
        store: ``embedded`` or ``redis``.
        caller: whether every call carried a caller token (callers configured).
        server: its runs.
        vs_bare: against the bare grpc.aio + uvloop server (no broker code).
        vs_stack_echo: against the broker's own stack answering fixed bytes.
        meets_target: ``vs_bare`` reaches the throughput target and the p99 tolerance.
        warm_path: what its runs did to Redis and to the signer.
    """

    label: str
    store: str
    caller: bool
    server: ServerFigure
    vs_bare: Ratio
    vs_stack_echo: Ratio
    meets_target: bool
    warm_path: WarmPath
