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
    """How much load, and how it is shaped."""

    requests: int = 20_000
    connections: int = 4
    streams: int = 8
    rounds: int = 3
    embedded_requests: int = 10_000
    embedded_rounds: int = 2
    log_level: str = "info"
    assertion_ttl: float = 60.0
    refresh_margin: float = 30.0
    target_ratio: float = 0.85


@dataclass(frozen=True, slots=True)
class Run:
    """One h2load run against one server, and the CPU time the server process spent on it."""

    load: LoadResult
    cpu_us_per_request: float | None


@dataclass(frozen=True, slots=True)
class ServerFigure:
    """One server's runs in one figure; the headline values are medians over the runs."""

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


@dataclass(slots=True)
class WarmPath:
    """What the broker did for the measured requests, summed over a figure's broker runs."""

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
class Figure:
    """Echo vs. broker on one store.

    ``ratio`` is broker/echo throughput; ``cpu_ratio`` is echo/broker server CPU time per request
    (the same question asked of a steadier quantity on a shared machine).
    """

    store: str
    echo: ServerFigure
    broker: ServerFigure
    ratio: float
    cpu_ratio: float | None
    meets_target: bool
    warm_path: WarmPath
