"""Prometheus metrics: the broker's registry and what feeds it (served by ``broker.transport.ops``).

Theory of operation
-------------------
:class:`BrokerMetrics` owns one :class:`~prometheus_client.CollectorRegistry` per broker (never the
global one: a test process runs many brokers). Two kinds of series feed it:

* events counted as they happen, through hooks: every control-plane exchange
  (``ControlPlaneClient(on_request=...)``), the health monitor's store check, and whether the
  broker serves;
* the broker's own cumulative counters, read at scrape time by a collector: the interceptor's RPC
  tally (RPCs by method and code, unary latency), the authorizer's counters (schemes, fallback
  reasons, cache levels, mints), the caller gate's denials, the circuits and the watch hub. Nothing
  is counted twice, and ``broker.stats`` and ``/metrics`` agree.

:data:`METRICS` lists every family as data (name, type, help, labels), like the event catalogue.
Label values are only method names, status codes, schemes, reasons, operations, rules and configured
identity names: never a thread, task or runtime id, a caller token or a peer address.

:class:`broker.transport.ops.OpsServer` serves the registry over HTTP (``BROKER_OPS_LISTEN``).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker import __version__
from broker.core.credentials.circuit import CircuitState
from broker.core.credentials.counters import AuthorizerCounters
from broker.core.credentials.model import FallbackReason

if TYPE_CHECKING:
    from broker.core.credentials.authorizer import Authorizer
    from broker.core.credentials.circuit import CircuitBreaker
    from broker.transport.grpc.callers import CallerGate
    from broker.transport.grpc.tally import RpcTally

Kind = Literal["counter", "gauge", "histogram", "info"]

RPC_BUCKETS: Final = (5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds: an L1 hit answers in well under a millisecond, a cold thread task in a second or two."""
CONTROLPLANE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 45)
DENIAL_RULES: Final = (
    "authentication",
    "admin",
    "identity",
    "bearer_only",
    "bearer_fallback",
    "rate_limit",
)
"""The caller policy rules (``caller.denied`` events' ``rule``), pre-initialised to 0."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family the broker exports.

    Attributes:
        name: the family name (a counter's samples end in ``_total``).
        kind: counter, gauge, histogram or info.
        help: one line saying what it measures.
        labels: its label names.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def series(self) -> tuple[str, ...]:
        """The sample names a query can use."""
        match self.kind:
            case "counter":
                return (f"{self.name}_total",)
            case "histogram":
                return tuple(f"{self.name}_{s}" for s in ("bucket", "sum", "count"))
            case "info":
                return (f"{self.name}_info",)
            case "gauge":
                return (self.name,)


def _spec(name: str, kind: Kind, help_text: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, kind, help_text, labels)


RPCS = _spec("broker_rpcs", "counter", "Finished RPCs by gRPC code.", "service", "method", "code")
RPC_SECONDS = _spec(
    "broker_rpc_duration_seconds", "histogram", "Unary RPC latency.", "service", "method"
)
AUTHORIZATIONS = _spec(
    "broker_authorizations",
    "counter",
    "Headers resolved by scheme; Bearer by fallback reason (single-flight joiners share one).",
    "scheme",
    "fallback_reason",
)
CACHE_HITS = _spec("broker_cache_hits", "counter", "Assertion cache hits by level.", "level")
CACHE_MISSES = _spec(
    "broker_cache_misses", "counter", "Assertion cache misses by level (l2: minted).", "level"
)
MINTED = _spec("broker_assertions_minted", "counter", "Assertions signed by this replica.")
THROTTLED = _spec(
    "broker_rejections_throttled", "counter", "Rejection reports not acted on (too soon)."
)
CONTROLPLANE = _spec(
    "broker_controlplane_requests",
    "counter",
    "HTTP exchanges with the control plane by HTTP status, or the error when none came back.",
    "identity",
    "operation",
    "status",
)
CONTROLPLANE_SECONDS = _spec(
    "broker_controlplane_request_duration_seconds",
    "histogram",
    "Control-plane exchange latency.",
    "identity",
    "operation",
)
TASK_REGISTRATIONS = _spec(
    "broker_task_registrations", "counter", "Tasks registered at the control plane.", "identity"
)
STORE_UP = _spec("broker_store_up", "gauge", "1 while the store answered the last health check.")
SERVING = _spec("broker_serving", "gauge", "1 while the broker serves (0 starting or draining).")
CIRCUIT_OPEN = _spec(
    "broker_controlplane_circuit_open",
    "gauge",
    "1 while the identity's control-plane circuit is open.",
    "identity",
)
WATCH_STREAMS = _spec("broker_watch_streams", "gauge", "Open WatchAuthorization streams.")
WATCH_TOPICS = _spec("broker_watch_topics", "gauge", "Distinct (identity, slot, mode) watched.")
DENIED = _spec("broker_callers_denied", "counter", "Callers refused, by policy rule.", "rule")
BUILD = _spec("broker_build", "info", "The broker's version.", "version")

METRICS: Final = (
    RPCS,
    RPC_SECONDS,
    AUTHORIZATIONS,
    CACHE_HITS,
    CACHE_MISSES,
    MINTED,
    THROTTLED,
    CONTROLPLANE,
    CONTROLPLANE_SECONDS,
    TASK_REGISTRATIONS,
    STORE_UP,
    SERVING,
    CIRCUIT_OPEN,
    WATCH_STREAMS,
    WATCH_TOPICS,
    DENIED,
    BUILD,
)
"""Every broker family (the registry also carries the standard ``process_*`` families)."""


def _bound(seconds: float) -> str:
    """A histogram bucket's ``le`` label, written as prometheus-client writes its own."""
    return "+Inf" if seconds == float("inf") else repr(float(seconds))


