"""Agent Identity JWTs: shape pre-check, RS256 verification against a JWKS, claims (protocol §10).

Pure: the JWK Set and the current time are passed in; fetching the JWKS is an adapter's job.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import jwt

from broker.core.protocol.keys import AgentKey
from broker.errors import AgentJwtError, KeyFormatError

DEFAULT_ISSUER: Final = "https://chatgpt.com/codex-backend/agent-identity"
DEFAULT_AUDIENCE: Final = "codex-app-server"
EXP_LEEWAY_SECONDS: Final = 60
_MAX_JWT_LEN: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class AgentJwtClaims:
    """The verified claims the broker uses (§10.1). ``key`` is secret: the JWT carries it."""

    agent_runtime_id: str
    key: AgentKey
    account_id: str
    user_id: str | None
    email: str
    plan_type: str
    fedramp: bool
    expires_at: datetime


def precheck(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fail fast on shape before any network call: three non-empty parts, JSON header and payload.

    Returns:
        The unverified header and payload (only to pick the key and fail early).

    Raises:
        AgentJwtError: a personal access token (``at-…``, §15), or not a compact JWS.
    """
    token = token.strip()
    if token.startswith("at-"):
        raise AgentJwtError(
            "the value starts with 'at-': it is a personal access token, not an Agent Identity "
            "JWT (protocol §15); configure it as the account's bearer token instead"
        )
    parts = token.split(".")
    if len(token) > _MAX_JWT_LEN or len(parts) != 3 or not all(parts):
        raise AgentJwtError("the agent identity JWT is not three non-empty dot-separated parts")
    decoded = []
    for part, name in ((parts[0], "header"), (parts[1], "payload")):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
            value = json.loads(raw)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise AgentJwtError(f"the agent identity JWT {name} is not base64url JSON") from None
        if not isinstance(value, dict):
            raise AgentJwtError(f"the agent identity JWT {name} is not a JSON object")
        decoded.append(value)
    return decoded[0], decoded[1]


def key_id(token: str) -> str:
    """The ``kid`` of the JWT's header (§10.2)."""
    header, _ = precheck(token)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AgentJwtError("the agent identity JWT header has no 'kid'")
    if header.get("alg") != "RS256":
        raise AgentJwtError("the agent identity JWT is not signed with RS256 (§10.2)")
    return kid


def verify(
    token: str,
    jwks: Mapping[str, Any],
    *,
    now: datetime,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
) -> AgentJwtClaims:
    """Verify an Agent Identity JWT as the reference does (§10.2) and return its claims.

    RS256 only; ``kid`` must be in ``jwks``; ``iss`` and ``aud`` are required and must match; ``exp``
    is required and checked against ``now`` with 60 s leeway; ``nbf`` is not checked.

    Raises:
        AgentJwtError: any failure, with a message naming it (never the token).
    """
    kid = key_id(token)
    try:
        keyset = jwt.PyJWKSet.from_dict(dict(jwks))
    except jwt.PyJWTError:
        raise AgentJwtError("the JWKS is not a valid JWK Set") from None
    matching = [k for k in keyset.keys if k.key_id == kid]
    if not matching:
        raise AgentJwtError(
            f"the agent identity JWT's kid {kid!r} is not trusted (not in the JWKS)"
        )
    try:
        claims = jwt.decode(
            token,
            matching[0],
            algorithms=["RS256"],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise AgentJwtError("the agent identity JWT signature does not verify") from None
    except jwt.InvalidIssuerError:
        raise AgentJwtError(f"the agent identity JWT issuer is not {issuer!r}") from None
    except jwt.InvalidAudienceError:
        raise AgentJwtError(f"the agent identity JWT audience is not {audience!r}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AgentJwtError(f"the agent identity JWT lacks the {exc.claim!r} claim") from None
    except jwt.PyJWTError as exc:
        raise AgentJwtError(f"the agent identity JWT is invalid: {type(exc).__name__}") from None
    return _claims(claims, now)


def _text(claims: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = claims.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise AgentJwtError(f"the agent identity JWT claim {name!r} is missing or not a string")
    return value


def _claims(claims: Mapping[str, Any], now: datetime) -> AgentJwtClaims:
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AgentJwtError("the agent identity JWT 'exp' claim is not a number")
    expires_at = datetime.fromtimestamp(exp, UTC)
    if now.timestamp() > exp + EXP_LEEWAY_SECONDS:
        raise AgentJwtError(f"the agent identity JWT expired at {expires_at.isoformat()}")
    try:
        key = AgentKey.from_pkcs8_base64(_text(claims, "agent_private_key"))
    except KeyFormatError as exc:
        raise AgentJwtError(f"the agent identity JWT private key: {exc.message}") from None
    fedramp = claims.get("chatgpt_account_is_fedramp", False)
    if not isinstance(fedramp, bool):
        raise AgentJwtError(
            "the agent identity JWT claim 'chatgpt_account_is_fedramp' is not a bool"
        )
    return AgentJwtClaims(
        agent_runtime_id=_text(claims, "agent_runtime_id"),
        key=key,
        account_id=_text(claims, "account_id"),
        user_id=_text(claims, "chatgpt_user_id", required=False) or None,
        email=_text(claims, "email", required=False),
        plan_type=_text(claims, "plan_type", required=False),
        fedramp=fedramp,
        expires_at=expires_at,
    )


def jwks_url(base_url: str) -> str:
    """The JWKS URL for a ChatGPT base (§10.3, G4): ``/wham/agent-identities/jwks`` under
    ``/backend-api``, else ``/agent-identities/jwks``."""
    base = base_url.rstrip("/")
    if "/backend-api" in base:
        return f"{base}/wham/agent-identities/jwks"
    return f"{base}/agent-identities/jwks"
