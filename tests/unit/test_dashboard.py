"""The dashboard's pure parts: line parsing and aggregation; its file follower on real files."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker.dashboard import Aggregator, Parsed, Skipped, parse_line, run_dashboard
from broker.dashboard.lines import MAX_LINE_CHARS
from broker.dashboard.sources import FileFollower, PipeReader

T0 = 1_800_000_000.0  # a fixed "now", seconds since the epoch


def stamp(seconds: float) -> str:
    """The ISO timestamp of ``seconds`` since the epoch, as structlog writes it."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def line(event: str, at: float, level: str = "info", **fields: Any) -> str:
    """One log line as the broker writes it."""
    return json.dumps({"event": event, "level": level, "timestamp": stamp(at), **fields})


def rpcs(at: float, ok: int, method: str = "GetAuthorization", **codes: int) -> str:
    """A ``broker.stats`` line counting ``ok`` successful RPCs and ``codes`` since start."""
    by_code = {"OK": ok, **codes}
    return line(
        "broker.stats",
        at,
        authorizer={},
        rpcs_by_code=by_code,
        rpcs_by_method={method: sum(by_code.values())},
        circuits_open=[],
    )


def started(at: float) -> str:
    """A ``broker.started`` line: the replica's counters start from zero here."""
    return line("broker.started", at, version="1.2.3")


def stats(at: float, **authorizer: int) -> str:
    """A ``broker.stats`` line with these authorizer counters."""
    return line("broker.stats", at, authorizer=authorizer, rpcs_by_code={}, circuits_open=[])


@pytest.fixture(name="aggregator")
def fixture_aggregator() -> Aggregator:
    return Aggregator(window=60)


class TestParseLine:
    def test_bare_object(self) -> None:
        """A bare JSON line belongs to the default replica."""
        assert parse_line('{"event": "x"}', "file.log") == Parsed("file.log", {"event": "x"})

    def test_kubectl_prefix(self) -> None:
        """``kubectl logs --prefix`` names the pod."""
        parsed = parse_line('[pod/credential-broker-7d9f/broker] {"event": "x"}')
        assert parsed == Parsed("credential-broker-7d9f", {"event": "x"})

    def test_compose_prefix(self) -> None:
        """A ``label | {…}`` prefix (docker compose) names the replica."""
        assert parse_line('broker-2  | {"event": "x"}') == Parsed("broker-2", {"event": "x"})

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("not json at all", "not_json"),
            ('{"event": "rpc.comp', "not_json"),
            ("[pod/a/b] garbage {", "not_json"),
            ("[1, 2, 3]", "not_an_object"),
            ('"a string"', "not_an_object"),
            ('x {"no": "event"}', "no_event"),
            ('{"event": 5}', "no_event"),
            ('{"event": ""}', "no_event"),
            ("{" * 100_000, "not_json"),
        ],
    )
    def test_unusable_lines(self, text: str, reason: str) -> None:
        """Garbage, truncated or eventless lines are skipped with a reason."""
        assert parse_line(text) == Skipped(reason)

    def test_json_that_is_not_an_object(self) -> None:
        """A JSON array after a prefix is skipped as not an object."""
        assert parse_line("[pod/a/b] [1, 2]") == Skipped("not_an_object")

    def test_blank(self) -> None:
        """Blank lines are not lines."""
        assert parse_line("   \n") is None


