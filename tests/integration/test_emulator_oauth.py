"""The emulator's OAuth token endpoint over real loopback HTTP: logins, rotation, reuse, faults.

Concurrency note: two requests presenting the same refresh token at once are serialised by the
emulator in arrival order. The first rotates the family; the second presents a consumed token, which
real providers (and the emulator) treat as theft: the whole family is revoked, including the tokens the
winner was just given. So a race yields exactly one 200 and a revoked login, which is why a fleet must
have exactly one refresher.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest

from broker.core.protocol.keys import AgentKey
from broker.events import Event
from cb_emulator import Emulator
from tests.conftest import ManualClock
from tests.fixtures.emulator import StartEmulator

pytestmark = pytest.mark.integration

ACCOUNT = "acct-login"
USER = "user-login"
AUTH_CLAIM = "https://api.openai.com/auth"
API_AUDIENCE = "https://api.openai.com/v1"
REFERENCE_SCOPE = "openid profile email"
ABOM = {"agent_version": "0.1.0", "agent_harness_id": "broker", "running_location": "test-linux"}


@dataclass
class OAuth:
    """Speaks to one emulator as the reference client and a resource client would."""

    http: httpx.AsyncClient
    emulator: Emulator

    async def refresh(
        self, refresh_token: str, *, client_id: str | None = None, **extra: Any
    ) -> httpx.Response:
        body = {
            "client_id": client_id or self.emulator.oauth_client_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "scope": REFERENCE_SCOPE,
            **extra,
        }
        return await self.http.post(self.emulator.oauth_token_url, json=body)

    async def protected(self, access_token: str) -> httpx.Response:
        return await self.http.get(
            f"{self.emulator.base_url}/protected",
            headers={"Authorization": f"Bearer {access_token}"},
        )

    async def authenticate(self, access_token: str, url: str) -> httpx.Response:
        return await self.http.get(
            f"{self.emulator.base_url}/authenticate_app_v2",
            headers={
                "Authorization": f"Bearer {access_token}",
                "X-Original-Method": "POST",
                "X-Original-Url": url,
            },
        )

    async def verify(self, token: str, *, audience: str) -> dict[str, Any]:
        """Verify an RS256 token against the emulator's published JWKS; return its claims."""
        jwks = (await self.http.get(self.emulator.jwks_url)).json()
        key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]].key
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=audience,
            issuer=self.emulator.issuer_url,
            options={"require": ["exp", "iat", "iss", "sub", "aud"]},
        )
        return claims


def tokens_of(auth: dict[str, Any]) -> dict[str, str]:
    tokens: dict[str, str] = auth["tokens"]
    return tokens


def ssh_key() -> str:
    return AgentKey.generate(os.urandom(64)).public_key_ssh


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


@pytest.fixture(name="oauth")
async def fixture_oauth(http: httpx.AsyncClient, start_emulator: StartEmulator) -> OAuth:
    return OAuth(http, await start_emulator())


