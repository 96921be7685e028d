"""Drawing a snapshot (from :mod:`.aggregate`) with rich: one screen, redrawn in place.

Only this module imports rich, and only when a screen is drawn: ``--format json`` needs nothing
beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table


def _pct(value: object) -> str:
    return f"{value * 100:.0f}%" if isinstance(value, int | float) else "-"


def _num(value: object, digits: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _redis(state: str) -> str:
    return {
        "up": "[green]up[/]",
        "down": "[bold red]DOWN[/]",
        "embedded": "[yellow]embedded[/]",
    }.get(state, "[dim]-[/]")


def _best(states: Mapping[str, list[str]]) -> str:
    """The state to show for all replicas together when none is down."""
    return next((s for s in ("up", "embedded") if states.get(s)), "unknown")


def _circuits(circuits: Mapping[str, str]) -> str:
    opened = sorted(name for name, state in circuits.items() if state == "open")
    return f"[bold red]OPEN {','.join(opened)}[/]" if opened else "[green]closed[/]"


def _traffic_row(name: str, view: Mapping[str, Any], *, total: bool = False) -> list[str]:
    rates = view.get("rates_per_s", {})
    cache = view.get("cache", {})
    seen = "" if total else f"{_num(view.get('last_seen_s_ago'))}s"
    return [
        f"[bold]{name}[/]" if total else name,
        "" if total else str(view.get("state", "?")),
        seen,
        _num(rates.get("rpcs"), 2),
        _num(rates.get("AgentAssertion"), 2),
        _num(rates.get("Bearer"), 2),
        _pct(cache.get("l1_hit_ratio")),
        _pct(cache.get("l2_hit_ratio")),
    ]


def _health_row(name: str, view: Mapping[str, Any], *, total: bool = False) -> list[str]:
    registrations = view.get("registrations", {})
    rejections = view.get("rejections", {})
    tasks = sum(registrations.get("tasks", {}).values())
    denied = sum(view.get("callers_denied", {}).values())
    if total:
        states, opened = view.get("redis", {}), view.get("circuits_open", [])
        down = states.get("down", [])
        redis = f"[bold red]DOWN {','.join(down)}[/]" if down else _redis(_best(states))
        circuit = f"[bold red]OPEN {','.join(opened)}[/]" if opened else "[green]closed[/]"
    else:
        redis, circuit = _redis(view.get("redis", "?")), _circuits(view.get("circuits", {}))
    return [
        f"[bold]{name}[/]" if total else name,
        f"{registrations.get('identities', 0)}/{tasks}",
        _num(registrations.get("task_latency_ms", {}).get("p95")),
        f"{rejections.get('rejected', 0)}/{rejections.get('throttled', 0)}",
        redis,
        circuit,
        str(denied) if not denied else f"[yellow]{denied}[/]",
    ]


def _table(title: str, *columns: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for index, column in enumerate(columns):
        last = index == len(columns) - 1
        table.add_column(column, no_wrap=not last, overflow="fold" if last else "ellipsis")
    return table


def _counts_table(title: str, counts: Mapping[str, int], key: str) -> Table:
    table = _table(title, key, "count")
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{count:,}")
    if not counts:
        table.add_row("[dim]none[/]", "")
    return table


def render(snapshot: Mapping[str, Any]) -> RenderableType:
    """The whole screen for one snapshot."""
    from rich.columns import Columns
    from rich.console import Group
    from rich.text import Text

    lines = snapshot["lines"]
    skipped = ", ".join(f"{k} {v}" for k, v in lines["skipped_by_reason"].items())
    unknown = sum(lines["unknown_events"].values())
    header = Text.from_markup(
        f"[bold]credential-broker dashboard[/]  window {snapshot['window_s']:g} s · "
        f"{len(snapshot['replicas'])} replica(s) · {lines['read']:,} lines read · "
        f"[{'yellow' if lines['skipped'] else 'green'}]{lines['skipped']:,} skipped[/]"
        + (f" ({skipped})" if skipped else "")
        + (f" · {unknown:,} with unknown events" if unknown else "")
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
        errors = f"[red]{op['errors']}[/]" if op["errors"] else "0"
        operations.add_row(name, f"{op['count']:,}", errors, _num(op["p50"]), _num(op["p95"]))
    fallbacks = total["fallbacks"] or total["fallback_events"]
    warnings = _table("Latest warnings", "time", "replica", "event", "detail")
    for warning in reversed(snapshot["warnings"]):
        style = "red" if warning["level"] in ("error", "critical") else "yellow"
        warnings.add_row(
            warning["timestamp"][11:19],
            warning["replica"],
            f"[{style}]{warning['event']}[/]",
            warning["detail"],
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
                name,
                f"[{style}]{state}[/]",
                str(account["refreshes"]),
                str(account["failures"]),
                str(account["last_failure"] or ""),
                str(account.get("access_expires_at", ""))[:19],
            )
        parts.append(accounts)
    parts.append(warnings)
    return Group(*parts)