class TestTolerance:
    def test_garbage_is_counted(self, aggregator: Aggregator) -> None:
        """Garbage and partial lines are counted as skipped, by reason, without raising."""
        for text in ("garbage", "\x00\xff", '{"event":', "[]", ""):
            aggregator.feed_text(text, T0)
        aggregator.feed_text('{"event": "rpc.comp', T0, partial=True)
        lines = aggregator.snapshot(T0)["lines"]
        assert lines["read"] == 5
        assert lines["skipped"] == 5
        assert lines["skipped_by_reason"] == {"not_json": 3, "not_an_object": 1, "partial": 1}

    def test_unknown_events(self, aggregator: Aggregator) -> None:
        """Unknown events are counted, and a warning-level one still shows among the warnings."""
        aggregator.feed_text(line("future.thing", T0, level="warning", x=1), T0)
        snapshot = aggregator.snapshot(T0)
        assert snapshot["lines"]["unknown_events"] == {"future.thing": 1}
        assert [w["event"] for w in snapshot["warnings"]] == ["future.thing"]

    def test_fields_of_the_wrong_type(self, aggregator: Aggregator) -> None:
        """Known events with odd field values are aggregated without raising."""
        odd = [
            line("controlplane.request", T0, operation=None, status="200", duration_ms="slow"),
            line("task.registered", T0, task_kind=["x"], duration_ms=float("nan")),
            line("broker.stats", T0, authorizer=[1, 2], callers="nobody"),
            line("broker.stats", T0, authorizer={"l1_hit": "many", "l2_hit": True}),
            json.dumps({"event": "rpc.completed", "timestamp": 12}),
        ]
        for text in odd:
            aggregator.feed_text(text, T0)
        total = aggregator.snapshot(T0)["total"]
        assert total["controlplane"]["errors"] == 1
        assert total["registrations"]["task_latency_ms"]["p50"] is None

    def test_no_timestamp(self, aggregator: Aggregator) -> None:
        """A line without a timestamp is placed at its replica's estimated now."""
        aggregator.feed_text(json.dumps({"event": "broker.started"}), T0)
        stats_line = {"event": "broker.stats", "rpcs_by_code": {"OK": 1}}
        aggregator.feed_text(json.dumps(stats_line), T0 + 1)
        assert aggregator.snapshot(T0 + 1)["total"]["rpcs"]["by_code"] == {"OK": 1}

    def test_rpcs_come_from_stats_not_lines(self, aggregator: Aggregator) -> None:
        """``rpc.completed`` lines (failures, a sampled access log) are not counted twice."""
        aggregator.feed_text(started(T0 - 10), T0)
        aggregator.feed_text(
            line("rpc.completed", T0 - 5, grpc_code="UNAVAILABLE", duration_ms=1.5), T0
        )
        aggregator.feed_text(rpcs(T0, 4, UNAVAILABLE=1), T0)
        total = aggregator.snapshot(T0)["total"]
        assert total["rpcs"]["by_code"] == {"OK": 4, "UNAVAILABLE": 1}
        assert total["rpcs"]["by_method"] == {"GetAuthorization": 5}
        assert total["rates_per_s"]["rpcs"] == 0.5


class TestReplicas:
    def test_prefixes_split_replicas(self, aggregator: Aggregator) -> None:
        """Prefixed lines count for their pod; totals add the pods."""
        for pod, count in (("a", 3), ("b", 2)):
            aggregator.feed_text(f"[pod/{pod}/broker] {started(T0 - 10)}", T0)
            aggregator.feed_text(f"[pod/{pod}/broker] {rpcs(T0, count)}", T0)
        snapshot = aggregator.snapshot(T0)
        assert {n: r["rpcs"]["count"] for n, r in snapshot["replicas"].items()} == {"a": 3, "b": 2}
        assert snapshot["total"]["rpcs"]["count"] == 5

    def test_clock_skew(self, aggregator: Aggregator) -> None:
        """A replica whose clock is an hour ahead still has its recent lines in its window."""
        aggregator.feed_text(f"[pod/sync/b] {started(T0 - 11)}", T0 - 11)
        aggregator.feed_text(f"[pod/ahead/b] {started(T0 + 3600 - 11)}", T0 - 11)
        for i in range(10):
            aggregator.feed_text(f"[pod/sync/b] {rpcs(T0 - 10 + i, i + 1)}", T0 - 10 + i)
            aggregator.feed_text(f"[pod/ahead/b] {rpcs(T0 + 3600 - 10 + i, i + 1)}", T0 - 10 + i)
        replicas = aggregator.snapshot(T0)["replicas"]
        assert replicas["sync"]["rpcs"]["count"] == 10
        assert replicas["ahead"]["rpcs"]["count"] == 10
        assert replicas["ahead"]["rates_per_s"] == replicas["sync"]["rates_per_s"]

    def test_window_slides(self, aggregator: Aggregator) -> None:
        """Only the last 60 s of a replica's own clock count; a quiet replica decays to zero."""
        for i in range(120):
            aggregator.feed_text(rpcs(T0 - 119 + i, i + 1), T0)
        assert aggregator.snapshot(T0)["total"]["rpcs"]["count"] == 60
        assert aggregator.snapshot(T0 + 30)["total"]["rpcs"]["count"] == 30
        assert aggregator.snapshot(T0 + 120)["total"]["rpcs"]["count"] == 0

    def test_life_cycle_and_health(self, aggregator: Aggregator) -> None:
        """Start, Redis outage, circuit state and stop are tracked per replica."""
        for text in (
            line("broker.started", T0 - 9, version="1.2.3"),
            line(
                "store.degraded", T0 - 8, level="warning", redis="r:6379", operation="x", error="E"
            ),
            line("controlplane.circuit_opened", T0 - 7, level="warning", identity="main"),
        ):
            aggregator.feed_text(text, T0)
        replica = aggregator.snapshot(T0)["replicas"]["-"]
        assert (replica["state"], replica["version"], replica["redis"]) == (
            "serving",
            "1.2.3",
            "down",
        )
        assert replica["circuits"] == {"main": "open"}
        assert aggregator.snapshot(T0)["total"]["circuits_open"] == ["main"]
        aggregator.feed_text(line("store.recovered", T0 - 5, redis="r:6379"), T0)
        aggregator.feed_text(line("controlplane.circuit_closed", T0 - 4, identity="main"), T0)
        aggregator.feed_text(line("broker.stopped", T0 - 1, authorizer={}), T0)
        replica = aggregator.snapshot(T0)["replicas"]["-"]
        assert (replica["state"], replica["redis"], replica["circuits"]) == (
            "stopped",
            "up",
            {"main": "closed"},
        )
        assert replica["store_events"] == {"degraded": 1, "recovered": 1}