class TestLogin:
    async def test_auth_json_shape_and_verified_claims(self, oauth: OAuth) -> None:
        """A login is a reference-style auth.json whose JWTs verify against the JWKS with the account claims."""
        auth = oauth.emulator.create_login(
            ACCOUNT, user_id=USER, plan_type="plus", email="dev@example.com"
        )
        assert set(auth) == {"OPENAI_API_KEY", "tokens", "last_refresh"}
        tokens = tokens_of(auth)
        assert set(tokens) == {"id_token", "access_token", "refresh_token", "account_id"}
        assert tokens["account_id"] == ACCOUNT
        assert tokens["refresh_token"].startswith("rt-")
        assert str(auth["last_refresh"]).endswith("Z")
        datetime.fromisoformat(str(auth["last_refresh"]))
        expected_auth = {
            "chatgpt_account_id": ACCOUNT,
            "chatgpt_user_id": USER,
            "user_id": USER,
            "chatgpt_plan_type": "plus",
            "chatgpt_account_is_fedramp": False,
        }
        access = await oauth.verify(tokens["access_token"], audience=API_AUDIENCE)
        assert access["exp"] - access["iat"] == 3600
        assert (access["sub"], access["client_id"], access[AUTH_CLAIM]) == (
            USER,
            "app_dev",
            expected_auth,
        )
        identity = await oauth.verify(tokens["id_token"], audience="app_dev")
        assert identity["iss"] == oauth.emulator.issuer_url == oauth.emulator.root_url
        assert (identity["email"], identity[AUTH_CLAIM]) == ("dev@example.com", expected_auth)
        assert oauth.emulator.stats().oauth.logins_created == 1

    async def test_login_over_http_and_listing_without_tokens(self, oauth: OAuth) -> None:
        """``POST /_emulator/login`` makes the same auth.json; ``GET /_emulator/logins`` lists it, no token."""
        root = oauth.emulator.root_url
        response = await oauth.http.post(
            f"{root}/_emulator/login",
            json={"account_id": ACCOUNT, "user_id": USER, "fedramp": True},
        )
        assert response.status_code == 200
        tokens = tokens_of(response.json())
        claims = await oauth.verify(tokens["id_token"], audience="app_dev")
        assert claims[AUTH_CLAIM]["chatgpt_account_is_fedramp"] is True
        listing = await oauth.http.get(f"{root}/_emulator/logins")
        [login] = listing.json()
        assert (login["account_id"], login["user_id"], login["state"], login["refreshes"]) == (
            ACCOUNT,
            USER,
            "active",
            0,
        )
        assert login["login_id"] == oauth.emulator.logins()[0].login_id
        assert not any(value in listing.text for value in tokens.values() if value != ACCOUNT)

    @pytest.mark.parametrize(
        "body",
        [
            {"account_id": ACCOUNT},
            {"account_id": "", "user_id": USER},
            {"account_id": ACCOUNT, "user_id": USER, "access_lifetime_seconds": "60"},
            {"account_id": ACCOUNT, "user_id": USER, "fedramp": "yes"},
            {"account_id": ACCOUNT, "user_id": USER, "surprise": 1},
            [ACCOUNT],
        ],
    )
    async def test_invalid_login_request_is_400(self, oauth: OAuth, body: object) -> None:
        """A malformed login request is refused with the emulator's JSON 400."""
        response = await oauth.http.post(f"{oauth.emulator.root_url}/_emulator/login", json=body)
        assert response.status_code == 400
        assert response.json()["ok"] is False

    async def test_create_login_needs_a_running_emulator(self) -> None:
        """The issuer is the emulator's URL, so a stopped emulator cannot mint a login."""
        with pytest.raises(RuntimeError):
            Emulator().create_login(ACCOUNT, user_id=USER)


