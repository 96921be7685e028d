"""A faithful emulator of the agent-identity control plane, for offline development and tests.

It serves the G1 and G4 registration endpoints and a protected resource over HTTP and really checks
what it receives: Ed25519 signatures, biscuit binding and single use, timestamps within a skew window,
task ownership and revocation (protocol §12). Test controls (faults, revocation, counters) exist both
as Python methods and as ``/_emulator/`` HTTP endpoints.

Run it alone with ``python -m broker emulator`` (see :mod:`broker.cli`).
"""

from __future__ import annotations

from broker.emulator.faults import Fault
from broker.emulator.model import (
    DEFAULT_TOKENS,
    EmulatorAccount,
    EmulatorIdentity,
    EmulatorStats,
    EmulatorTask,
)
from broker.emulator.server import Emulator

__all__ = [
    "DEFAULT_TOKENS",
    "Emulator",
    "EmulatorAccount",
    "EmulatorIdentity",
    "EmulatorStats",
    "EmulatorTask",
    "Fault",
]
