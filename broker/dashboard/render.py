r"""Drawing a snapshot (from :mod:`.aggregate`) with rich: one screen, redrawn in place.

Only this module imports rich, and it is imported only when a screen is drawn: ``--format json``
needs nothing beyond the standard library.

Everything a log line carries (thread ids, replica labels, event names, reasons, caller and identity
names) was written by someone else, and rich reads a ``str`` cell as markup: ``[link=…]`` would
become a terminal hyperlink, ``[conceal]`` would hide text and an unbalanced ``[/x]`` would stop the
dashboard. So every cell is a :class:`rich.text.Text` built from plain text with a style; markup is
never parsed here. Control characters (which JSON carries as ``\u001b`` and rich passes through, so
a field could clear the screen or open a hyperlink with a raw escape sequence) are shown as
``\x1b``-style escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

_CONTROLS: Final = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _text(value: object, style: str = "") -> Text:
    """``value`` shown literally: never parsed as markup, control characters made visible."""
    return Text(str(value).translate(_CONTROLS), style=style)


def _pct(value: object) -> str:
    return f"{value * 100:.0f}%" if isinstance(value, int | float) else "-"


def _num(value: object, digits: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _redis(state: str) -> Text:
    shown = {
        "up": ("up", "green"),
        "down": ("DOWN", "bold red"),
        "embedded": ("embedded", "yellow"),
    }
    return _text(*shown.get(state, ("-", "dim")))


def _best(states: Mapping[str, list[str]]) -> str:
    """The state to show for all replicas together when none is down."""
    return next((s for s in ("up", "embedded") if states.get(s)), "unknown")


def _circuits(opened: list[str]) -> Text:
    return _text(f"OPEN {','.join(opened)}", "bold red") if opened else _text("closed", "green")


def _name(name: str, *, total: bool) -> Text:
    return _text(name, "bold" if total else "")


def _traffic_row(name: str, view: Mapping[str, Any], *, total: bool = False) -> list[Text]:
    rates = view.get("rates_per_s", {})
    cache = view.get("cache", {})
    seen = "" if total else f"{_num(view.get('last_seen_s_ago'))}s"
    return [
        _name(name, total=total),
        _text("" if total else view.get("state", "?")),
        *map(
            _text,
            (
                seen,
                _num(rates.get("rpcs"), 2),
                _num(rates.get("AgentAssertion"), 2),
                _num(rates.get("Bearer"), 2),
                _pct(cache.get("l1_hit_ratio")),
                _pct(cache.get("l2_hit_ratio")),
            ),
        ),
    ]


def _health_row(name: str, view: Mapping[str, Any], *, total: bool = False) -> list[Text]:
    registrations = view.get("registrations", {})
    rejections = view.get("rejections", {})
    tasks = sum(registrations.get("tasks", {}).values())
    denied = sum(view.get("callers_denied", {}).values())
    if total:
        states = view.get("redis", {})
        down = states.get("down", [])
        redis = _text(f"DOWN {','.join(down)}", "bold red") if down else _redis(_best(states))
        circuit = _circuits(list(view.get("circuits_open", [])))
    else:
        circuits = view.get("circuits", {})
        redis = _redis(view.get("redis", "?"))
        circuit = _circuits(sorted(name for name, state in circuits.items() if state == "open"))
    return [
        _name(name, total=total),
        _text(f"{registrations.get('identities', 0)}/{tasks}"),
        _text(_num(registrations.get("task_latency_ms", {}).get("p95"))),
        _text(f"{rejections.get('rejected', 0)}/{rejections.get('throttled', 0)}"),
        redis,
        circuit,
        _text(denied, "yellow" if denied else ""),
    ]


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for index, column in enumerate(columns):
        last = index == len(columns) - 1
        table.add_column(column, no_wrap=not last, overflow="fold" if last else "ellipsis")
    return table


def _counts_table(title: str, counts: Mapping[str, int], key: str) -> Table:
    table = _table(title, key, "count")
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(_text(name), _text(f"{count:,}"))
    if not counts:
        table.add_row(_text("none", "dim"), "")
    return table


def render(snapshot: Mapping[str, Any]) -> RenderableType:
    """The whole screen for one snapshot."""
    lines = snapshot["lines"]
    skipped = ", ".join(f"{k} {v}" for k, v in lines["skipped_by_reason"].items())
    unknown = sum(lines["unknown_events"].values())
    header = Text.assemble(
        ("credential-broker dashboard", "bold"),
        f"  window {snapshot['window_s']:g} s · {len(snapshot['replicas'])} replica(s) · "
        f"{lines['read']:,} lines read · ",
        (f"{lines['skipped']:,} skipped", "yellow" if lines["skipped"] else "green"),
        (f" ({skipped})" if skipped else "")
        + (f" · {unknown:,} with unknown events" if unknown else ""),
    )
    traffic = _table(
        "Traffic (per second over the window)",
        *("replica", "state", "seen", "rpc", "assert", "bearer", "L1 hit", "L2 hit"),
    )
    health = _table(
        "Health (counts over the window)",
        *("replica", "regs id/task", "reg p95 ms", "rej/thr", "redis", "circuit", "denied"),
    )
    total = snapshot["total"]
    for table, row in ((traffic, _traffic_row), (health, _health_row)):
        for name, view in snapshot["replicas"].items():
            table.add_row(*row(name, view))
        table.add_section()
        table.add_row(*row("total", total, total=True))

    operations = _table("Control plane", "operation", "requests", "errors", "p50 ms", "p95 ms")
    for name, op in total["controlplane"]["by_operation"].items():
        operations.add_row(
            _text(name),
            _text(f"{op['count']:,}"),
            _text(op["errors"], "red" if op["errors"] else ""),
            _text(_num(op["p50"])),
            _text(_num(op["p95"])),
        )
    fallbacks = total["fallbacks"] or total["fallback_events"]
    warnings = _table("Latest warnings", "time", "replica", "event", "detail")
    for warning in reversed(snapshot["warnings"]):
        style = "red" if warning["level"] in ("error", "critical") else "yellow"
        warnings.add_row(
            _text(warning["timestamp"][11:19]),
            _text(warning["replica"]),
            _text(warning["event"], style),
            _text(warning["detail"]),
        )
    details = Columns(
        [
            _counts_table("Fallback reasons", fallbacks, "reason"),
            _counts_table("RPCs by code", total["rpcs"]["by_code"], "code"),
            operations,
            _counts_table("Callers denied", total["callers_denied"], "caller/rule"),
        ],
        padding=(0, 2),
    )
    parts: list[RenderableType] = [header, traffic, health, details]
    if snapshot.get("accounts"):
        accounts = _table(
            "Account logins",
            "identity",
            "state",
            "refreshes",
            "failures",
            "last failure",
            "expires",
        )
        for name, account in snapshot["accounts"].items():
            state = account["state"]
            style = "red" if state == "reauth_required" else "green"
            accounts.add_row(
                _text(name),
                _text(state, style),
                _text(account["refreshes"]),
                _text(account["failures"]),
                _text(account["last_failure"] or ""),
                _text(str(account.get("access_expires_at", ""))[:19]),
            )
        parts.append(accounts)
    parts.append(warnings)
    return Group(*parts)