class TestAccessTokenAsBearer:
    async def test_accepted_by_every_bearer_endpoint(self, oauth: OAuth) -> None:
        """The login's access token is a Bearer at /protected, authenticate_app_v2 and both registrations."""
        access = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))["access_token"]
        protected = await oauth.protected(access)
        assert (protected.status_code, protected.json()["account_id"]) == (200, ACCOUNT)
        register_url = f"{oauth.emulator.base_url}/v1/agent/register"
        minted = await oauth.authenticate(access, register_url)
        assert minted.status_code == 200
        body = {"abom": ABOM, "agent_public_key": ssh_key(), "capabilities": ["responsesapi"]}
        via_biscuit = await oauth.http.post(
            register_url,
            json=body,
            headers={"X-OpenAI-Authorization": minted.headers["x-openai-authorization"]},
        )
        via_bearer = await oauth.http.post(
            register_url,
            json={**body, "agent_public_key": ssh_key()},
            headers={"Authorization": f"Bearer {access}"},
        )
        via_authapi = await oauth.http.post(
            f"{oauth.emulator.authapi_url}/v1/agent/register",
            json={**body, "agent_public_key": ssh_key()},
            headers={"Authorization": f"Bearer {access}"},
        )
        assert [r.status_code for r in (via_biscuit, via_bearer, via_authapi)] == [200] * 3
        identities = oauth.emulator.identities()
        assert [(i.account_id, i.user_id, i.authorised_by) for i in identities] == [
            (ACCOUNT, USER, "biscuit"),
            (ACCOUNT, USER, "bearer"),
            (ACCOUNT, USER, "bearer"),
        ]

    async def test_fedramp_login_is_a_fedramp_account(self, oauth: OAuth) -> None:
        """A FedRAMP login's Bearer registers at the AuthAPI only with ``X-OpenAI-Fedramp: true``."""
        access = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER, fedramp=True))
        url = f"{oauth.emulator.authapi_url}/v1/agent/register"
        body = {"abom": ABOM, "agent_public_key": ssh_key(), "capabilities": ["responsesapi"]}
        headers = {"Authorization": f"Bearer {access['access_token']}"}
        refused = await oauth.http.post(url, json=body, headers=headers)
        accepted = await oauth.http.post(
            url, json=body, headers={**headers, "X-OpenAI-Fedramp": "true"}
        )
        assert (refused.status_code, refused.json()["reason"]) == (400, "fedramp_header_missing")
        assert accepted.status_code == 200

    async def test_static_tokens_still_work_beside_logins(self, oauth: OAuth) -> None:
        """The static ``tokens`` table keeps working; an unknown token is still ``unknown_token``."""
        oauth.emulator.create_login(ACCOUNT, user_id=USER)
        assert (await oauth.protected("dev-access-token")).json()["account_id"] == "acct-dev"
        unknown = await oauth.protected("eyJ.not.known")
        assert (unknown.status_code, unknown.json()["reason"]) == (401, "unknown_token")

    async def test_expired_access_token_is_refused(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator, clock: ManualClock
    ) -> None:
        """Past its ``exp`` on the emulator clock an access token is 401 ``token_expired``; a refresh heals."""
        oauth = OAuth(http, await start_emulator(clock=clock))
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        assert (await oauth.protected(tokens["access_token"])).status_code == 200
        clock.advance(3600)
        expired = await oauth.protected(tokens["access_token"])
        assert (expired.status_code, expired.json()["reason"]) == (401, "token_expired")
        minted = await oauth.authenticate(tokens["access_token"], oauth.emulator.base_url + "/x")
        assert minted.status_code == 401
        fresh = (await oauth.refresh(tokens["refresh_token"])).json()["access_token"]
        assert (await oauth.protected(fresh)).status_code == 200
        assert oauth.emulator.stats().verifications_failed == 1

    async def test_expire_access_tokens_control(self, oauth: OAuth) -> None:
        """``expire_access_tokens`` (and its HTTP twin) ends the account's access tokens at once."""
        first = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        second = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        other = tokens_of(oauth.emulator.create_login("acct-other", user_id=USER))
        assert oauth.emulator.expire_access_tokens(ACCOUNT) == 2
        for token in (first["access_token"], second["access_token"]):
            assert (await oauth.protected(token)).json()["reason"] == "token_expired"
        assert (await oauth.protected(other["access_token"])).status_code == 200
        control = await oauth.http.post(
            f"{oauth.emulator.root_url}/_emulator/logins/expire", json={"account_id": "acct-other"}
        )
        assert control.json() == {"ok": True, "expired": 1}
        assert (await oauth.protected(other["access_token"])).status_code == 401
        short = tokens_of(
            oauth.emulator.create_login("acct-short", user_id=USER, access_lifetime_seconds=0)
        )
        assert (await oauth.protected(short["access_token"])).json()["reason"] == "token_expired"
        with pytest.raises(KeyError):
            oauth.emulator.expire_access_tokens("acct-none")