class _StateCollector(Collector):
    """Reads the broker's cumulative counters and gauges at scrape time."""

    def __init__(self) -> None:
        self.authorizer: Authorizer | None = None
        self.gate: CallerGate | None = None
        self.breakers: Mapping[str, CircuitBreaker] = {}
        self.rpcs: RpcTally | None = None

    def describe(self) -> Iterable[Metric]:
        return [*self._rpc_families(None), *self._families(AuthorizerCounters(), Tally(), 0, 0)]

    def collect(self) -> Iterable[Metric]:
        counters = self.authorizer.counters if self.authorizer else AuthorizerCounters()
        rules: Tally[str] = Tally()
        for usage in (self.gate.usage if self.gate else {}).values():
            rules.update(usage.by_rule)
        hub = self.authorizer.watch_hub if self.authorizer else None
        streams, topics = (hub.watchers, hub.topics) if hub else (0, 0)
        return [*self._rpc_families(self.rpcs), *self._families(counters, rules, streams, topics)]

    @staticmethod
    def _rpc_families(rpcs: RpcTally | None) -> Iterator[Metric]:
        """RPCs by method and code, and the latency of unary ones (streams stay out of it: their
        duration is the stream's life)."""
        calls = CounterMetricFamily(RPCS.name, RPCS.help, labels=list(RPCS.labels))
        latency = HistogramMetricFamily(
            RPC_SECONDS.name, RPC_SECONDS.help, labels=list(RPC_SECONDS.labels)
        )
        for method in rpcs.methods() if rpcs is not None else ():
            for code, count in sorted(method.by_code().items()):
                calls.add_metric([method.service, method.name, code], count)
            if method.buckets is not None:
                buckets = [(_bound(b), n) for b, n in method.cumulative()]
                if buckets[-1][1]:
                    latency.add_metric([method.service, method.name], buckets, method.seconds)
        yield calls
        yield latency

    def _families(
        self, counters: AuthorizerCounters, rules: Tally[str], streams: int, topics: int
    ) -> Iterator[Metric]:
        family = CounterMetricFamily(
            AUTHORIZATIONS.name, AUTHORIZATIONS.help, labels=list(AUTHORIZATIONS.labels)
        )
        family.add_metric(["agent_assertion", FallbackReason.NONE.value], counters.assertions)
        for reason, answers in counters.bearer.items():
            family.add_metric(["bearer", reason.value], answers)
        yield family
        hits = CounterMetricFamily(CACHE_HITS.name, CACHE_HITS.help, labels=["level"])
        hits.add_metric(["l1"], counters.l1_hit)
        hits.add_metric(["l2"], counters.l2_hit)
        yield hits
        misses = CounterMetricFamily(CACHE_MISSES.name, CACHE_MISSES.help, labels=["level"])
        misses.add_metric(["l1"], counters.l1_miss)
        misses.add_metric(["l2"], counters.assertion_minted)
        yield misses
        yield CounterMetricFamily(MINTED.name, MINTED.help, value=counters.assertion_minted)
        yield CounterMetricFamily(
            THROTTLED.name, THROTTLED.help, value=counters.rejection_throttled
        )
        denied = CounterMetricFamily(DENIED.name, DENIED.help, labels=["rule"])
        for rule in sorted({*DENIAL_RULES, *rules}):
            denied.add_metric([rule], rules[rule])
        yield denied
        circuits = GaugeMetricFamily(CIRCUIT_OPEN.name, CIRCUIT_OPEN.help, labels=["identity"])
        for name, breaker in sorted(self.breakers.items()):
            circuits.add_metric([name], 1 if breaker.state is CircuitState.OPEN else 0)
        yield circuits
        yield GaugeMetricFamily(WATCH_STREAMS.name, WATCH_STREAMS.help, value=streams)
        yield GaugeMetricFamily(WATCH_TOPICS.name, WATCH_TOPICS.help, value=topics)