class TestCounters:
    def test_window_share_of_stats(self, aggregator: Aggregator) -> None:
        """Rates by scheme and hit ratios come from the difference of two stats snapshots."""
        before = {"l1_hit": 100, "l1_miss": 100, "bearer.disabled": 5}
        aggregator.feed_text(stats(T0 - 120, **before), T0)
        aggregator.feed_text(stats(T0 - 60, **before), T0)
        after = {"l1_hit": 208, "l1_miss": 112, "l2_hit": 6, "assertion_minted": 6}
        aggregator.feed_text(stats(T0, **after, **{"bearer.disabled": 17}), T0)
        total = aggregator.snapshot(T0)["total"]
        assert total["authorizations"] == {"AgentAssertion": 120, "Bearer": 12}
        assert total["rates_per_s"] == {"AgentAssertion": 2.0, "Bearer": 0.2, "rpcs": 0.0}
        assert total["cache"]["l1_hit_ratio"] == 0.9
        assert total["cache"]["l2_hit_ratio"] == 0.5
        assert total["fallbacks"] == {"disabled": 12}

    def test_workers_of_one_pod_keep_their_own_counters(self, aggregator: Aggregator) -> None:
        """Two workers' stats in one stream are two replicas: neither reads as the other's reset."""
        for at, counts in ((T0 - 60, (100, 40)), (T0, (160, 70))):
            for worker, l1_hit in enumerate(counts):
                entry = json.loads(stats(at, l1_hit=l1_hit))
                aggregator.feed_text(
                    f"[pod/p1/broker] {json.dumps({**entry, 'worker': worker})}", T0
                )
        view = aggregator.snapshot(T0)
        assert sorted(view["replicas"]) == ["p1/worker-0", "p1/worker-1"]
        assert view["total"]["authorizations"]["AgentAssertion"] == 60 + 30

    def test_restart_resets_counters(self, aggregator: Aggregator) -> None:
        """Counters that went down mean a restart: the latest values are the window's share."""
        aggregator.feed_text(stats(T0 - 70, l1_hit=500), T0)
        aggregator.feed_text(stats(T0 - 10, l1_hit=7), T0)
        assert aggregator.snapshot(T0)["total"]["authorizations"]["AgentAssertion"] == 7

    def test_lone_snapshot(self, aggregator: Aggregator) -> None:
        """One snapshot says nothing about the window unless the replica's start was seen."""
        aggregator.feed_text(stats(T0, l1_hit=50), T0)
        assert aggregator.snapshot(T0)["total"]["authorizations"]["AgentAssertion"] == 0
        aggregator.feed_text(line("broker.started", T0 - 10), T0)
        aggregator.feed_text(stats(T0, l1_hit=50), T0)
        total = aggregator.snapshot(T0)["total"]
        assert total["authorizations"]["AgentAssertion"] == 50
        assert total["rates_per_s"]["AgentAssertion"] == 5.0

    def test_registrations_and_latency(self, aggregator: Aggregator) -> None:
        """Registrations are counted by kind with latency quantiles; requests by operation."""
        for i, ms in enumerate((10.0, 20.0, 30.0, 400.0)):
            kind = "background" if i == 0 else "thread"
            aggregator.feed_text(
                line("task.registered", T0 - i, task_kind=kind, duration_ms=ms), T0
            )
            aggregator.feed_text(
                line(
                    "controlplane.request",
                    T0 - i,
                    operation="register_task",
                    status=200,
                    duration_ms=ms,
                ),
                T0,
            )
        aggregator.feed_text(line("identity.registered", T0, identity="main"), T0)
        aggregator.feed_text(
            line(
                "controlplane.request", T0, level="warning", operation="register_task", status=503
            ),
            T0,
        )
        registrations = aggregator.snapshot(T0)["total"]["registrations"]
        assert registrations["identities"] == 1
        assert registrations["tasks"] == {"background": 1, "thread": 3}
        assert registrations["task_latency_ms"] == {"p50": 20.0, "p95": 400.0, "max": 400.0}
        operation = aggregator.snapshot(T0)["total"]["controlplane"]["by_operation"][
            "register_task"
        ]
        assert (operation["count"], operation["errors"]) == (5, 1)

    def test_rejections_and_denials(self, aggregator: Aggregator) -> None:
        """Rejections, throttled reports and denied callers are counted."""
        for event in ("task.rejected", "task.invalidated", "task.rejection_throttled"):
            aggregator.feed_text(line(event, T0, level="warning"), T0)
        aggregator.feed_text(
            line("caller.denied", T0, level="warning", caller="w", rule="rate_limit"), T0
        )
        total = aggregator.snapshot(T0)["total"]
        assert total["rejections"] == {"rejected": 1, "invalidated": 1, "throttled": 1}
        assert total["callers_denied"] == {"w/rate_limit": 1}


