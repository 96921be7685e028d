"""The text of ``docs/events.md``, generated from the catalogue (never edited by hand)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

from broker.catalog._entries import CATALOGUE
from broker.catalog._fields import BASE_FIELDS, CONTEXT_FIELDS, PROCESS_FIELDS
from broker.events import SECRETS_IN_FIELDS, EventSpec, FieldSpec

DOCS_PATH: Final = Path(__file__).resolve().parents[2] / "docs" / "events.md"
"""Where the page lives in a source checkout."""

_HEADER: Final = """\
<!-- Generated from broker/catalog/_entries.py by `python -m broker.catalog --write`; do not edit.
     A test fails when this page and the catalogue differ. -->

# Log events

The broker writes one JSON object per line to stdout. Each line's `event` names one class of fact
and never changes for it: dashboards and alerts query by it. This page lists every event, the
level it is written at, and its fields with their JSON types. Lines may carry no field that is not
listed here (a test drives a real broker through every scenario and checks each line).

**Identifiers** (marked below) name an identity, runtime, task, thread, request or peer: join on
them, but expect unbounded cardinality (keep them out of metric labels).
"""

_NO_SECRETS: Final = """\
**No field carries a secret**: private keys, access tokens, assertions, biscuits and the KEK never
appear in any field. Secrets travel inside the broker as a masked type, and a redaction processor
masks anything secret-looking a second time.
"""


def _type_text(spec: FieldSpec) -> str:
    text = str(spec.type)
    if spec.nullable:
        text += " or null"
    return text


def _field_rows(fields: Iterable[FieldSpec]) -> list[str]:
    rows = [
        "| field | type | always present | identifier | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in fields:
        present = "no" if spec.optional else "yes"
        identifier = "yes" if spec.identifier else ""
        rows.append(
            f"| `{spec.name}` | {_type_text(spec)} | {present} | {identifier} | {spec.description} |"
        )
    return rows


def _event_section(spec: EventSpec) -> list[str]:
    out = [f"### `{spec.event}`", "", f"Level **{spec.level}**. {spec.description}", ""]
    for level, when in spec.other_levels.items():
        out += [f"Also written at **{level}**: {when}.", ""]
    if spec.fields:
        out += [*_field_rows(spec.fields), ""]
    else:
        out += ["No fields besides those every line carries.", ""]
    return out


def render_markdown() -> str:
    """The complete text of ``docs/events.md``."""
    out = [_HEADER]
    if not SECRETS_IN_FIELDS:
        out.append(_NO_SECRETS)
    out += ["## Fields of every line", "", *_field_rows(BASE_FIELDS), ""]
    out += [
        "## Fields of lines written while serving an RPC",
        "",
        "The gRPC interceptor binds these, so every event written during an RPC carries them.",
        "",
        *_field_rows(CONTEXT_FIELDS),
        "",
        "## Fields of a supervised worker's lines",
        "",
        "With `serve --workers N`, every line a worker writes names the worker.",
        "",
        *_field_rows(PROCESS_FIELDS),
        "",
        "## Summary",
        "",
        "| event | level | what happened |",
        "| --- | --- | --- |",
    ]
    out += [f"| `{s.event}` | {s.level} | {s.description} |" for s in CATALOGUE.values()]
    out.append("")
    area = ""
    for spec in CATALOGUE.values():
        prefix = str(spec.event).split(".", 1)[0]
        if prefix != area:
            area = prefix
            out += [f"## `{area}.*`", ""]
        out += _event_section(spec)
    return "\n".join(out).rstrip("\n") + "\n"
