"""A faithful emulator of the agent-identity control plane, for offline development and tests.

It serves the ChatGPT-backend endpoints (G1, under ``/backend-api``), the AuthAPI (G4, under
``/api/accounts``), a JWKS, an OAuth token endpoint (``/oauth/token``: ChatGPT logins with
refresh-token rotation and reuse detection) and a protected resource over HTTP, and really checks
what it receives: Ed25519 signatures, biscuit binding and single use, timestamps within a skew
window, task ownership and revocation, ``ChatGPT-Account-ID`` and the FedRAMP header (protocol §12,
§15). Test controls (faults, revocation, counters, Agent Identity JWTs, JWKS rotation, logins) exist
both as Python methods and as ``/_emulator/`` HTTP endpoints.

Run it alone with ``python -m broker emulator`` (see :mod:`broker.cli`).
"""

from __future__ import annotations

from broker.emulator.faults import ENDPOINTS, Fault
from broker.emulator.jwt import DEFAULT_AUDIENCE, DEFAULT_ISSUER, JwtSpec
from broker.emulator.model import (
    DEFAULT_TOKENS,
    EmulatorAccount,
    EmulatorIdentity,
    EmulatorLogin,
    EmulatorStats,
    EmulatorTask,
    OAuthStats,
)
from broker.emulator.oauth import DEFAULT_CLIENT_ID as DEFAULT_OAUTH_CLIENT_ID
from broker.emulator.server import Emulator

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "DEFAULT_OAUTH_CLIENT_ID",
    "DEFAULT_TOKENS",
    "ENDPOINTS",
    "Emulator",
    "EmulatorAccount",
    "EmulatorIdentity",
    "EmulatorLogin",
    "EmulatorStats",
    "EmulatorTask",
    "Fault",
    "JwtSpec",
    "OAuthStats",
]