@pytest.fixture(name="log_path")
def fixture_log_path(tmp_path: Path) -> Path:
    path = tmp_path / "broker.log"
    path.write_text("")
    return path


class TestFileFollower:
    def test_follows_appends(self, log_path: Path) -> None:
        """Appended lines arrive at the next poll; an unterminated one waits for its newline."""
        follower = FileFollower(log_path, "f")
        with log_path.open("a") as out:
            out.write("one\ntw")
            out.flush()
            assert [c.text for c in follower.poll()] == ["one"]
            out.write("o\n")
        assert [c.text for c in follower.poll()] == ["two"]
        follower.close()

    def test_survives_rotation(self, log_path: Path) -> None:
        """A rotated file is read to its end (rest marked partial), then the new file from its start."""
        follower = FileFollower(log_path, "f")
        log_path.write_text("a\n")
        assert [c.text for c in follower.poll()] == ["a"]
        with log_path.open("a") as out:
            out.write("b\npart")
        log_path.rename(log_path.with_suffix(".1"))
        log_path.write_text("c\n")
        chunks = follower.poll() + follower.poll()
        expected = [("b", True), ("part", False), ("c", True)]
        assert [(c.text, c.complete) for c in chunks] == expected
        follower.close()

    def test_survives_truncation(self, log_path: Path) -> None:
        """A file truncated in place (copytruncate) is read again from its start."""
        follower = FileFollower(log_path, "f")
        log_path.write_text("first line\n")
        assert [c.text for c in follower.poll()] == ["first line"]
        log_path.write_text("x\n")
        assert [c.text for c in follower.poll()] == ["x"]
        follower.close()

    def test_waits_for_the_file(self, tmp_path: Path) -> None:
        """A missing file is not an error: it is read once it appears."""
        path = tmp_path / "later.log"
        follower = FileFollower(path, "f")
        assert follower.poll() == []
        assert follower.problem is not None
        path.write_text("hello\n")
        assert [c.text for c in follower.poll()] == ["hello"]
        assert follower.problem is None
        follower.close()

    def test_endless_line_is_bounded(self, log_path: Path) -> None:
        """A line that never ends is handed on once it is too long instead of filling memory."""
        follower = FileFollower(log_path, "f")
        log_path.write_bytes(b"x" * (MAX_LINE_CHARS + 10))
        chunks = follower.poll() + follower.poll()
        assert [c.complete for c in chunks] == [False]
        follower.close()

    def test_pipe_end_flushes_the_rest(self) -> None:
        """At end of input a pipe's unterminated rest comes as a partial chunk."""
        read_fd, write_fd = os.pipe()
        os.write(write_fd, b"a\nb")
        os.close(write_fd)
        pipe = PipeReader(read_fd, "-")
        try:
            assert [(c.text, c.complete) for c in pipe.drain()] == [("a", True), ("b", False)]
        finally:
            os.close(read_fd)


