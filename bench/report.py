"""The two faces of one result: a table for people and JSON for machines."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bench.model import BenchConfig, Figure, ServerFigure

_STORES = {"redis": "Redis store", "embedded": "embedded store"}


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
    figures: dict[str, Figure] = result["figures"]
    found: list[str] = []
    for key, figure in figures.items():
        warm = figure.warm_path
        if key == "redis" and not figure.meets_target:
            found.append(
                f"broker/echo on the {_STORES[key]} is {figure.ratio:.2f}, below the "
                f"{config.target_ratio:.2f} target"
            )
        if warm.redis_commands:
            found.append(
                f"the warm path made {warm.redis_commands} Redis commands "
                f"({_pairs(warm.redis_commands_by_name)}); expected 0"
            )
        if warm.assertion_minted:
            found.append(f"the warm path signed {warm.assertion_minted} assertions; expected 0")
        if warm.runs_outlasting_serve_window:
            found.append(
                f"{warm.runs_outlasting_serve_window} {key} broker run(s) outlasted the cached "
                "assertion's serve window: a refresh during them is the broker's normal behaviour"
            )
    return found


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def _row(store: str, server: str, figure: ServerFigure) -> str:
    runs = " / ".join(f"{r.load.req_per_s:,.0f}" for r in figure.runs)
    cpu = "-" if figure.cpu_us_per_request is None else f"{figure.cpu_us_per_request:,.0f}"
    return (
        f"{store:<10}{server:<16}{figure.req_per_s:>7,.0f}  {runs:<23}"
        f"{figure.p50_ms:>7.2f}{figure.p99_ms:>8.2f}{figure.mean_ms:>8.2f}{cpu:>11}"
    )


def _ratio_row(figure: Figure, config: BenchConfig) -> str:
    line = f"{'':<10}{'broker/echo':<16}{figure.ratio:>7.2f}"
    if figure.store == "redis":
        verdict = "met" if figure.meets_target else "BELOW TARGET"
        line += f"  target >= {config.target_ratio:.2f}: {verdict}"
    if figure.cpu_ratio is not None:
        line += f"  (CPU per request, echo/broker: {figure.cpu_ratio:.2f})"
    return line


def _warm_lines(key: str, figure: Figure, excluded_names: dict[str, str]) -> list[str]:
    warm = figure.warm_path
    lines = [f"warm path, broker on the {_STORES[key]} ({warm.requests:,} requests):"]
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
    figures: dict[str, Figure] = result["figures"]
    lines = [
        "credential-broker bench: GetAuthorization (default identity, background task) over h2c",
        f"h2load {env['h2load']}, {env['cpus']} CPUs; {config.connections} connections x "
        f"{config.streams} streams; both servers log at {config.log_level}",
        f"runs of {config.requests:,} requests ({config.embedded_requests:,} on the embedded "
        f"store); request {env['request_bytes']} B framed, response {env['response_bytes']} B",
        "figures are medians of alternating echo/broker runs; latency is exact (h2load's log)",
        "",
        f"{'store':<10}{'server':<16}{'req/s':>7}  {'runs (req/s)':<23}"
        f"{'p50 ms':>7}{'p99 ms':>8}{'mean ms':>8}{'CPU us/req':>11}",
    ]
    for figure in figures.values():
        lines += [
            _row(figure.store, "echo (ceiling)", figure.echo),
            _row(figure.store, "broker", figure.broker),
            _ratio_row(figure, config),
        ]
    for key, figure in figures.items():
        lines += ["", *_warm_lines(key, figure, result["excluded_redis_commands"])]
    if warnings:
        lines += ["", *(f"WARNING: {w}" for w in warnings)]
    return "\n".join(lines)
