"""Checking one decoded log line against the catalogue."""

from __future__ import annotations

from collections.abc import Mapping

from broker.catalog._entries import CATALOGUE
from broker.catalog._fields import BASE_FIELDS, CONTEXT_FIELDS, PROCESS_FIELDS
from broker.events import Event, FieldSpec, FieldType

_FRAME = {spec.name: spec for spec in (*BASE_FIELDS, *CONTEXT_FIELDS, *PROCESS_FIELDS)}


def _counts(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in value.items()
    )


def type_matches(field_type: FieldType, value: object) -> bool:
    """Whether a decoded JSON ``value`` (not ``null``) has ``field_type``."""
    if isinstance(value, bool):
        return field_type is FieldType.BOOLEAN
    match field_type:
        case FieldType.STRING:
            return isinstance(value, str)
        case FieldType.INTEGER:
            return isinstance(value, int)
        case FieldType.NUMBER:
            return isinstance(value, int | float)
        case FieldType.BOOLEAN:
            return False
        case FieldType.STRINGS:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        case FieldType.COUNTS:
            return _counts(value)
        case FieldType.COUNTS_BY_NAME:
            return isinstance(value, dict) and all(
                isinstance(k, str) and _counts(v) for k, v in value.items()
            )


def _value_problem(spec: FieldSpec, value: object) -> str | None:
    if value is None:
        return None if spec.nullable else f"{spec.name}: null, but the field is not nullable"
    if not type_matches(spec.type, value):
        return f"{spec.name}: expected {spec.type}, got {type(value).__name__} {value!r:.60}"
    return None


def problems(line: Mapping[str, object]) -> list[str]:
    """What is wrong with one decoded log line, against :data:`CATALOGUE` (empty: nothing).

    Args:
        line: a JSON object as the broker wrote it.

    Returns:
        One message per problem: unknown event, level not catalogued for it, undeclared field,
        wrong type, unexpected null, missing required field.
    """
    name = line.get("event")
    if not isinstance(name, str):
        return ["event: missing or not a string"]
    try:
        spec = CATALOGUE[Event(name)]
    except ValueError:
        return [f"event {name!r} is not in the catalogue"]
    found: list[str] = []
    level = line.get("level")
    if level not in spec.levels:
        allowed = ", ".join(sorted(spec.levels))
        found.append(f"{name}: level {level!r} is not catalogued (expected {allowed})")
    for key, value in line.items():
        declared = spec.field_spec(key) or _FRAME.get(key)
        if declared is None:
            found.append(f"{name}: field {key!r} is not declared")
            continue
        problem = _value_problem(declared, value)
        if problem is not None:
            found.append(f"{name}: {problem}")
    for declared in (*BASE_FIELDS, *spec.fields):
        if not declared.optional and declared.name not in line:
            found.append(f"{name}: required field {declared.name!r} is missing")
    return found
