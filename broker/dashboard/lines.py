"""Turning raw log text into (replica, record) pairs, tolerating anything a log pipe can carry.

Accepted shapes of a line:

* a bare JSON object, as ``credential-broker serve`` writes it;
* ``[pod/<pod>/<container>] {…}``, as ``kubectl logs -l … -f --prefix`` merges several replicas
  (the replica is the pod name);
* ``<label> | {…}`` or ``<label> {…}`` (docker compose, stern and similar): the text before the
  first ``{`` names the replica.

Anything else (garbage, a truncated object, a JSON value that is not an object, an object without
an ``event`` string) is reported as skipped with a reason, never raised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

MAX_LINE_CHARS: Final = 1_000_000
"""Longer lines are skipped unparsed (a broker line is a few hundred characters)."""

_KUBECTL_PREFIX: Final = re.compile(r"^\[(?:pod/)?(?P<pod>[^/\]\s]+)(?:/[^\]\s]*)?\]\s?")


@dataclass(frozen=True, slots=True)
class Parsed:
    """One usable line: who wrote it and the decoded object."""

    replica: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Skipped:
    """One unusable line and why (``not_json``, ``not_an_object``, ``no_event``, ``too_long``)."""

    reason: str


def _split_prefix(line: str, default_replica: str) -> tuple[str, str]:
    match = _KUBECTL_PREFIX.match(line)
    if match is not None:
        return match.group("pod"), line[match.end() :]
    if line.startswith("{"):
        return default_replica, line
    brace = line.find("{")
    if brace <= 0:
        return default_replica, line
    label = line[:brace].strip().rstrip("|").strip()
    return (label or default_replica), line[brace:]


WORKER_SEPARATOR: Final = "/worker-"
"""A supervised worker's lines belong to replica ``<pod>/worker-<index>``."""


def parse_line(line: str, default_replica: str = "-") -> Parsed | Skipped | None:
    """Decode one line; ``None`` for a blank one.

    Args:
        line: the text, with or without its newline.
        default_replica: the replica to attribute an unprefixed line to (e.g. the file's name).
    """
    text = line.strip()
    if not text:
        return None
    if len(text) > MAX_LINE_CHARS:
        return Skipped("too_long")
    replica, body = _split_prefix(text, default_replica)
    try:
        record = json.loads(body)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for odd surrogates
        return Skipped("not_json")
    except RecursionError:
        return Skipped("not_json")
    if not isinstance(record, dict):
        return Skipped("not_an_object")
    if not isinstance(record.get("event"), str) or not record["event"]:
        return Skipped("no_event")
    worker = record.get("worker")
    if isinstance(worker, int) and not isinstance(worker, bool):
        # A supervised worker: its own counters and state, beside its pod's other workers.
        replica = f"{replica}{WORKER_SEPARATOR}{worker}"
    return Parsed(replica, record)