class TestRefresh:
    async def test_refresh_rotates_every_token(self, oauth: OAuth) -> None:
        """A refresh answers a new access, refresh and id token; the old access token lives to its exp."""
        old = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER, email="e@x.test"))
        response = await oauth.refresh(old["refresh_token"])
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        new = response.json()
        assert set(new) == {
            "access_token",
            "refresh_token",
            "id_token",
            "token_type",
            "expires_in",
            "scope",
        }
        assert (new["token_type"], new["expires_in"]) == ("Bearer", 3600)
        for name in ("access_token", "refresh_token", "id_token"):
            assert new[name] != old[name]
        identity = await oauth.verify(new["id_token"], audience="app_dev")
        assert (identity["email"], identity[AUTH_CLAIM]["chatgpt_account_id"]) == (
            "e@x.test",
            ACCOUNT,
        )
        assert (await oauth.protected(new["access_token"])).status_code == 200
        assert (await oauth.protected(old["access_token"])).status_code == 200
        again = await oauth.refresh(new["refresh_token"])
        assert again.status_code == 200
        stats = oauth.emulator.stats()
        assert (stats.refreshes, stats.refresh_token_reuse, stats.families_revoked) == (2, 0, 0)
        assert stats.requests_by_endpoint["oauth_token"] == 2
        assert oauth.emulator.logins()[0].refreshes == 2

    async def test_form_encoded_request(self, oauth: OAuth) -> None:
        """The grant also arrives form-encoded (RFC 6749 §6)."""
        old = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        form = {
            "client_id": "app_dev",
            "grant_type": "refresh_token",
            "refresh_token": old["refresh_token"],
        }
        response = await oauth.http.post(oauth.emulator.oauth_token_url, data=form)
        assert response.status_code == 200
        assert response.json()["refresh_token"].startswith("rt-")

    async def test_reuse_revokes_the_whole_family(self, oauth: OAuth) -> None:
        """A consumed refresh token presented again revokes every token of the login."""
        first = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        second = (await oauth.refresh(first["refresh_token"])).json()
        reused = await oauth.refresh(first["refresh_token"])
        assert reused.status_code == 400
        assert reused.json() == {
            "error": "invalid_grant",
            "error_description": "refresh token reused",
        }
        after = await oauth.refresh(second["refresh_token"])
        assert (after.status_code, after.json()["error"]) == (400, "invalid_grant")
        url = f"{oauth.emulator.base_url}/v1/agent/register"
        for access in (first["access_token"], second["access_token"]):
            refused = await oauth.protected(access)
            assert (refused.status_code, refused.json()["reason"]) == (401, "token_revoked")
            assert (await oauth.authenticate(access, url)).status_code == 401
        stats = oauth.emulator.stats()
        assert (stats.refreshes, stats.refresh_token_reuse, stats.families_revoked) == (1, 1, 1)
        [login] = oauth.emulator.logins()
        assert (login.state, login.revoked_reason) == ("revoked", "refresh_token_reused")

    async def test_unknown_refresh_token(self, oauth: OAuth) -> None:
        """An unknown refresh token is ``invalid_grant`` and revokes nothing."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        response = await oauth.refresh("rt-never-issued")
        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
        assert (await oauth.refresh(tokens["refresh_token"])).status_code == 200
        assert oauth.emulator.stats().families_revoked == 0

    async def test_wrong_client_is_invalid_client_and_consumes_nothing(self, oauth: OAuth) -> None:
        """Another client id is 400 ``invalid_client``; the refresh token stays usable."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        wrong = await oauth.refresh(
            tokens["refresh_token"], client_id="app_EMoamEEZ73f0CkXaXp7hrann"
        )
        assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_client")
        assert (await oauth.refresh(tokens["refresh_token"])).status_code == 200
        assert oauth.emulator.stats().oauth.refreshes_refused == 1

    async def test_configured_client_id(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator
    ) -> None:
        """``oauth_client_id`` sets the one accepted client and the id token's ``aud``."""
        oauth = OAuth(http, await start_emulator(oauth_client_id="app_fleet"))
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        assert (await oauth.verify(tokens["id_token"], audience="app_fleet"))["sub"] == USER
        refused = await oauth.refresh(tokens["refresh_token"], client_id="app_dev")
        assert refused.json()["error"] == "invalid_client"
        assert (await oauth.refresh(tokens["refresh_token"])).status_code == 200

    @pytest.mark.parametrize(
        ("content", "content_type", "error"),
        [
            (b"not json", "application/json", "invalid_request"),
            (b"", "application/json", "invalid_request"),
            (b"[1]", "application/json", "invalid_request"),
            (b"\xff\xfe", "application/json", "invalid_request"),
            (json.dumps({"client_id": "app_dev"}).encode(), "application/json", "invalid_request"),
            (
                json.dumps({"client_id": "app_dev", "grant_type": "password"}).encode(),
                "application/json",
                "unsupported_grant_type",
            ),
            (
                json.dumps({"client_id": "app_dev", "grant_type": "refresh_token"}).encode(),
                "application/json",
                "invalid_request",
            ),
            (
                urlencode(
                    [("client_id", "app_dev"), ("client_id", "app_dev"), ("grant_type", "x")]
                ).encode(),
                "application/x-www-form-urlencoded",
                "invalid_request",
            ),
            (
                json.dumps({"grant_type": "refresh_token"}).encode(),
                "application/json",
                "invalid_client",
            ),
        ],
    )
    async def test_malformed_requests(
        self, oauth: OAuth, content: bytes, content_type: str, error: str
    ) -> None:
        """Malformed requests get the RFC 6749 §5.2 error codes, as JSON 400s."""
        response = await oauth.http.post(
            oauth.emulator.oauth_token_url, content=content, headers={"Content-Type": content_type}
        )
        assert response.status_code == 400
        assert response.json()["error"] == error
        assert isinstance(response.json()["error_description"], str)

    async def test_scope_checks(self, oauth: OAuth) -> None:
        """A scope wider than the login's is ``invalid_scope`` and does not consume the token."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        wider = await oauth.refresh(tokens["refresh_token"], scope="openid admin")
        not_text = await oauth.refresh(tokens["refresh_token"], scope=["openid"])
        assert (wider.json()["error"], not_text.json()["error"]) == (
            "invalid_scope",
            "invalid_request",
        )
        assert (await oauth.refresh(tokens["refresh_token"])).status_code == 200

    async def test_concurrent_refreshes_with_one_token(self, oauth: OAuth) -> None:
        """Ten refreshes racing with one token: exactly one succeeds and the family is revoked."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        responses = await asyncio.gather(
            *(oauth.refresh(tokens["refresh_token"]) for _ in range(10))
        )
        winners = [r for r in responses if r.status_code == 200]
        assert len(winners) == 1
        assert {r.json()["error"] for r in responses if r.status_code != 200} == {"invalid_grant"}
        winner = winners[0].json()
        assert (await oauth.protected(winner["access_token"])).json()["reason"] == "token_revoked"
        assert (await oauth.refresh(winner["refresh_token"])).json()["error"] == "invalid_grant"
        stats = oauth.emulator.stats()
        assert (stats.refreshes, stats.refresh_token_reuse, stats.families_revoked) == (1, 1, 1)
        assert oauth.emulator.logins()[0].state == "revoked"


