"""The Grafana dashboard and the alert rules in deploy/ query only what the broker exports.

PromQL panels and alert rules may name only series the :class:`~broker.metrics.BrokerMetrics`
registry exposes (and only their labels, or the target labels Prometheus adds); LogQL panels may name
only events of the catalogue and the fields those events carry (or Loki's stream labels).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from broker.catalog import BASE_FIELDS, CATALOGUE, CONTEXT_FIELDS
from broker.events import Event
from broker.metrics import METRICS, BrokerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "credential-broker.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"

TARGET_LABELS = frozenset({"instance", "job", "pod", "namespace"})
"""Labels Prometheus attaches to every scraped series (kubernetes_sd with the usual relabelling)."""
STREAM_LABELS = frozenset({"app", "pod", "namespace", "container"})
"""Loki stream labels a Kubernetes log shipper attaches (not JSON fields)."""
PROMQL_WORDS = frozenset(
    {
        *("sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring"),
        *("group_left", "group_right", "and", "or", "unless", "bool"),
        *("rate", "irate", "increase", "histogram_quantile", "vector", "clamp_min", "absent"),
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][\w:]*")
_SELECTOR = re.compile(r"(?<!\{)\{([^{}]*)\}(?!\})")
"""The stream selector: the first ``{...}`` that is not a ``{{template}}``."""
_EVENT = re.compile(r'\bevent\s*(=~|=)\s*"([^"]*)"')
_FILTER = re.compile(r"\|\s*([a-zA-Z_]\w*)\s*(?:=~|!~|!=|==|>=|<=|=|>|<)")
_UNWRAP = re.compile(r"\|\s*unwrap\s+(\w+)")
_TEMPLATE = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def _targets(kind: str) -> list[tuple[str, str]]:
    """(panel title, expression) of every target whose datasource is ``kind``."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel.get("datasource") or {}
            if source.get("type") == kind:
                found.append((panel["title"], target["expr"]))
    return found


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    labels = set(_MATCHER.findall(expr))
    for group in _GROUPING.findall(expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    bare = _GROUPING.sub(" ", _MATCHER.sub(" ", _RANGE.sub(" ", _STRING.sub(" ", expr))))
    names = {word for word in _IDENTIFIER.findall(bare) if word not in PROMQL_WORDS}
    return names, labels


def logql_names(expr: str) -> tuple[set[str], set[str], set[str]]:
    """The stream labels, the events and the fields (incl. grouping labels) a LogQL query uses."""
    selector = _SELECTOR.search(expr)
    assert selector is not None, f"no stream selector: {expr}"
    streams = set(_MATCHER.findall(selector.group(1)))
    events: set[str] = set()
    for operator, text in _EVENT.findall(expr):
        events |= set(text.split("|")) if operator == "=~" else {text}
    fields = set(_FILTER.findall(expr)) | set(_UNWRAP.findall(expr))
    fields |= set(_TEMPLATE.findall(expr))
    for group in _GROUPING.findall(expr):
        fields |= {label.strip() for label in group.split(",") if label.strip()}
    return streams, events, fields - {"json", "line_format", "unwrap"}


PROMQL = _targets("prometheus")
LOGQL = _targets("loki")


class TestDashboard:
    def test_has_both_kinds_of_panels(self) -> None:
        """The dashboard queries both the metrics and the log events."""
        assert len(PROMQL) >= 10
        assert len(LOGQL) >= 5

    @pytest.mark.parametrize(("title", "expr"), PROMQL, ids=[t for t, _ in PROMQL])
    def test_promql_names_exported_series(self, title: str, expr: str) -> None:
        """Each PromQL query names only series and labels the broker's registry exports."""
        exported = BrokerMetrics().series_names()
        declared = {label for spec in METRICS for label in spec.labels} | {"le"} | TARGET_LABELS
        names, labels = promql_names(expr)
        assert names, f"{title}: no metric found in {expr}"
        assert names <= exported, f"{title}: not exported: {sorted(names - exported)}"
        assert labels <= declared, f"{title}: unknown labels {sorted(labels - declared)}"

    @pytest.mark.parametrize(("title", "expr"), LOGQL, ids=[t for t, _ in LOGQL])
    def test_logql_names_catalogued_events_and_fields(self, title: str, expr: str) -> None:
        """Each LogQL query parses JSON and names only catalogued events and their fields."""
        assert "| json" in expr, f"{title}: the JSON fields need '| json'"
        streams, events, fields = logql_names(expr)
        assert streams <= STREAM_LABELS, f"{title}: unknown stream labels {streams}"
        catalogued = {str(event) for event in Event}
        assert events <= catalogued, f"{title}: not catalogued: {sorted(events - catalogued)}"
        specs = [CATALOGUE[Event(e)] for e in events] or list(CATALOGUE.values())
        known = {f.name for f in (*BASE_FIELDS, *CONTEXT_FIELDS)} | STREAM_LABELS
        known |= {f.name for spec in specs for f in spec.fields}
        assert fields <= known, f"{title}: fields not in the catalogue: {sorted(fields - known)}"


def _rules() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of yamllint) is not installed")
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


class TestAlertRules:
    def test_rules_name_exported_series(self) -> None:
        """Each alert expression names only series and labels the broker's registry exports."""
        exported = BrokerMetrics().series_names()
        declared = {label for spec in METRICS for label in spec.labels} | {"le"} | TARGET_LABELS
        rules = _rules()
        assert len(rules) >= 5
        for rule in rules:
            names, labels = promql_names(rule["expr"])
            assert names, rule["alert"]
            assert names <= exported, f"{rule['alert']}: not exported {sorted(names - exported)}"
            assert labels <= declared, f"{rule['alert']}: unknown labels {labels - declared}"

    def test_rules_are_actionable(self) -> None:
        """Each rule has a unique name, a severity, a summary and a description."""
        rules = _rules()
        assert len({rule["alert"] for rule in rules}) == len(rules)
        for rule in rules:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


class TestParsers:
    def test_promql(self) -> None:
        """The PromQL scan finds metrics and labels and skips functions, strings and ranges."""
        names, labels = promql_names(
            'histogram_quantile(0.99, sum by (le, method) (rate(x_bucket{code="OK"}[5m])))'
        )
        assert (names, labels) == ({"x_bucket"}, {"le", "method", "code"})

    def test_logql(self) -> None:
        """The LogQL scan finds the stream labels, events, filtered, unwrapped and shown fields."""
        streams, events, fields = logql_names(
            'sum by (pod) (count_over_time({app="b"} | json | event=~"a.b|c.d" | level="info" '
            '| unwrap duration_ms | line_format "{{.task_id}}" [1m]))'
        )
        assert streams == {"app"}
        assert events == {"a.b", "c.d"}
        assert fields == {"pod", "level", "event", "duration_ms", "task_id"}

    def test_an_unknown_metric_is_caught(self) -> None:
        """A misspelt metric is reported as not exported."""
        names, _ = promql_names("sum(rate(broker_rpc_total[5m]))")
        assert not names <= BrokerMetrics().series_names()
