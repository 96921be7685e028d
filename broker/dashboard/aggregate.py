"""Aggregates of the broker's log stream, per replica and in total, over a sliding window (pure).

Theory of operation
-------------------
*Time.* Replicas' clocks disagree, so no two replicas' timestamps are ever compared. Each replica's
window ends at *its own* "now", estimated from the latest line it wrote: ``offset = arrival time -
line timestamp``, and ``replica now = wall clock - offset``. A quiet replica's window therefore keeps
moving (its rates fall to zero), and a replica ten minutes ahead looks just like one in sync. Lines
without a readable timestamp are placed at the replica's estimated now. Rates divide a counter's
share by the time between the two snapshots it was taken from.

*Counters.* ``broker.stats`` (every 10 s by default, and the final ``broker.stopped``) carry
cumulative counters: the authorizer's, and the RPCs by code and by method (a successful RPC writes
no line of its own). The window's share is the latest snapshot minus the newest one at or before
the window's start (or minus zero at the replica's start when that is known and no older snapshot
is). A counter that went down means the replica restarted: the latest value is its share.

*Totals* add the replicas' counts and rates; latency quantiles merge every replica's samples.

Nothing here reads a clock or does I/O: callers pass the arrival time of each line and the wall
clock of each snapshot, so tests drive it deterministically.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from broker.dashboard.lines import Parsed, Skipped, parse_line
from broker.dashboard.tally import Tally, scheme_counts
from broker.events import Event

DEFAULT_WINDOW_S: Final = 60.0
_MAX_SAMPLES: Final = 200_000
_WARNING_LEVELS: Final = frozenset({"warning", "error", "critical"})
_KNOWN: Final = frozenset(e.value for e in Event)
# Events whose occurrences are counted inside the window.
_WINDOWED: Final = frozenset(
    {
        Event.FALLBACK_BEARER,
        Event.CONTROLPLANE_REQUEST,
        Event.CONTROLPLANE_RETRY,
        Event.TASK_REGISTERED,
        Event.IDENTITY_REGISTERED,
        Event.TASK_REJECTED,
        Event.TASK_INVALIDATED,
        Event.TASK_REJECTION_THROTTLED,
        Event.AUTHORIZATION_FAILED,
        Event.CALLER_DENIED,
        Event.STORE_DEGRADED,
        Event.STORE_RECOVERED,
    }
)
_STORE_STATE: Final = {
    Event.STORE_CONNECTED: "up",
    Event.STORE_RECOVERED: "up",
    Event.STORE_DEGRADED: "down",
    Event.STORE_EMBEDDED: "embedded",
}
_LIFE: Final = {
    Event.BROKER_STARTED: "serving",
    Event.BROKER_STOPPING: "stopping",
    Event.BROKER_STOPPED: "stopped",
}
_ACCOUNT_EVENTS: Final = frozenset(
    {
        Event.ACCOUNT_IMPORTED,
        Event.ACCOUNT_REFRESHED,
        Event.ACCOUNT_REFRESH_FAILED,
        Event.ACCOUNT_REAUTH_REQUIRED,
    }
)
_NOT_DETAIL: Final = frozenset({"event", "level", "timestamp", "request_id", "peer", "rpc_method"})


def parse_timestamp(value: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 timestamp, or ``None``."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _counters(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


_COUNTER_GROUPS: Final = ("authorizer", "rpcs_by_code", "rpcs_by_method")
"""The cumulative counters of a ``broker.stats`` line the window's share is taken of."""

Counters = dict[str, dict[str, int]]
"""One snapshot: counters by group (:data:`_COUNTER_GROUPS`), then by name."""


@dataclass(slots=True)
class _Replica:
    """What is known about one replica."""

    name: str
    first_ts: float
    last_ts: float
    offset: float
    lines: int = 0
    state: str = "unknown"
    version: str | None = None
    store: str = "unknown"
    circuits: dict[str, str] = field(default_factory=dict)
    samples: deque[tuple[float, str, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=_MAX_SAMPLES)
    )
    snapshots: deque[tuple[float, Counters]] = field(default_factory=deque)
    started_ts: float | None = None
    callers: dict[str, Any] = field(default_factory=dict)

    def now(self, wall: float) -> float:
        """This replica's clock at wall-clock time ``wall``, as estimated from its latest line."""
        return wall - self.offset

    def prune(self, start: float) -> None:
        """Forget samples before ``start``; keep one snapshot at or before it (the baseline)."""
        while self.samples and self.samples[0][0] < start:
            self.samples.popleft()
        while len(self.snapshots) >= 2 and self.snapshots[1][0] <= start:
            self.snapshots.popleft()


