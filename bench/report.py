"""The two faces of one result: a table for people and JSON for machines."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bench.model import BenchConfig, BrokerFigure, ServerFigure

_CEILINGS = {
    "bare": "bare grpc.aio + uvloop",
    "bare_caller": "bare, with caller header",
    "stack_echo": "broker's stack, echo",
    "stack_echo_caller": "stack echo, with caller header",
}
_NAME_WIDTH = 38


def jsonable(value: Any) -> Any:
    """Dataclasses to dicts, floats rounded to what the machine's noise allows."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 6 if abs(value) < 1 else 3)
    return value


def to_json(result: dict[str, Any], warnings: list[str]) -> str:
    """The whole result as indented JSON (with the warnings the table would print)."""
    return json.dumps({**jsonable(result), "warnings": warnings}, indent=2)


def warnings_for(result: dict[str, Any]) -> list[str]:
    """Findings worth a warning that do not make the benchmark fail."""
    config: BenchConfig = result["config"]
    brokers: dict[str, BrokerFigure] = result["brokers"]
    found: list[str] = []
    for figure in brokers.values():
        warm, ratio = figure.warm_path, figure.vs_bare
        if not figure.meets_target:
            found.append(
                f"{figure.label}: broker/bare {ratio.req_per_s:.2f} (target >= "
                f"{config.target_ratio:.2f}), p99 {ratio.p99:.2f}x the bare stack's "
                f"(at most {config.p99_tolerance:.2f}x)"
            )
        if warm.redis_commands:
            found.append(
                f"{figure.label}: the warm path made {warm.redis_commands} Redis commands "
                f"({_pairs(warm.redis_commands_by_name)}); expected 0"
            )
        if warm.assertion_minted:
            found.append(
                f"{figure.label}: the warm path signed {warm.assertion_minted} assertions; "
                "expected 0"
            )
        if warm.runs_outlasting_serve_window:
            found.append(
                f"{figure.label}: {warm.runs_outlasting_serve_window} run(s) outlasted the cached "
                "assertion's serve window: a refresh during them is the broker's normal behaviour"
            )
    return found


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def _runs_width(rounds: int) -> int:
    return max(25, 9 * rounds)


def _row(name: str, figure: ServerFigure) -> str:
    runs = " / ".join(f"{r.load.req_per_s:,.0f}" for r in figure.runs)
    cpu = "-" if figure.cpu_us_per_request is None else f"{figure.cpu_us_per_request:,.0f}"
    return (
        f"{name:<{_NAME_WIDTH}}{figure.req_per_s:>7,.0f}  {runs:<{_runs_width(len(figure.runs))}}"
        f"{figure.p50_ms:>7.2f}{figure.p99_ms:>8.2f}{figure.mean_ms:>8.2f}{cpu:>11}"
    )


def _ratio_row(figure: BrokerFigure, config: BenchConfig) -> str:
    bare, echo = figure.vs_bare, figure.vs_stack_echo
    cpu = "-" if bare.cpu is None else f"{bare.cpu:.2f}"
    verdict = "met" if figure.meets_target else "BELOW TARGET"
    return (
        f"{figure.label:<{_NAME_WIDTH}}{bare.req_per_s:>11.2f}{echo.req_per_s:>13.2f}"
        f"{bare.p99:>12.2f}{echo.p99:>12.2f}{cpu:>10}   {verdict}"
    )


def _warm_lines(figure: BrokerFigure, excluded_names: dict[str, str]) -> list[str]:
    warm = figure.warm_path
    lines = [f"warm path, {figure.label} ({warm.requests:,} requests):"]
    if warm.redis_commands is not None:
        excluded = [
            f"{name} {calls:,} ({excluded_names[name]})"
            for name, calls in warm.redis_excluded.items()
        ] or ["none"]
        lines += [
            f"  Redis commands (INFO commandstats delta) {warm.redis_commands:>8,}"
            f"   {_pairs(warm.redis_commands_by_name)}",
            f"    not counted: {excluded[0]}",
            *(f"                 {entry}" for entry in excluded[1:]),
        ]
    lines += [
        f"  signatures (assertion_minted delta)      {warm.assertion_minted:>8,}"
        f"   {warm.signatures_per_request:.6f} per request",
        f"  authorizer counters (delta)              {_pairs(warm.authorizer)}",
    ]
    if warm.seconds_waited_for_refresh:
        lines.append(
            f"  waited {warm.seconds_waited_for_refresh:.1f} s between runs for a scheduled "
            "refresh, so that no run straddles one"
        )
    return lines


def to_table(result: dict[str, Any], warnings: list[str]) -> str:
    """The human-readable report."""
    config: BenchConfig = result["config"]
    env = result["environment"]
    ceilings: dict[str, ServerFigure] = result["ceilings"]
    brokers: dict[str, BrokerFigure] = result["brokers"]
    lines = [
        "credential-broker bench: warm GetAuthorization (default identity, background task) "
        "over h2c",
        f"h2load {env['h2load']}, {env['cpus']} CPUs; {config.connections} connections x "
        f"{config.streams} streams; servers log at {config.log_level}, event loop "
        f"{env.get('event_loop', '?')}",
        f"{config.rounds} rounds of {config.requests:,} requests per server (each server once "
        f"per round); request {env['request_bytes']} B framed, response {env['response_bytes']} B",
        "figures are medians of each server's runs; a ratio is the median of its per-round ratios; "
        "latency is exact (h2load's log)",
        "the token caller is compared with the ceilings serving the same requests (caller header)",
        "",
        f"{'server':<{_NAME_WIDTH}}{'req/s':>7}  {'runs (req/s)':<{_runs_width(config.rounds)}}"
        f"{'p50 ms':>7}{'p99 ms':>8}{'mean ms':>8}{'CPU us/req':>11}",
        *(_row(f"{_CEILINGS[key]} (ceiling)", fig) for key, fig in ceilings.items()),
        *(_row(figure.label, figure.server) for figure in brokers.values()),
        "",
        f"{'ratios':<{_NAME_WIDTH}}{'broker/bare':>11}{'broker/echo':>13}"
        f"{'p99 vs bare':>12}{'p99 vs echo':>12}{'CPU b/b':>10}   "
        f"target: broker/bare >= {config.target_ratio:.2f}, p99 <= "
        f"{config.p99_tolerance:.2f}x bare",
        *(_ratio_row(figure, config) for figure in brokers.values()),
        "(CPU b/b: bare/broker server CPU per request; broker/echo: against the broker's stack)",
    ]
    for figure in brokers.values():
        lines += ["", *_warm_lines(figure, result["excluded_redis_commands"])]
    if warnings:
        lines += ["", *(f"WARNING: {w}" for w in warnings)]
    return "\n".join(lines)