class TestFaults:
    @pytest.mark.parametrize(
        ("fault", "raised"),
        [
            ({"status": 503}, None),
            ({"drop_connection": True}, httpx.RemoteProtocolError),
            ({"delay_seconds": 30.0}, httpx.ReadTimeout),
        ],
    )
    async def test_plain_faults_do_not_consume(
        self, oauth: OAuth, fault: dict[str, Any], raised: type[Exception] | None
    ) -> None:
        """Status, drop and delay faults answer before the handler: the token stays usable."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        oauth.emulator.inject_fault("oauth_token", **fault)
        request = oauth.http.post(
            oauth.emulator.oauth_token_url,
            json={
                "client_id": "app_dev",
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
            },
            timeout=httpx.Timeout(5.0, read=0.3),
        )
        if raised is None:
            assert (await request).status_code == 503
        else:
            with pytest.raises(raised):
                await request
        assert (await oauth.refresh(tokens["refresh_token"])).status_code == 200
        stats = oauth.emulator.stats()
        assert (stats.faults_applied, stats.refreshes, stats.families_revoked) == (1, 1, 0)

    async def test_injected_invalid_grant(self, oauth: OAuth) -> None:
        """A body fault answers ``invalid_grant`` without touching the login."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        oauth.emulator.inject_fault("oauth_token", status=400, body='{"error":"invalid_grant"}')
        injected = await oauth.refresh(tokens["refresh_token"])
        assert (injected.status_code, injected.json()) == (400, {"error": "invalid_grant"})
        assert oauth.emulator.logins()[0].state == "active"
        assert (await oauth.refresh(tokens["refresh_token"])).status_code == 200

    @pytest.mark.parametrize(
        ("mode", "raised"),
        [
            ("drop", httpx.RemoteProtocolError),
            ("reset", httpx.ReadError),
            ("delay", httpx.ReadTimeout),
        ],
    )
    async def test_consumed_then_lost_and_a_blind_retry_revokes(
        self, oauth: OAuth, mode: str, raised: type[Exception]
    ) -> None:
        """The refresh happens but the answer is lost; retrying the old token is a reuse."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        oauth.emulator.fail_after_consuming(mode=mode, delay_seconds=30.0)  # type: ignore[arg-type]
        with pytest.raises(raised):
            await oauth.http.post(
                oauth.emulator.oauth_token_url,
                json={
                    "client_id": "app_dev",
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                },
                timeout=httpx.Timeout(5.0, read=0.3),
            )
        assert oauth.emulator.logins()[0].refreshes == 1
        assert oauth.emulator.stats().refreshes == 1
        retry = await oauth.refresh(tokens["refresh_token"])
        assert retry.json() == {
            "error": "invalid_grant",
            "error_description": "refresh token reused",
        }
        assert (await oauth.protected(tokens["access_token"])).status_code == 401
        stats = oauth.emulator.stats()
        assert (stats.refresh_token_reuse, stats.families_revoked) == (1, 1)

    async def test_after_handler_fault_over_http_control(self, oauth: OAuth) -> None:
        """``after_handler`` over ``/_emulator/faults``: performed, then answered 502 instead."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        control = await oauth.http.post(
            f"{oauth.emulator.root_url}/_emulator/faults",
            json={"endpoint": "oauth_token", "after_handler": True, "status": 502},
        )
        assert control.status_code == 200
        assert (await oauth.refresh(tokens["refresh_token"])).status_code == 502
        assert oauth.emulator.logins()[0].refreshes == 1
        assert (await oauth.refresh(tokens["refresh_token"])).json()["error"] == "invalid_grant"

    async def test_after_handler_applies_to_any_endpoint(self, oauth: OAuth) -> None:
        """The "done but never answered" fault works on other endpoints too (here: a registration)."""
        access = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))["access_token"]
        oauth.emulator.inject_fault(
            "authapi_register_identity", after_handler=True, drop_connection=True
        )
        with pytest.raises(httpx.RemoteProtocolError):
            await oauth.http.post(
                f"{oauth.emulator.authapi_url}/v1/agent/register",
                json={
                    "abom": ABOM,
                    "agent_public_key": ssh_key(),
                    "capabilities": ["responsesapi"],
                },
                headers={"Authorization": f"Bearer {access}"},
            )
        assert [i.account_id for i in oauth.emulator.identities()] == [ACCOUNT]

    def test_fail_after_consuming_validates(self, emulator: Emulator) -> None:
        """An unknown mode or a zero count is refused."""
        with pytest.raises(ValueError, match="mode"):
            emulator.fail_after_consuming(mode="explode")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="count"):
            emulator.fail_after_consuming(count=0)