class TestOnce:
    def test_json_from_files(self, log_path: Path, tmp_path: Path) -> None:
        """``--once --format json`` aggregates every file, each named after its file."""
        other = tmp_path / "other.log"
        log_path.write_text(started(T0 - 5) + "\n" + rpcs(T0, 1, UNAVAILABLE=1) + "\n")
        other.write_text(
            started(T0 - 5) + "\n" + rpcs(T0, 1) + "\ngarbage\n" + '{"event": "rpc.comp'
        )
        out = io.StringIO()
        code = run_dashboard([str(log_path), str(other)], once=True, output="json", out=out)
        snapshot = json.loads(out.getvalue())
        assert code == 0
        assert snapshot["total"]["rpcs"]["by_code"] == {"OK": 2, "UNAVAILABLE": 1}
        assert sorted(snapshot["replicas"]) == ["broker.log", "other.log"]
        assert snapshot["lines"]["skipped_by_reason"] == {"not_json": 1, "partial": 1}

    def test_table_once(self, log_path: Path) -> None:
        """``--once`` without json draws the screen once."""
        log_path.write_text(rpcs(T0, 1) + "\n")
        out = io.StringIO()
        assert run_dashboard([str(log_path)], once=True, out=out) == 0
        assert "Traffic" in out.getvalue()
        assert "Latest warnings" in out.getvalue()

    def test_bad_window(self, log_path: Path) -> None:
        """A window or refresh that is not positive is a usage error."""
        assert run_dashboard([str(log_path)], once=True, window=0, out=io.StringIO()) == 2

    def test_missing_file_once(self, tmp_path: Path) -> None:
        """``--once`` on a missing file fails with status 2."""
        assert run_dashboard([str(tmp_path / "nope")], once=True, out=io.StringIO()) == 2

    def test_stdin(self) -> None:
        """Without files the dashboard reads stdin to its end."""
        read_fd, write_fd = os.pipe()
        os.write(write_fd, (started(T0 - 5) + "\n" + rpcs(T0, 1) + "\n").encode())
        os.close(write_fd)
        out = io.StringIO()
        try:
            assert run_dashboard([], once=True, output="json", stdin_fd=read_fd, out=out) == 0
        finally:
            os.close(read_fd)
        assert json.loads(out.getvalue())["total"]["rpcs"]["count"] == 1


class TestAccounts:
    def test_login_state_is_shown(self) -> None:
        """Refreshes, failures and a reauth_required login appear in the accounts view."""
        from broker.dashboard.aggregate import Aggregator

        aggregator = Aggregator()
        lines = [
            '{"event": "account.imported", "identity": "main", "account_id": "acct", '
            '"state": "active", "level": "info", "timestamp": "2026-01-01T00:00:00+00:00"}',
            '{"event": "account.refreshed", "identity": "main", "account_id": "acct", '
            '"access_expires_at": "2026-01-01T01:00:00+00:00", "duration_ms": 3.0, '
            '"level": "info", "timestamp": "2026-01-01T00:00:01+00:00"}',
            '{"event": "account.refresh_failed", "identity": "main", "reason": "outcome_unknown",'
            ' "detail": "x", "level": "warning", "timestamp": "2026-01-01T00:00:02+00:00"}',
            '{"event": "account.reauth_required", "identity": "main", "account_id": "acct", '
            '"detail": "x", "action": "y", "level": "error", '
            '"timestamp": "2026-01-01T00:00:03+00:00"}',
        ]
        for line in lines:
            aggregator.feed_text(line, received_at=1_767_225_604.0)
        account = aggregator.snapshot(1_767_225_604.0)["accounts"]["main"]
        assert account["state"] == "reauth_required"
        assert (account["refreshes"], account["failures"]) == (1, 1)
        assert account["last_failure"] == "outcome_unknown"