class Aggregator:
    """Accumulates lines and answers :meth:`snapshot`.

    Args:
        window: the sliding window, in seconds.
        warnings: how many of the latest warning/error lines to keep.
    """

    def __init__(self, window: float = DEFAULT_WINDOW_S, warnings: int = 12) -> None:
        if not window > 0:
            raise ValueError("window must be a positive number of seconds")
        self.window: Final = window
        self._replicas: dict[str, _Replica] = {}
        self._warnings: deque[dict[str, Any]] = deque(maxlen=warnings)
        self.read = 0
        self.skipped: Counter[str] = Counter()
        self.unknown_events: Counter[str] = Counter()
        self._accounts: dict[str, dict[str, Any]] = {}

    # -- input ---------------------------------------------------------------------------------

    def feed_text(
        self, text: str, received_at: float, default_replica: str = "-", *, partial: bool = False
    ) -> Parsed | Skipped | None:
        """Parse one raw line and account for it; blank lines are ignored (``None``).

        Args:
            text: the raw line.
            received_at: its arrival, wall-clock seconds since the epoch.
            default_replica: who wrote it when it carries no prefix.
            partial: it is an unterminated rest (a rotated or truncated file, or the end of a
                pipe); if it does not parse it is skipped as ``partial``.
        """
        outcome = parse_line(text, default_replica)
        if outcome is None:
            return None
        self.read += 1
        if isinstance(outcome, Skipped):
            if partial:
                outcome = Skipped("partial")
            self.skipped[outcome.reason] += 1
        else:
            self.feed(outcome, received_at)
        return outcome

    def feed(self, parsed: Parsed, received_at: float) -> None:
        """Account for one decoded line that arrived at wall-clock time ``received_at``."""
        record = parsed.record
        replica = self._replicas.get(parsed.replica)
        ts = parse_timestamp(record.get("timestamp"))
        if ts is None:
            ts = received_at if replica is None else replica.now(received_at)
        if replica is None:
            replica = _Replica(parsed.replica, ts, ts, received_at - ts)
            self._replicas[parsed.replica] = replica
        if ts >= replica.last_ts:
            replica.last_ts, replica.offset = ts, received_at - ts
        replica.first_ts = min(replica.first_ts, ts)
        replica.lines += 1
        name = str(record["event"])
        if name not in _KNOWN:
            self.unknown_events[name] += 1
        if record.get("level") in _WARNING_LEVELS:
            self._warn(parsed.replica, record)
        if name in _KNOWN:
            self._apply(replica, Event(name), ts, record)
        replica.prune(replica.now(received_at) - self.window)

    def _warn(self, replica: str, record: dict[str, Any]) -> None:
        detail = " ".join(
            f"{k}={v}" for k, v in record.items() if k not in _NOT_DETAIL and v is not None
        )
        self._warnings.append(
            {
                "replica": replica,
                "timestamp": str(record.get("timestamp", "")),
                "level": str(record.get("level")),
                "event": str(record.get("event")),
                "detail": detail[:160],
            }
        )

    def _apply(self, replica: _Replica, event: Event, ts: float, record: dict[str, Any]) -> None:
        if event in _LIFE:
            replica.state = _LIFE[event]
            if event is Event.BROKER_STARTED:
                replica.started_ts = ts
                replica.version = str(record.get("version")) if record.get("version") else None
                replica.snapshots.clear()
        if event in _STORE_STATE:
            replica.store = _STORE_STATE[event]
        if event is Event.CONTROLPLANE_CIRCUIT_OPENED:
            replica.circuits[str(record.get("identity"))] = "open"
        elif event is Event.CONTROLPLANE_CIRCUIT_CLOSED:
            replica.circuits[str(record.get("identity"))] = "closed"
        if event in (Event.BROKER_STATS, Event.BROKER_STOPPED):
            if replica.state == "unknown":
                replica.state = "serving"
            counters = {group: _counters(record.get(group)) for group in _COUNTER_GROUPS}
            fresh = not replica.snapshots or ts >= replica.snapshots[-1][0]
            if any(counters.values()) and fresh:
                replica.snapshots.append((ts, counters))
            if isinstance(record.get("callers"), dict):
                replica.callers = record["callers"]
        if event in _ACCOUNT_EVENTS:
            self._account(event, record)
        if event in _WINDOWED:
            replica.samples.append((ts, event.value, record))

    def _account(self, event: Event, record: dict[str, Any]) -> None:
        """The latest known state of each identity's login (fleet-wide: one refresher)."""
        account = self._accounts.setdefault(
            str(record.get("identity")),
            {"state": "unknown", "refreshes": 0, "failures": 0, "last_failure": None},
        )
        if record.get("account_id"):
            account["account_id"] = record["account_id"]
        if record.get("access_expires_at"):
            account["access_expires_at"] = record["access_expires_at"]
        if event is Event.ACCOUNT_REFRESHED:
            account["refreshes"] += 1
            account["state"] = "active"
            account["last_refresh"] = record.get("timestamp")
        elif event is Event.ACCOUNT_IMPORTED:
            account["state"] = str(record.get("state") or "active")
        elif event is Event.ACCOUNT_REFRESH_FAILED:
            account["failures"] += 1
            account["last_failure"] = record.get("reason")
        elif event is Event.ACCOUNT_REAUTH_REQUIRED:
            account["state"] = "reauth_required"

    # -- output --------------------------------------------------------------------------------

    def _tally(self, replica: _Replica, wall: float) -> Tally:
        start = replica.now(wall) - self.window
        replica.prune(start)
        tally = Tally()
        for ts, name, record in replica.samples:
            if start < ts:
                tally.add(name, record)
        tally.counters_delta(*self._delta(replica, start))
        return tally

    @staticmethod
    def _delta(replica: _Replica, start: float) -> tuple[Counters, float]:
        """The window's share of the cumulative counters, and the seconds it covers.

        The baseline is the newest snapshot at or before the window's start; failing that, zero at
        the replica's start (when its ``broker.started`` was seen); failing that, its oldest
        snapshot; a lone snapshot of a replica whose start was not seen tells nothing yet.
        """
        snapshots = replica.snapshots
        if not snapshots:
            return {}, 0.0
        latest_ts, latest = snapshots[-1]
        base: Counters
        if len(snapshots) >= 2 and snapshots[0][0] <= start:
            base_ts, base = snapshots[0]
        elif replica.started_ts is not None:
            base_ts, base = replica.started_ts, {}
        elif len(snapshots) >= 2:
            base_ts, base = snapshots[0]
        else:
            return {}, 0.0
        delta: Counters = {}
        for group, counters in latest.items():
            earlier = base.get(group, {})
            delta[group] = {
                name: value - earlier.get(name, 0) if value >= earlier.get(name, 0) else value
                for name, value in counters.items()
            }
        return delta, max(latest_ts - base_ts, 0.0)

    def snapshot(self, wall: float) -> dict[str, Any]:
        """Every aggregate as plain JSON-able data, at wall-clock time ``wall``."""
        replicas: dict[str, Any] = {}
        total = Tally()
        total_rates: Counter[str] = Counter()
        for name in sorted(self._replicas):
            replica = self._replicas[name]
            tally = self._tally(replica, wall)
            total.merge(tally)
            view = tally.view()
            total_rates.update(view["rates_per_s"])
            replicas[name] = {
                "state": replica.state,
                "version": replica.version,
                "lines": replica.lines,
                "last_seen_s_ago": round(max(0.0, replica.now(wall) - replica.last_ts), 1),
                "redis": replica.store,
                "circuits": dict(replica.circuits),
                "callers": replica.callers,
                **view,
            }
        totals = total.view()
        totals["rates_per_s"] = {k: round(v, 3) for k, v in sorted(total_rates.items())}
        redis: dict[str, list[str]] = {}
        for name, replica in sorted(self._replicas.items()):
            redis.setdefault(replica.store, []).append(name)
        totals["redis"] = redis
        totals["circuits_open"] = sorted(
            {i for r in self._replicas.values() for i, s in r.circuits.items() if s == "open"}
        )
        return {
            "window_s": self.window,
            "lines": {
                "read": self.read,
                "parsed": self.read - sum(self.skipped.values()),
                "skipped": sum(self.skipped.values()),
                "skipped_by_reason": dict(sorted(self.skipped.items())),
                "unknown_events": dict(sorted(self.unknown_events.items())),
            },
            "total": totals,
            "accounts": {name: dict(a) for name, a in sorted(self._accounts.items())},
            "replicas": replicas,
            "warnings": list(self._warnings),
        }


__all__ = ["DEFAULT_WINDOW_S", "Aggregator", "parse_timestamp", "scheme_counts"]
