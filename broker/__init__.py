"""credential-broker: one agent identity for a whole fleet of workers.

Importing this package starts nothing; ``broker.app`` is the composition root.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
