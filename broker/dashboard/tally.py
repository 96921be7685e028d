"""One window's counts for one replica (or, merged, for all of them), and their JSON view (pure)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from broker.core.credentials.counters import BEARER_PREFIX
from broker.events import Event

ASSERTION: Final = "AgentAssertion"
BEARER: Final = "Bearer"
_ASSERTION_COUNTERS: Final = ("l1_hit", "l2_hit", "assertion_minted")


def scheme_counts(counters: dict[str, int]) -> dict[str, int]:
    """Authorizations by scheme from the authorizer's counters (every answer counts once)."""
    return {
        ASSERTION: sum(counters.get(name, 0) for name in _ASSERTION_COUNTERS),
        BEARER: sum(v for k, v in counters.items() if k.startswith(BEARER_PREFIX)),
    }


def quantiles(samples: list[float]) -> dict[str, float | None]:
    """p50, p95 and max (nearest rank) of ``samples``; ``None`` each when there are none."""
    if not samples:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"p50": rank(0.5), "p95": rank(0.95), "max": round(ordered[-1], 3)}


def _ratio(hits: int, misses: int) -> float | None:
    return round(hits / (hits + misses), 4) if hits + misses else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(slots=True)
class _Operation:
    count: int = 0
    errors: int = 0
    ms: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Tally:
    """Counts of one window; :meth:`merge` adds another replica's."""

    rpcs_by_code: Counter[str] = field(default_factory=Counter)
    rpcs_by_method: Counter[str] = field(default_factory=Counter)
    fallback_events: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    counters_span_s: float = 0.0
    identities_registered: int = 0
    tasks_registered: Counter[str] = field(default_factory=Counter)
    task_ms: list[float] = field(default_factory=list)
    operations: dict[str, _Operation] = field(default_factory=dict)
    retries: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    thread_failures: int = 0
    denied: Counter[str] = field(default_factory=Counter)
    store: Counter[str] = field(default_factory=Counter)

    def add(self, event: str, record: dict[str, Any]) -> None:
        """Count one occurrence of a windowed event."""
        match event:
            case Event.FALLBACK_BEARER:
                self.fallback_events[str(record.get("fallback_reason", "?"))] += 1
            case Event.CONTROLPLANE_REQUEST:
                operation = self.operations.setdefault(
                    str(record.get("operation", "?")), _Operation()
                )
                operation.count += 1
                status = record.get("status")
                if not (isinstance(status, int) and 200 <= status < 300):
                    operation.errors += 1
                if (ms := _number(record.get("duration_ms"))) is not None:
                    operation.ms.append(ms)
            case Event.CONTROLPLANE_RETRY:
                self.retries += 1
            case Event.TASK_REGISTERED:
                self.tasks_registered[str(record.get("task_kind", "?"))] += 1
                if (ms := _number(record.get("duration_ms"))) is not None:
                    self.task_ms.append(ms)
            case Event.IDENTITY_REGISTERED:
                self.identities_registered += 1
            case Event.TASK_REJECTED:
                self.rejections["rejected"] += 1
            case Event.TASK_INVALIDATED:
                self.rejections["invalidated"] += 1
            case Event.TASK_REJECTION_THROTTLED:
                self.rejections["throttled"] += 1
            case Event.AUTHORIZATION_FAILED:
                self.thread_failures += 1
            case Event.CALLER_DENIED:
                self.denied[f"{record.get('caller', '?')}/{record.get('rule', '?')}"] += 1
            case Event.STORE_DEGRADED:
                self.store["degraded"] += 1
            case Event.STORE_RECOVERED:
                self.store["recovered"] += 1

    def counters_delta(self, delta: dict[str, dict[str, int]], span_s: float) -> None:
        """Set the window's share of the cumulative counters of ``broker.stats``: the authorizer's
        and the RPCs by code and by method."""
        self.counters = Counter(delta.get("authorizer", {}))
        self.rpcs_by_code = Counter(delta.get("rpcs_by_code", {}))
        self.rpcs_by_method = Counter(delta.get("rpcs_by_method", {}))
        self.counters_span_s = span_s

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts to these."""
        for mine, theirs in (
            (self.rpcs_by_code, other.rpcs_by_code),
            (self.rpcs_by_method, other.rpcs_by_method),
            (self.fallback_events, other.fallback_events),
            (self.counters, other.counters),
            (self.tasks_registered, other.tasks_registered),
            (self.rejections, other.rejections),
            (self.denied, other.denied),
            (self.store, other.store),
        ):
            mine.update(theirs)
        self.identities_registered += other.identities_registered
        self.task_ms += other.task_ms
        self.retries += other.retries
        self.thread_failures += other.thread_failures
        for name, operation in other.operations.items():
            target = self.operations.setdefault(name, _Operation())
            target.count += operation.count
            target.errors += operation.errors
            target.ms += operation.ms

    def view(self) -> dict[str, Any]:
        """The counts as JSON-able data; rates divide the counters' share by the time between the
        two ``broker.stats`` snapshots it was taken from."""
        rpcs = sum(self.rpcs_by_code.values())
        schemes = scheme_counts(dict(self.counters))
        span = self.counters_span_s
        rates = {"rpcs": round(rpcs / span, 3) if span > 0 else 0.0}
        if span > 0:
            rates |= {k: round(v / span, 3) for k, v in schemes.items()}
        bearer = {
            k.removeprefix(BEARER_PREFIX): v
            for k, v in sorted(self.counters.items())
            if k.startswith(BEARER_PREFIX)
        }
        c = self.counters
        return {
            "rates_per_s": rates,
            "rpcs": {
                "count": rpcs,
                "by_code": dict(sorted(self.rpcs_by_code.items())),
                "by_method": dict(sorted(self.rpcs_by_method.items())),
            },
            "authorizations": schemes,
            "fallbacks": bearer,
            "fallback_events": dict(sorted(self.fallback_events.items())),
            "cache": {
                **{k: c.get(k, 0) for k in ("l1_hit", "l1_miss", "l2_hit", "assertion_minted")},
                "l1_hit_ratio": _ratio(c.get("l1_hit", 0), c.get("l1_miss", 0)),
                "l2_hit_ratio": _ratio(c.get("l2_hit", 0), c.get("assertion_minted", 0)),
            },
            "registrations": {
                "identities": self.identities_registered,
                "tasks": dict(sorted(self.tasks_registered.items())),
                "task_latency_ms": quantiles(self.task_ms),
            },
            "controlplane": {
                "requests": sum(op.count for op in self.operations.values()),
                "errors": sum(op.errors for op in self.operations.values()),
                "retries": self.retries,
                "by_operation": {
                    name: {"count": op.count, "errors": op.errors, **quantiles(op.ms)}
                    for name, op in sorted(self.operations.items())
                },
            },
            "rejections": {
                k: self.rejections.get(k, 0) for k in ("rejected", "invalidated", "throttled")
            },
            "thread_failures": self.thread_failures,
            "callers_denied": dict(sorted(self.denied.items())),
            "store_events": {k: self.store.get(k, 0) for k in ("degraded", "recovered")},
        }
