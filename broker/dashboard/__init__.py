"""A live terminal dashboard over the broker's JSON log stream (``credential-broker dashboard``).

Layers: :mod:`.lines` decodes one raw line (prefixes, garbage); :mod:`.aggregate` and :mod:`.tally`
turn lines into per-replica and total aggregates over a sliding window (pure: no clock, no I/O);
:mod:`.sources` follows files like ``tail -F`` and reads stdin; :mod:`.render` draws with rich;
:mod:`.runner` wires them together.
"""

from __future__ import annotations

from broker.dashboard.aggregate import DEFAULT_WINDOW_S, Aggregator
from broker.dashboard.lines import Parsed, Skipped, parse_line
from broker.dashboard.runner import run_dashboard

__all__ = ["DEFAULT_WINDOW_S", "Aggregator", "Parsed", "Skipped", "parse_line", "run_dashboard"]
