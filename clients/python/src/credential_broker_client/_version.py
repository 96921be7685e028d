"""The package version (kept apart so that every module can import it without a cycle)."""

from __future__ import annotations

__version__ = "0.1.0"
