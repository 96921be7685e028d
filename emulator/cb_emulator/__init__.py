"""A faithful emulator of the agent-identity control plane, for offline development and tests.

It serves the ChatGPT-backend endpoints (G1, under ``/backend-api``), the AuthAPI (G4, under
``/api/accounts``), a JWKS, an OAuth token endpoint (``/oauth/token``: ChatGPT logins with
refresh-token rotation and reuse detection) and a protected resource over HTTP, and really checks
what it receives: Ed25519 signatures, biscuit binding and single use, timestamps within a skew
window, task ownership and revocation, ``ChatGPT-Account-ID`` and the FedRAMP header (protocol §12,
§15), and workspace routes (discovery at ``/backend-api/wham/accounts/check``, a regional origin,
the routing header, §16). Test controls (faults, revocation, counters, Agent Identity JWTs, JWKS
rotation, logins, workspace routes) exist both as Python methods and as ``/_emulator/`` HTTP
endpoints.

Run it alone with ``credential-broker-emulator`` or ``python -m cb_emulator`` (see
:mod:`cb_emulator.cli`); ``credential-broker dev`` runs it beside a broker.
"""

from __future__ import annotations

from cb_emulator.faults import ENDPOINTS, Fault
from cb_emulator.jwt import DEFAULT_AUDIENCE, DEFAULT_ISSUER, JwtSpec
from cb_emulator.model import (
    DEFAULT_TOKENS,
    DEV_ACCOUNT,
    DEV_TOKEN,
    EmulatorAccount,
    EmulatorIdentity,
    EmulatorLogin,
    EmulatorStats,
    EmulatorTask,
    OAuthStats,
)
from cb_emulator.oauth import DEFAULT_CLIENT_ID as DEFAULT_OAUTH_CLIENT_ID
from cb_emulator.routing import (
    NO_CONSTRAINT,
    ROUTING_HEADER,
    WorkspaceRoute,
    accounts_check_body,
)
from cb_emulator.server import Emulator

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "DEFAULT_OAUTH_CLIENT_ID",
    "DEFAULT_TOKENS",
    "DEV_ACCOUNT",
    "DEV_TOKEN",
    "ENDPOINTS",
    "NO_CONSTRAINT",
    "ROUTING_HEADER",
    "Emulator",
    "EmulatorAccount",
    "EmulatorIdentity",
    "EmulatorLogin",
    "EmulatorStats",
    "EmulatorTask",
    "Fault",
    "JwtSpec",
    "OAuthStats",
    "WorkspaceRoute",
    "accounts_check_body",
]
