"""The log event catalogue as data, its docs page, and a checker for log lines (DESIGN §8).

:data:`CATALOGUE` maps every :class:`~broker.events.Event` to its :class:`~broker.events.EventSpec`.
:func:`problems` says what is wrong with one decoded log line against it; :func:`render_markdown` is
the text of ``docs/events.md``; ``python -m broker.catalog --check`` (or ``--write``) compares (or
rewrites) that page.
"""

from __future__ import annotations

from broker.catalog._entries import CATALOGUE
from broker.catalog._fields import BASE_FIELDS, CONTEXT_FIELDS, PROCESS_FIELDS
from broker.catalog._markdown import DOCS_PATH, render_markdown
from broker.catalog._validate import problems, type_matches

__all__ = [
    "BASE_FIELDS",
    "CATALOGUE",
    "CONTEXT_FIELDS",
    "DOCS_PATH",
    "PROCESS_FIELDS",
    "problems",
    "render_markdown",
    "type_matches",
]