class BrokerMetrics:
    """One broker's registry and instruments (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry

        def counter(spec: MetricSpec) -> Counter:
            return Counter(spec.name, spec.help, spec.labels, registry=registry)

        def histogram(spec: MetricSpec, buckets: Iterable[float]) -> Histogram:
            return Histogram(
                spec.name, spec.help, spec.labels, registry=registry, buckets=tuple(buckets)
            )

        self._controlplane = counter(CONTROLPLANE)
        self._controlplane_seconds = histogram(CONTROLPLANE_SECONDS, CONTROLPLANE_BUCKETS)
        self._registrations = counter(TASK_REGISTRATIONS)
        self._store_up = Gauge(STORE_UP.name, STORE_UP.help, registry=registry)
        self._serving = Gauge(SERVING.name, SERVING.help, registry=registry)
        self._is_serving = False
        Info(BUILD.name, BUILD.help, registry=registry).info({"version": __version__})
        self._state = _StateCollector()
        registry.register(self._state)
        ProcessCollector(registry=registry)

    def bind(
        self,
        *,
        authorizer: Authorizer,
        gate: CallerGate,
        breakers: Mapping[str, CircuitBreaker],
        rpcs: RpcTally,
    ) -> None:
        """Read these objects' counters at every scrape."""
        self._state.authorizer = authorizer
        self._state.gate = gate
        self._state.breakers = breakers
        self._state.rpcs = rpcs

    # -- hooks -------------------------------------------------------------------------------------

    def controlplane_observer(self, identity: str) -> Callable[[str, str, float], None]:
        """The ``on_request`` hook of ``identity``'s control-plane client."""
        requests = self._controlplane
        latency = self._controlplane_seconds
        registrations = self._registrations.labels(identity)

        def observe(operation: str, status: str, seconds: float) -> None:
            requests.labels(identity, operation, status).inc()
            latency.labels(identity, operation).observe(seconds)
            if operation == "register_task" and status.startswith("2"):
                registrations.inc()

        return observe

    def store_checked(self, reachable: bool) -> None:
        """Record the outcome of a store health check."""
        self._store_up.set(1 if reachable else 0)

    @property
    def serving(self) -> bool:
        """Whether the broker serves (set by the app when it starts and when it drains)."""
        return self._is_serving

    @serving.setter
    def serving(self, value: bool) -> None:
        self._is_serving = value
        self._serving.set(1 if value else 0)

    def series_names(self) -> frozenset[str]:
        """Every sample name the registry exports (counters ``_total``, histograms ``_bucket``...)."""
        kinds: dict[str, Kind] = {"counter": "counter", "histogram": "histogram", "info": "info"}
        return frozenset(
            name
            for family in self.registry.collect()
            for name in MetricSpec(family.name, kinds.get(family.type, "gauge"), "").series
        )