class TestControls:
    async def test_revoke_login_over_http(self, oauth: OAuth) -> None:
        """``/_emulator/logins/revoke`` logs the account out: 401 Bearer, ``invalid_grant`` refresh."""
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        root = oauth.emulator.root_url
        control = await oauth.http.post(
            f"{root}/_emulator/logins/revoke", json={"account_id": ACCOUNT}
        )
        assert control.json() == {"ok": True, "revoked": 1}
        assert (await oauth.protected(tokens["access_token"])).json()["reason"] == "token_revoked"
        refused = await oauth.refresh(tokens["refresh_token"])
        assert refused.json() == {
            "error": "invalid_grant",
            "error_description": "refresh token revoked",
        }
        [login] = oauth.emulator.logins()
        assert (login.state, login.revoked_reason) == ("revoked", "revoked_by_control")
        stats = oauth.emulator.stats()
        assert (stats.families_revoked, stats.refresh_token_reuse) == (1, 0)
        for path in ("revoke", "expire"):
            missing = await oauth.http.post(
                f"{root}/_emulator/logins/{path}", json={"account_id": "acct-none"}
            )
            assert (missing.status_code, missing.json()["reason"]) == (404, "unknown_account")
        with pytest.raises(KeyError):
            oauth.emulator.revoke_login("acct-none")

    async def test_stats_json_and_reset(self, oauth: OAuth) -> None:
        """OAuth counters join the stats JSON once a login exists; resets clear counters, then logins."""
        stats_url = f"{oauth.emulator.root_url}/_emulator/stats"
        before = (await oauth.http.get(stats_url)).json()
        assert "refreshes" not in before
        assert "oauth_token" not in before["requests_by_endpoint"]
        tokens = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        await oauth.refresh(tokens["refresh_token"])
        await oauth.refresh(tokens["refresh_token"])
        after = (await oauth.http.get(stats_url)).json()
        assert after == oauth.emulator.stats().to_json()
        assert {
            name: after[name] for name in ("refreshes", "refresh_token_reuse", "families_revoked")
        } == {
            "refreshes": 1,
            "refresh_token_reuse": 1,
            "families_revoked": 1,
        }
        assert after["requests_by_endpoint"]["oauth_token"] == 2
        oauth.emulator.reset()
        assert oauth.emulator.stats().refreshes == 0
        assert len(oauth.emulator.logins()) == 1
        await oauth.http.post(f"{oauth.emulator.root_url}/_emulator/reset", json={"state": True})
        assert oauth.emulator.logins() == []
        gone = await oauth.protected(tokens["access_token"])
        assert (gone.status_code, gone.json()["reason"]) == (401, "unknown_token")

    async def test_logs_hold_no_token(
        self,
        log_output: list[dict[str, object]],
        http: httpx.AsyncClient,
        start_emulator: StartEmulator,
    ) -> None:
        """Token requests log their endpoint, status and reason; never a token."""
        oauth = OAuth(http, await start_emulator())
        first = tokens_of(oauth.emulator.create_login(ACCOUNT, user_id=USER))
        second = (await oauth.refresh(first["refresh_token"])).json()
        await oauth.refresh(first["refresh_token"])
        requests = [e for e in log_output if e["event"] == Event.EMULATOR_REQUEST]
        assert [(e["endpoint"], e["status"], e["reason"]) for e in requests] == [
            ("oauth_token", 200, None),
            ("oauth_token", 400, "refresh_token_reused"),
        ]
        dumped = json.dumps(log_output, default=str)
        for secret in (*first.values(), *second.values()):
            if isinstance(secret, str) and len(secret) > 20:
                assert secret not in dumped
