"""Counts of finished RPCs: written by the interceptor, read by ``broker.stats``, ``/metrics`` and
the admin service's ``GetUsage``.

Theory of operation
-------------------
The interceptor counts every finished RPC once, here, and nothing else counts RPCs. A successful
call costs one dict increment and one latency bucket; everything a reader wants (RPCs by code, by
method, per caller, the Prometheus families) is folded from these counts when it is read, which
happens every ``BROKER_STATS_INTERVAL``, at each scrape and on each ``GetUsage``, never per call.

Each method has its own :class:`MethodTally`, created when the interceptor first wraps the method's
handler, so the hot path never looks a method up. Callers are counted by their configured name
(``None``: no caller, as for health checks), never by token or peer.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

OK: Final = "OK"


class MethodTally:
    """One method's finished calls by (code, caller), and the latency of the unary ones.

    Args:
        method: the full method, ``/package.Service/Method``.
        buckets: upper bounds (seconds, ascending) of the latency histogram.
        timed: whether latency goes into the histogram (unary calls; a stream's duration is its
            life, not a latency).
    """

    __slots__ = ("buckets", "failed", "method", "name", "observed", "ok", "seconds", "service")

    def __init__(self, method: str, buckets: Sequence[float], *, timed: bool) -> None:
        self.method = method
        self.service, _, self.name = method.lstrip("/").rpartition("/")
        self.ok: dict[str | None, int] = {}
        """Successful calls by caller name."""
        self.failed: Counter[tuple[str, str | None]] = Counter()
        """Other calls by (gRPC code name, caller name)."""
        self.buckets: tuple[float, ...] | None = tuple(buckets) if timed else None
        self.observed = [0] * (len(self.buckets or ()) + 1)
        """Calls per latency bucket; the last one is +Inf (not cumulative)."""
        self.seconds = 0.0
        """Seconds spent in every call of this method, streams included."""

    def succeeded(self, caller: str | None, seconds: float) -> None:
        """Count a call that ended OK (the hot path: keep it this small)."""
        ok = self.ok
        ok[caller] = ok.get(caller, 0) + 1
        self.seconds += seconds
        if self.buckets is not None:
            self.observed[bisect_left(self.buckets, seconds)] += 1

    def finished(self, code: str, caller: str | None, seconds: float) -> None:
        """Count a call that ended with ``code``."""
        if code == OK:
            self.succeeded(caller, seconds)
            return
        self.failed[code, caller] += 1
        self._time(seconds)

    def _time(self, seconds: float) -> None:
        self.seconds += seconds
        if self.buckets is not None:
            self.observed[bisect_left(self.buckets, seconds)] += 1

    def by_code(self) -> Counter[str]:
        """Calls by gRPC code name."""
        counts: Counter[str] = Counter()
        if self.ok:
            counts[OK] = sum(self.ok.values())
        for (code, _), calls in self.failed.items():
            counts[code] += calls
        return counts

    def by_caller(self) -> Iterator[tuple[str | None, str, int]]:
        """(caller, code, calls) for every pair that has calls."""
        for caller, calls in self.ok.items():
            yield caller, OK, calls
        for (code, caller), calls in self.failed.items():
            yield caller, code, calls

    def cumulative(self) -> list[tuple[float, int]]:
        """The histogram as Prometheus wants it: (upper bound, calls at or below it), +Inf last."""
        bounds = (*(self.buckets or ()), float("inf"))
        running = 0
        buckets = []
        for bound, calls in zip(bounds, self.observed, strict=True):
            running += calls
            buckets.append((bound, running))
        return buckets


@dataclass(slots=True)
class CallerRpcs:
    """One caller's finished RPCs."""

    by_code: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)


class RpcTally:
    """Every method's :class:`MethodTally`, and the views readers fold from them.

    Args:
        buckets: upper bounds (seconds) of the unary latency histogram.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self._buckets = tuple(buckets)
        self._methods: dict[str, MethodTally] = {}

    def method(self, method: str, *, timed: bool) -> MethodTally:
        """The tally of ``method`` (``/package.Service/Method``), created on first use."""
        tally = self._methods.get(method)
        if tally is None:
            tally = self._methods[method] = MethodTally(method, self._buckets, timed=timed)
        return tally

    def methods(self) -> list[MethodTally]:
        """Every method that was called or wrapped, sorted by name."""
        return [self._methods[name] for name in sorted(self._methods)]

    def by_code(self) -> Counter[str]:
        """Finished RPCs by gRPC code name."""
        counts: Counter[str] = Counter()
        for tally in self._methods.values():
            counts.update(tally.by_code())
        return counts

    def by_method(self) -> Counter[str]:
        """Finished RPCs by method name (without the service)."""
        counts: Counter[str] = Counter()
        for tally in self._methods.values():
            calls = sum(tally.by_code().values())
            if calls:
                counts[tally.name] += calls
        return counts

    def total(self) -> int:
        """Finished RPCs."""
        return sum(self.by_code().values())

    def seconds_total(self) -> float:
        """Seconds spent serving RPCs (streams included)."""
        return sum(tally.seconds for tally in self._methods.values())

    def by_caller(self) -> dict[str, CallerRpcs]:
        """Finished RPCs of each named caller (calls without a caller are not listed)."""
        callers: dict[str, CallerRpcs] = {}
        for tally in self._methods.values():
            for caller, code, calls in tally.by_caller():
                if caller is not None:
                    rpcs = callers.setdefault(caller, CallerRpcs())
                    rpcs.by_code[code] += calls
                    rpcs.by_method[tally.name] += calls
        return callers
