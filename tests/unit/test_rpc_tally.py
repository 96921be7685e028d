"""The interceptor's RPC tally and the views broker.stats, /metrics and GetUsage fold from it."""

from __future__ import annotations

import pytest

from broker.metrics import RPC_BUCKETS
from broker.transport.grpc.tally import MethodTally, RpcTally

GET = "/credential_broker.v1.CredentialBroker/GetAuthorization"
WATCH = "/credential_broker.v1.CredentialBroker/WatchAuthorization"


@pytest.fixture(name="tally")
def fixture_tally() -> RpcTally:
    tally = RpcTally(RPC_BUCKETS)
    get = tally.method(GET, timed=True)
    get.succeeded("worker", 0.0004)
    get.succeeded("worker", 0.002)
    get.succeeded(None, 0.02)
    get.finished("UNAVAILABLE", "worker", 3.0)
    tally.method(WATCH, timed=False).finished("CANCELLED", "ops", 120.0)
    return tally


class TestMethodTally:
    def test_names(self) -> None:
        """A method's tally knows its service and its short name."""
        method = MethodTally(GET, RPC_BUCKETS, timed=True)
        assert (method.service, method.name) == (
            "credential_broker.v1.CredentialBroker",
            "GetAuthorization",
        )

    def test_buckets_are_upper_bounds(self) -> None:
        """A latency equal to a bound falls in that bound's bucket; beyond the last, in +Inf."""
        method = MethodTally(GET, (0.001, 0.01), timed=True)
        for seconds in (0.001, 0.005, 0.01, 99.0):
            method.succeeded(None, seconds)
        assert method.cumulative() == [(0.001, 1), (0.01, 3), (float("inf"), 4)]
        assert method.seconds == pytest.approx(99.016)

    def test_streams_are_not_timed(self) -> None:
        """A stream's duration is counted in the seconds total, never in the histogram."""
        method = MethodTally(WATCH, (0.001,), timed=False)
        method.finished("OK", None, 30.0)
        assert method.buckets is None
        assert method.cumulative() == [(float("inf"), 0)]
        assert method.seconds == 30.0

    def test_finished_ok_is_a_success(self) -> None:
        """``finished`` with OK counts as a success of that caller."""
        method = MethodTally(GET, (), timed=True)
        method.finished("OK", "a", 0.1)
        assert method.ok == {"a": 1}
        assert not method.failed


class TestViews:
    def test_by_code_and_method(self, tally: RpcTally) -> None:
        """Totals by code and by short method name."""
        assert tally.by_code() == {"OK": 3, "UNAVAILABLE": 1, "CANCELLED": 1}
        assert tally.by_method() == {"GetAuthorization": 4, "WatchAuthorization": 1}
        assert tally.total() == 5
        assert tally.seconds_total() == pytest.approx(123.0224)

    def test_by_caller(self, tally: RpcTally) -> None:
        """Named callers' RPCs by code and method; calls without a caller are not listed."""
        callers = tally.by_caller()
        assert set(callers) == {"worker", "ops"}
        assert callers["worker"].by_code == {"OK": 2, "UNAVAILABLE": 1}
        assert callers["worker"].by_method == {"GetAuthorization": 3}
        assert callers["ops"].by_method == {"WatchAuthorization": 1}

    def test_methods_once_each(self, tally: RpcTally) -> None:
        """Asking for a method's tally again returns the same one."""
        assert tally.method(GET, timed=True) is tally.method(GET, timed=True)
        assert [m.name for m in tally.methods()] == ["GetAuthorization", "WatchAuthorization"]
