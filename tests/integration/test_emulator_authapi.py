"""Today's protocol shape in the emulator over loopback HTTP: AuthAPI, JWKS, Agent Identity JWTs, FedRAMP."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

from broker.core.protocol.assertion import build_assertion
from broker.core.protocol.keys import AgentKey
from broker.core.protocol.task_id import task_id_from_response
from broker.core.protocol.task_registration import task_registration_body
from broker.events import Event
from cb_emulator import DEFAULT_AUDIENCE, DEFAULT_ISSUER, Emulator, EmulatorAccount
from tests.conftest import ManualClock
from tests.fixtures.emulator import StartEmulator

pytestmark = pytest.mark.integration

DEV_TOKEN = "dev-access-token"
FEDRAMP_TOKEN = "fedramp-access-token"
TOKENS = {
    DEV_TOKEN: EmulatorAccount("acct-dev", "user-dev"),
    FEDRAMP_TOKEN: EmulatorAccount("acct-fed", "user-fed", fedramp=True),
}
ABOM = {"agent_version": "0.1.0", "agent_harness_id": "broker", "running_location": "test-linux"}
CLAIMS = {
    "iss",
    "aud",
    "iat",
    "exp",
    "agent_runtime_id",
    "agent_private_key",
    "account_id",
    "chatgpt_user_id",
    "email",
    "plan_type",
    "chatgpt_account_is_fedramp",
}


def new_key() -> AgentKey:
    return AgentKey.generate(os.urandom(64))


def reason(response: httpx.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["ok"] is False
    return str(body["reason"])


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_int(part: str) -> int:
    return int.from_bytes(b64url_decode(part), "big")


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def verifies(token: str, jwks: dict[str, Any]) -> bool:
    """RS256 verification with the JWK of the token's ``kid`` (False when the kid is unknown)."""
    header, payload, signature = token.split(".")
    kid = json.loads(b64url_decode(header))["kid"]
    matching = [jwk for jwk in jwks["keys"] if jwk["kid"] == kid]
    if not matching:
        return False
    [jwk] = matching
    public_key = RSAPublicNumbers(b64url_int(jwk["e"]), b64url_int(jwk["n"])).public_key()
    try:
        public_key.verify(
            b64url_decode(signature),
            f"{header}.{payload}".encode("ascii"),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Agent:
    """An identity the test holds the key of."""

    key: AgentKey
    runtime_id: str


class AuthApi:
    """Speaks the G4 shape to one emulator with raw httpx requests, as a client would."""

    def __init__(self, http: httpx.AsyncClient, emulator: Emulator) -> None:
        self.http = http
        self.emulator = emulator
        self.base = emulator.authapi_url

    async def post_identity(
        self, body: object, *, token: str | None = DEV_TOKEN, fedramp: bool = False
    ) -> httpx.Response:
        headers = {"X-OpenAI-Fedramp": "true"} if fedramp else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.http.post(f"{self.base}/v1/agent/register", headers=headers, json=body)

    async def register_identity(self, *, token: str = DEV_TOKEN, fedramp: bool = False) -> Agent:
        key = new_key()
        body = {
            "abom": ABOM,
            "agent_public_key": key.public_key_ssh,
            "capabilities": ["responsesapi"],
            "ttl": None,
        }
        response = await self.post_identity(body, token=token, fedramp=fedramp)
        assert response.status_code == 200, response.text
        return Agent(key, response.json()["agent_runtime_id"])

    async def post_task(
        self,
        agent: Agent,
        *,
        headers: dict[str, str] | None = None,
        now: datetime | None = None,
        signer: AgentKey | None = None,
    ) -> httpx.Response:
        body = task_registration_body(
            signer or agent.key, agent.runtime_id, now or datetime.now(UTC)
        )
        return await self.http.post(
            f"{self.base}/v1/agent/{agent.runtime_id}/task/register",
            headers=headers or {},
            json=body,
        )

    async def register_task(self, agent: Agent, *, now: datetime | None = None) -> str:
        response = await self.post_task(agent, now=now)
        assert response.status_code == 200, response.text
        return task_id_from_response(agent.key, response.json())

    async def protected(
        self,
        agent: Agent,
        task_id: str,
        *,
        account: str | None = None,
        fedramp: bool = False,
        now: datetime | None = None,
    ) -> httpx.Response:
        header = build_assertion(
            agent.key, agent.runtime_id, agent.runtime_id, task_id, now or datetime.now(UTC)
        ).header_value()
        headers = {"Authorization": header}
        if account is not None:
            headers["ChatGPT-Account-ID"] = account
        if fedramp:
            headers["X-OpenAI-Fedramp"] = "true"
        return await self.http.get(f"{self.emulator.base_url}/protected", headers=headers)

    async def jwks(self) -> dict[str, Any]:
        response = await self.http.get(self.emulator.jwks_url)
        assert response.status_code == 200, response.text
        return dict(response.json())


def jwt_agent(token: str) -> Agent:
    _, claims = jwt_parts(token)
    return Agent(
        AgentKey.from_pkcs8_base64(claims["agent_private_key"]), claims["agent_runtime_id"]
    )


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


@pytest.fixture(name="api")
async def fixture_api(http: httpx.AsyncClient, start_emulator: StartEmulator) -> AuthApi:
    return AuthApi(http, await start_emulator(tokens=TOKENS))


class TestAuthApiIdentityRegistration:
    async def test_bearer_registration(self, api: AuthApi) -> None:
        """Bearer, ``capabilities: ["responsesapi"]`` and ``ttl: null`` register an AuthAPI identity (§4.3)."""
        assert api.base == api.emulator.root_url + "/api/accounts"
        agent = await api.register_identity()
        [identity] = api.emulator.identities()
        assert identity.agent_runtime_id == agent.runtime_id
        assert (identity.account_id, identity.user_id) == ("acct-dev", "user-dev")
        assert (identity.authorised_by, identity.registered_via) == ("bearer", "authapi")
        assert identity.capabilities == ("responsesapi",)
        stats = api.emulator.stats()
        assert stats.identity_registrations == 1
        assert stats.requests_by_endpoint["authapi_register_identity"] == 1
        assert stats.requests_by_endpoint["register_identity"] == 0

    async def test_ttl_may_be_omitted(self, api: AuthApi) -> None:
        """A body without ``ttl`` (as the JS SDK sends) is accepted too (§4.3)."""
        body = {"abom": ABOM, "agent_public_key": new_key().public_key_ssh}
        response = await api.post_identity({**body, "capabilities": ["responsesapi"]})
        assert response.status_code == 200

    @pytest.mark.parametrize(
        ("token", "expected"), [(None, "missing"), ("not-a-known-token", "unknown_token")]
    )
    async def test_bearer_is_required(self, api: AuthApi, token: str | None, expected: str) -> None:
        """No Bearer or an unknown one is a JSON 401 and registers nothing."""
        body = {"abom": ABOM, "agent_public_key": new_key().public_key_ssh, "capabilities": []}
        response = await api.post_identity(body, token=token)
        assert (response.status_code, reason(response)) == (401, expected)
        assert api.emulator.identities() == []

    async def test_biscuit_does_not_authorise(self, api: AuthApi) -> None:
        """The AuthAPI takes Bearer only: a biscuit header alone is a 401."""
        response = await api.http.post(
            f"{api.base}/v1/agent/register",
            headers={"X-OpenAI-Authorization": "bsct_anything"},
            json={"abom": ABOM, "agent_public_key": new_key().public_key_ssh},
        )
        assert (response.status_code, reason(response)) == (401, "missing")

    async def test_fedramp_account_needs_the_header(self, api: AuthApi) -> None:
        """A FedRAMP account without ``X-OpenAI-Fedramp: true`` is a 400; with it, registered (§4.3)."""
        body = {
            "abom": ABOM,
            "agent_public_key": new_key().public_key_ssh,
            "capabilities": ["responsesapi"],
            "ttl": None,
        }
        refused = await api.post_identity(body, token=FEDRAMP_TOKEN)
        assert (refused.status_code, reason(refused)) == (400, "fedramp_header_missing")
        accepted = await api.post_identity(body, token=FEDRAMP_TOKEN, fedramp=True)
        assert accepted.status_code == 200
        [identity] = api.emulator.identities()
        assert (identity.fedramp_header, identity.fedramp_account) == (True, True)

    @pytest.mark.parametrize(
        ("change", "expected"),
        [
            ({"capabilities": []}, "invalid_capabilities"),
            ({"capabilities": ["other"]}, "invalid_capabilities"),
            ({"capabilities": "responsesapi"}, "invalid_field"),
            ({"agent_public_key": "ssh-rsa AAAAB3NzaC1yc2E="}, "invalid_public_key"),
            ({"abom": None}, "invalid_field"),
            ({"ttl": "forever"}, "invalid_field"),
        ],
    )
    async def test_malformed_fields_are_400(
        self, api: AuthApi, change: dict[str, object], expected: str
    ) -> None:
        """A body the AuthAPI cannot accept is a JSON 400 naming the problem (§4.3, §12.1)."""
        body = {
            "abom": ABOM,
            "agent_public_key": new_key().public_key_ssh,
            "capabilities": ["responsesapi"],
            **change,
        }
        response = await api.post_identity(body)
        assert (response.status_code, reason(response)) == (400, expected)


class TestAuthApiTaskRegistration:
    async def test_signature_only_registration(self, api: AuthApi) -> None:
        """Without any credential header a signed body registers a sealed task (§5.1), biscuits notwithstanding."""
        agent = await api.register_identity()
        response = await api.post_task(agent)
        assert response.status_code == 200
        assert set(response.json()) == {"encrypted_task_id"}
        task_id = task_id_from_response(agent.key, response.json())
        assert [(t.agent_runtime_id, t.task_id) for t in api.emulator.tasks()] == [
            (agent.runtime_id, task_id)
        ]
        stats = api.emulator.stats()
        assert (stats.task_registrations, stats.task_registrations_with_credential) == (1, 0)
        assert stats.requests_by_endpoint["authapi_register_task"] == 1

    @pytest.mark.parametrize(
        "headers",
        [{"Authorization": f"Bearer {DEV_TOKEN}"}, {"X-OpenAI-Authorization": "bsct_x"}],
    )
    async def test_credential_headers_are_ignored_but_counted(
        self, api: AuthApi, headers: dict[str, str]
    ) -> None:
        """A credential on an AuthAPI task registration changes nothing but is counted."""
        agent = await api.register_identity()
        response = await api.post_task(agent, headers=headers)
        assert response.status_code == 200
        assert api.emulator.stats().task_registrations_with_credential == 1

    async def test_plaintext_task_ids(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator
    ) -> None:
        """With ``plaintext_task_ids`` the AuthAPI answers ``task_id`` (§5.2)."""
        api = AuthApi(http, await start_emulator(tokens=TOKENS, plaintext_task_ids=True))
        agent = await api.register_identity()
        body = (await api.post_task(agent)).json()
        assert body == {"task_id": api.emulator.tasks()[0].task_id}

    async def test_bad_signature_is_401(self, api: AuthApi) -> None:
        """With no credential the signature is everything: another key's is refused."""
        agent = await api.register_identity()
        response = await api.post_task(agent, signer=new_key())
        assert (response.status_code, reason(response)) == (401, "bad_signature")
        assert api.emulator.tasks() == []

    async def test_unknown_runtime_is_404(self, api: AuthApi) -> None:
        """A runtime id the emulator never issued is a 404 (§12.2)."""
        response = await api.post_task(Agent(new_key(), "agent-unknown"))
        assert (response.status_code, reason(response)) == (404, "unknown_runtime")

    async def test_stale_timestamp_is_401(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator, clock: ManualClock
    ) -> None:
        """A timestamp outside the skew window is refused, as on the ChatGPT backend (§12.2)."""
        api = AuthApi(http, await start_emulator(tokens=TOKENS, clock=clock))
        agent = await api.register_identity()
        response = await api.post_task(agent, now=clock.now() - timedelta(seconds=301))
        assert (response.status_code, reason(response)) == (401, "stale_timestamp")

    async def test_assertion_for_an_authapi_task_is_accepted(self, api: AuthApi) -> None:
        """An assertion for the AuthAPI task authorises a protected call with the account header (§6)."""
        agent = await api.register_identity()
        task_id = await api.register_task(agent)
        response = await api.protected(agent, task_id, account="acct-dev")
        assert response.status_code == 200
        assert response.json()["task_id"] == task_id


class TestJwks:
    async def test_jwks_shape(self, api: AuthApi) -> None:
        """The JWKS at the G4 path is a JWK Set of RS256 signing keys (§10.3)."""
        assert api.emulator.jwks_url == api.emulator.base_url + "/wham/agent-identities/jwks"
        jwks = await api.jwks()
        assert jwks == api.emulator.jwks()
        [jwk] = jwks["keys"]
        assert set(jwk) == {"kty", "n", "e", "kid", "alg", "use"}
        assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["e"]) == ("RSA", "RS256", "sig", "AQAB")
        assert jwk["kid"] == api.emulator.jwks_signing_kid
        assert b64url_int(jwk["n"]).bit_length() == 2048
        assert "=" not in jwk["n"]

    async def test_rotation_keeps_the_old_kid_until_retired(self, api: AuthApi) -> None:
        """After a rotation old tokens still verify; once retired their kid is gone (§10.2)."""
        old_kid = api.emulator.jwks_signing_kid
        old_token = api.emulator.mint_agent_identity_jwt("acct-dev", user_id="user-dev")
        new_kid = api.emulator.rotate_jwks_key()
        jwks = await api.jwks()
        assert [k["kid"] for k in jwks["keys"]] == [old_kid, new_kid]
        new_token = api.emulator.mint_agent_identity_jwt("acct-dev", user_id="user-dev")
        assert jwt_parts(new_token)[0]["kid"] == new_kid
        assert verifies(old_token, jwks)
        assert verifies(new_token, jwks)
        api.emulator.retire_jwks_key(old_kid)
        jwks = await api.jwks()
        assert [k["kid"] for k in jwks["keys"]] == [new_kid]
        assert not verifies(old_token, jwks)

    async def test_rotation_over_http_retiring_the_old_key(self, api: AuthApi) -> None:
        """``POST /_emulator/jwks/rotate {"retire_old": true}`` leaves only the new key published."""
        old_kid = api.emulator.jwks_signing_kid
        response = await api.http.post(
            f"{api.emulator.root_url}/_emulator/jwks/rotate", json={"retire_old": True}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["kid"] != old_kid
        assert body["published_kids"] == [body["kid"]]
        assert [k["kid"] for k in (await api.jwks())["keys"]] == [body["kid"]]

    async def test_retire_over_http(self, api: AuthApi) -> None:
        """Retiring over HTTP: the old key goes; an unknown kid is 404 and the signing key 409."""
        old_kid = api.emulator.jwks_signing_kid
        rotated = await api.http.post(f"{api.emulator.root_url}/_emulator/jwks/rotate")
        new_kid = rotated.json()["kid"]
        url = f"{api.emulator.root_url}/_emulator/jwks/retire"
        assert (await api.http.post(url, json={"kid": old_kid})).json()["published_kids"] == [
            new_kid
        ]
        again = await api.http.post(url, json={"kid": old_kid})
        assert (again.status_code, reason(again)) == (404, "unknown_kid")
        current = await api.http.post(url, json={"kid": new_kid})
        assert (current.status_code, reason(current)) == (409, "signing_key")
        bad = await api.http.post(url, json={"kid": 7})
        assert (bad.status_code, reason(bad)) == (400, "invalid_field")

    def test_retire_in_python_raises(self, emulator: Emulator) -> None:
        """The Python control refuses what the HTTP one refuses."""
        current = emulator.jwks_signing_kid
        with pytest.raises(ValueError, match="rotate first"):
            emulator.retire_jwks_key(current)
        with pytest.raises(KeyError):
            emulator.retire_jwks_key("emu-no-such-key")


class TestJwtMinting:
    async def test_minted_jwt_verifies_and_carries_the_claims(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator, clock: ManualClock
    ) -> None:
        """A minted JWT is RS256 over the published key with every claim of §10.1."""
        api = AuthApi(http, await start_emulator(tokens=TOKENS, clock=clock))
        token = api.emulator.mint_agent_identity_jwt(
            "acct-jwt", user_id="user-jwt", email="a@example.com", plan_type="enterprise"
        )
        header, claims = jwt_parts(token)
        assert header == {"alg": "RS256", "kid": api.emulator.jwks_signing_kid, "typ": "JWT"}
        assert verifies(token, await api.jwks())
        assert set(claims) == CLAIMS
        issued_at = int(clock.now().timestamp())
        assert (claims["iat"], claims["exp"]) == (issued_at, issued_at + 3600)
        assert (claims["iss"], claims["aud"]) == (DEFAULT_ISSUER, DEFAULT_AUDIENCE)
        assert (claims["account_id"], claims["chatgpt_user_id"]) == ("acct-jwt", "user-jwt")
        assert (claims["email"], claims["plan_type"]) == ("a@example.com", "enterprise")
        assert claims["chatgpt_account_is_fedramp"] is False
        assert claims["agent_private_key"].startswith("MFECAQEwBQYDK2VwBCIEI")  # PKCS#8 v2
        [identity] = api.emulator.identities()
        assert identity.agent_runtime_id == claims["agent_runtime_id"]
        assert (identity.registered_via, identity.authorised_by) == ("jwt", "jwt")
        stats = api.emulator.stats()
        assert (stats.jwts_minted, stats.identity_registrations) == (1, 0)

    async def test_jwt_key_authorises_protected_calls(self, api: AuthApi) -> None:
        """The JWT's key registers a run task at the AuthAPI and its assertions pass ``/protected``."""
        agent = jwt_agent(api.emulator.mint_agent_identity_jwt("acct-jwt", user_id="user-jwt"))
        task_id = await api.register_task(agent)
        response = await api.protected(agent, task_id, account="acct-jwt")
        assert response.status_code == 200
        assert response.json()["account_id"] == "acct-jwt"
        mismatch = await api.protected(agent, task_id, account="acct-dev")
        assert (mismatch.status_code, reason(mismatch)) == (401, "account_mismatch")

    async def test_expired_token(self, api: AuthApi) -> None:
        """A negative lifetime gives a correctly signed token whose ``exp`` has passed."""
        token = api.emulator.mint_agent_identity_jwt("a", user_id="u", lifetime_seconds=-120)
        _, claims = jwt_parts(token)
        assert claims["exp"] == claims["iat"] - 120
        assert claims["exp"] < datetime.now(UTC).timestamp()
        assert verifies(token, await api.jwks())

    @pytest.mark.parametrize(
        ("claim", "value"), [("iss", "https://evil.example/agent-identity"), ("aud", "other")]
    )
    async def test_wrong_issuer_or_audience(self, api: AuthApi, claim: str, value: str) -> None:
        """``iss``/``aud`` can be set to values a verifier must refuse; the signature stays good."""
        wanted = {"iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, claim: value}
        token = api.emulator.mint_agent_identity_jwt(
            "a", user_id="u", iss=wanted["iss"], aud=wanted["aud"]
        )
        assert jwt_parts(token)[1][claim] == value
        assert verifies(token, await api.jwks())

    async def test_unknown_kid(self, api: AuthApi) -> None:
        """A ``kid`` the emulator does not hold names no published key."""
        token = api.emulator.mint_agent_identity_jwt("a", user_id="u", kid="emu-unknown-kid")
        assert jwt_parts(token)[0]["kid"] == "emu-unknown-kid"
        assert "emu-unknown-kid" not in {k["kid"] for k in (await api.jwks())["keys"]}

    async def test_bad_signature(self, api: AuthApi) -> None:
        """``sign_with_unknown_key`` names the published signing kid but does not verify with it."""
        token = api.emulator.mint_agent_identity_jwt("a", user_id="u", sign_with_unknown_key=True)
        assert jwt_parts(token)[0]["kid"] == api.emulator.jwks_signing_kid
        assert not verifies(token, await api.jwks())

    async def test_other_algorithm_in_header(self, api: AuthApi) -> None:
        """``alg`` changes only the header: an RS256-only verifier must refuse it."""
        token = api.emulator.mint_agent_identity_jwt("a", user_id="u", alg="HS256")
        assert jwt_parts(token)[0]["alg"] == "HS256"

    async def test_omitted_and_extra_claims(self, api: AuthApi) -> None:
        """Required claims can be left out and others added or replaced, still correctly signed."""
        token = api.emulator.mint_agent_identity_jwt(
            "a",
            user_id="u",
            omit_claims=("iss", "exp"),
            extra_claims={"plan_type": "hc", "nbf": 1},
        )
        _, claims = jwt_parts(token)
        assert not {"iss", "exp"} & set(claims)
        assert (claims["plan_type"], claims["nbf"]) == ("hc", 1)
        assert verifies(token, await api.jwks())

    async def test_retired_kid_makes_an_unknown_kid_token(self, api: AuthApi) -> None:
        """A token signed by a retired key names a kid the JWKS no longer has."""
        old_kid = api.emulator.jwks_signing_kid
        api.emulator.rotate_jwks_key(retire_old=True)
        token = api.emulator.mint_agent_identity_jwt("acct-dev", user_id="u", kid=old_kid)
        assert jwt_parts(token)[0]["kid"] == old_kid
        assert not verifies(token, await api.jwks())

    async def test_mint_over_http(self, api: AuthApi) -> None:
        """``POST /_emulator/jwt`` mints a verifying FedRAMP token and names its identity."""
        response = await api.http.post(
            f"{api.emulator.root_url}/_emulator/jwt",
            json={"account_id": "acct-x", "user_id": "user-x", "fedramp": True},
        )
        assert response.status_code == 200
        body = response.json()
        _, claims = jwt_parts(body["jwt"])
        assert claims["agent_runtime_id"] == body["agent_runtime_id"]
        assert claims["chatgpt_account_is_fedramp"] is True
        assert body["kid"] == api.emulator.jwks_signing_kid
        assert verifies(body["jwt"], await api.jwks())
        [identity] = api.emulator.identities()
        assert identity.fedramp_account is True

    @pytest.mark.parametrize(
        "request_body",
        [
            {"user_id": "u"},
            {"account_id": "a"},
            {"account_id": "", "user_id": "u"},
            {"account_id": "a", "user_id": "u", "lifetime_seconds": "1h"},
            {"account_id": "a", "user_id": "u", "lifetime_seconds": True},
            {"account_id": "a", "user_id": "u", "omit_claims": [1]},
            {"account_id": "a", "user_id": "u", "kid": ""},
            {"account_id": "a", "user_id": "u", "surprise": 1},
            ["account_id"],
        ],
    )
    async def test_invalid_mint_request_is_400(self, api: AuthApi, request_body: object) -> None:
        """A malformed mint request is a JSON 400 and mints nothing."""
        response = await api.http.post(f"{api.emulator.root_url}/_emulator/jwt", json=request_body)
        assert (response.status_code, reason(response)) == (400, "invalid_jwt_request")
        assert api.emulator.stats().jwts_minted == 0

    def test_invalid_mint_in_python_raises(self, emulator: Emulator) -> None:
        """The Python control validates like the HTTP one."""
        with pytest.raises(ValueError, match="account_id"):
            emulator.mint_agent_identity_jwt("", user_id="u")


class TestFedramp:
    async def test_fedramp_identity_needs_the_header_on_protected_calls(self, api: AuthApi) -> None:
        """An assertion of a FedRAMP identity without ``X-OpenAI-Fedramp: true`` is a 401 (§6.2)."""
        token = api.emulator.mint_agent_identity_jwt("acct-fed", user_id="u", fedramp=True)
        agent = jwt_agent(token)
        task_id = await api.register_task(agent)
        refused = await api.protected(agent, task_id, account="acct-fed")
        assert (refused.status_code, reason(refused)) == (401, "fedramp_header_missing")
        accepted = await api.protected(agent, task_id, account="acct-fed", fedramp=True)
        assert accepted.status_code == 200
        mismatch = await api.protected(agent, task_id, account="acct-dev", fedramp=True)
        assert reason(mismatch) == "account_mismatch"

    async def test_registered_fedramp_identity_needs_the_header(self, api: AuthApi) -> None:
        """The rule holds for identities registered at the AuthAPI by a FedRAMP account too."""
        agent = await api.register_identity(token=FEDRAMP_TOKEN, fedramp=True)
        task_id = await api.register_task(agent)
        assert reason(await api.protected(agent, task_id)) == "fedramp_header_missing"
        assert (await api.protected(agent, task_id, fedramp=True)).status_code == 200

    async def test_other_accounts_need_no_header(self, api: AuthApi) -> None:
        """Non-FedRAMP identities and Bearer calls are unaffected."""
        agent = await api.register_identity()
        task_id = await api.register_task(agent)
        assert (await api.protected(agent, task_id)).status_code == 200
        bearer = await api.http.get(
            f"{api.emulator.base_url}/protected",
            headers={"Authorization": f"Bearer {FEDRAMP_TOKEN}"},
        )
        assert bearer.status_code == 200

    async def test_identities_listing_shows_the_binding(self, api: AuthApi) -> None:
        """``GET /_emulator/identities`` shows where each identity came from and its FedRAMP flag."""
        await api.register_identity(token=FEDRAMP_TOKEN, fedramp=True)
        api.emulator.mint_agent_identity_jwt("acct-jwt", user_id="u")
        listing = (await api.http.get(f"{api.emulator.root_url}/_emulator/identities")).json()
        assert [(i["registered_via"], i["fedramp_account"]) for i in listing] == [
            ("authapi", True),
            ("jwt", False),
        ]


class TestFaults:
    async def test_retryable_sequence_on_identity_registration(self, api: AuthApi) -> None:
        """429 then 503 then the real answer: the bootstrap sequence of §11.2."""
        api.emulator.inject_fault("authapi_register_identity", status=429)
        api.emulator.inject_fault("authapi_register_identity", status=503)
        body = {
            "abom": ABOM,
            "agent_public_key": new_key().public_key_ssh,
            "capabilities": ["responsesapi"],
            "ttl": None,
        }
        statuses = [(await api.post_identity(body)).status_code for _ in range(3)]
        assert statuses == [429, 503, 200]
        stats = api.emulator.stats()
        assert (stats.faults_applied, stats.identity_registrations) == (2, 1)
        assert stats.requests_by_endpoint["authapi_register_identity"] == 3

    async def test_forbidden_on_task_registration(self, api: AuthApi) -> None:
        """A 403 (non-retryable) on the AuthAPI task endpoint, then it recovers."""
        agent = await api.register_identity()
        api.emulator.inject_fault("authapi_register_task", status=403)
        first = await api.post_task(agent)
        assert (first.status_code, reason(first)) == (403, "injected_fault")
        assert (await api.post_task(agent)).status_code == 200

    async def test_server_errors_over_http_control(self, api: AuthApi) -> None:
        """``POST /_emulator/faults`` accepts the AuthAPI endpoint names."""
        agent = await api.register_identity()
        control = await api.http.post(
            f"{api.emulator.root_url}/_emulator/faults",
            json={"endpoint": "authapi_register_task", "status": 503, "count": 2},
        )
        assert control.status_code == 200
        statuses = [(await api.post_task(agent)).status_code for _ in range(3)]
        assert statuses == [503, 503, 200]

    async def test_faults_are_per_shape(self, api: AuthApi) -> None:
        """A ChatGPT-backend fault leaves the AuthAPI alone; ``*`` reaches the AuthAPI and the JWKS."""
        api.emulator.inject_fault("register_identity", status=500)
        agent = await api.register_identity()
        api.emulator.reset()
        api.emulator.inject_fault("*", status=502, count=2)
        assert (await api.post_task(agent)).status_code == 502
        assert (await api.http.get(api.emulator.jwks_url)).status_code == 502

    async def test_jwks_unavailable(self, api: AuthApi) -> None:
        """``jwks`` faults: a 503, a delay past the client's timeout, a dropped connection."""
        api.emulator.inject_fault("jwks", status=503)
        api.emulator.inject_fault("jwks", delay_seconds=30)
        api.emulator.inject_fault("jwks", drop_connection=True)
        assert (await api.http.get(api.emulator.jwks_url)).status_code == 503
        with pytest.raises(httpx.ReadTimeout):
            await api.http.get(api.emulator.jwks_url, timeout=httpx.Timeout(5.0, read=0.2))
        with pytest.raises(httpx.RemoteProtocolError):
            await api.http.get(api.emulator.jwks_url)
        assert (await api.jwks())["keys"]
        assert api.emulator.stats().requests_by_endpoint["jwks"] == 4


class TestLogging:
    async def test_jwt_and_key_never_logged(
        self, log_output: list[dict[str, object]], api: AuthApi
    ) -> None:
        """Minting over HTTP and using the token logs neither the JWT nor its private key (§11.3)."""
        response = await api.http.post(
            f"{api.emulator.root_url}/_emulator/jwt", json={"account_id": "a", "user_id": "u"}
        )
        token = response.json()["jwt"]
        agent = jwt_agent(token)
        await api.register_task(agent)
        await api.jwks()
        requests = [e for e in log_output if e["event"] == Event.EMULATOR_REQUEST]
        assert [e["endpoint"] for e in requests] == [None, "authapi_register_task", "jwks"]
        dumped = json.dumps(log_output, default=str)
        for secret in (token, token.split(".")[2], jwt_parts(token)[1]["agent_private_key"]):
            assert secret not in dumped
