"""Agent Identity JWT verification against a JWK Set (protocol §10), with real RSA keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.core.protocol.agent_jwt import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    jwks_url,
    precheck,
    verify,
)
from broker.core.protocol.keys import AgentKey
from broker.errors import AgentJwtError

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SIGNING = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
AGENT = AgentKey.from_seed(bytes([5]) * 32)


def jwk_set(*pairs: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    keys = []
    for kid, key in pairs:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**public, "kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": keys}


JWKS = jwk_set(("k1", SIGNING))


def mint(
    *, key: rsa.RSAPrivateKey = SIGNING, kid: str = "k1", alg: str = "RS256", **overrides: Any
) -> str:
    claims: dict[str, Any] = {
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "iat": int(NOW.timestamp()),
        "exp": int((NOW + timedelta(hours=1)).timestamp()),
        "agent_runtime_id": "agent-9",
        "agent_private_key": AGENT.to_pkcs8_base64(),
        "account_id": "acct-9",
        "chatgpt_user_id": "user-9",
        "email": "",
        "plan_type": "pro",
        "chatgpt_account_is_fedramp": True,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


class TestVerify:
    def test_valid(self) -> None:
        """A well-formed, trusted, unexpired JWT yields its claims and the embedded key."""
        claims = verify(mint(), JWKS, now=NOW)
        assert claims.agent_runtime_id == "agent-9"
        assert claims.key == AGENT
        assert claims.account_id == "acct-9"
        assert claims.fedramp is True

    @pytest.mark.parametrize(
        ("token", "message"),
        [
            (lambda: mint(key=OTHER), "signature does not verify"),
            (lambda: mint(kid="k2"), "not trusted"),
            (lambda: mint(iss="https://evil.example"), "issuer"),
            (lambda: mint(aud="someone-else"), "audience"),
            (lambda: mint(exp=int((NOW - timedelta(seconds=61)).timestamp())), "expired"),
            (lambda: mint(exp=None), "'exp'"),
            (lambda: mint(agent_private_key="bm90IGEga2V5"), "private key"),
            (lambda: mint(account_id=7), "'account_id'"),
        ],
    )
    def test_refused(self, token: Any, message: str) -> None:
        """Each defect is refused with a message naming it and never containing the token."""
        value = token()
        with pytest.raises(AgentJwtError, match=message) as caught:
            verify(value, JWKS, now=NOW)
        assert value not in caught.value.message

    def test_leeway(self) -> None:
        """An exp up to 60 s in the past is still accepted (jsonwebtoken's default leeway)."""
        verify(mint(exp=int((NOW - timedelta(seconds=59)).timestamp())), JWKS, now=NOW)

    def test_hs256_refused(self) -> None:
        """Only RS256 is accepted (no algorithm confusion)."""
        token = jwt.encode(
            {"iss": DEFAULT_ISSUER}, "secret" * 8, algorithm="HS256", headers={"kid": "k1"}
        )
        with pytest.raises(AgentJwtError, match="RS256"):
            verify(token, JWKS, now=NOW)


class TestPrecheck:
    @pytest.mark.parametrize("token", ["", "a.b", "a..c", "a.b.c.d", "!!.!!.!!", "x" * 70000])
    def test_shape(self, token: str) -> None:
        """Anything but three base64url JSON parts is refused before any network call."""
        with pytest.raises(AgentJwtError):
            precheck(token)

    def test_personal_access_token(self) -> None:
        """A value starting with at- is named a personal access token (§15)."""
        with pytest.raises(AgentJwtError, match="personal access token"):
            precheck("at-0123456789")


class TestJwksUrl:
    @pytest.mark.parametrize(
        ("base", "url"),
        [
            (
                "https://chatgpt.com/backend-api",
                "https://chatgpt.com/backend-api/wham/agent-identities/jwks",
            ),
            (
                "http://127.0.0.1:9/backend-api/",
                "http://127.0.0.1:9/backend-api/wham/agent-identities/jwks",
            ),
            ("https://x.example/api/codex", "https://x.example/api/codex/agent-identities/jwks"),
        ],
    )
    def test_g4_rule(self, base: str, url: str) -> None:
        """The JWKS path follows the G4 rule (§10.3)."""
        assert jwks_url(base) == url
