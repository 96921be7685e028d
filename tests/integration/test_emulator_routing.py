"""Workspace routing in the emulator over loopback HTTP: discovery, the regional origin, enforcement."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from broker.core.protocol.assertion import build_assertion
from broker.core.protocol.keys import AgentKey
from broker.core.protocol.task_registration import task_registration_body
from cb_emulator import (
    DEV_ACCOUNT,
    DEV_TOKEN,
    NO_CONSTRAINT,
    ROUTING_HEADER,
    Emulator,
    EmulatorAccount,
    WorkspaceRoute,
    accounts_check_body,
)
from tests.fixtures.emulator import StartEmulator

pytestmark = pytest.mark.integration

DEV = DEV_ACCOUNT.account_id
OTHER_TOKEN = "other-access-token"
OTHER = "acct-other"
FEDRAMP_TOKEN = "fedramp-access-token"
FEDRAMP = "acct-fed"
TOKENS = {
    DEV_TOKEN: DEV_ACCOUNT,
    OTHER_TOKEN: EmulatorAccount(OTHER, "user-other"),
    FEDRAMP_TOKEN: EmulatorAccount(FEDRAMP, "user-fed", fedramp=True),
}
CHECK_PATH = "/backend-api/wham/accounts/check"
PROTECTED_PATH = "/backend-api/protected"
ABOM = {"agent_version": "0.1.0", "agent_harness_id": "broker", "running_location": "test-linux"}


def reason(response: httpx.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["ok"] is False
    assert body["message"]
    return str(body["reason"])


def entry(response: httpx.Response) -> dict[str, object]:
    """The one account entry of a well-formed discovery answer, after checking the envelope."""
    assert response.status_code == 200, response.text
    body = response.json()
    (account,) = body["accounts"]
    assert body["account_ordering"] == [account["id"]]
    assert body["default_account_id"] == account["id"]
    assert account["structure"] == "workspace"
    return dict(account)


class Client:
    """Raw discovery and protected calls against one emulator, at either of its origins."""

    def __init__(self, http: httpx.AsyncClient, emulator: Emulator) -> None:
        self.http = http
        self.emulator = emulator

    @property
    def main(self) -> str:
        return self.emulator.root_url

    @property
    def regional(self) -> str:
        return self.emulator.regional_origin

    async def check(
        self,
        *,
        origin: str | None = None,
        token: str | None = DEV_TOKEN,
        account: str | None = DEV,
        fedramp: bool = False,
    ) -> httpx.Response:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if account is not None:
            headers["ChatGPT-Account-ID"] = account
        if fedramp:
            headers["X-OpenAI-Fedramp"] = "true"
        return await self.http.get(f"{origin or self.main}{CHECK_PATH}", headers=headers)

    async def protected(
        self,
        origin: str,
        *,
        routing: str | None = None,
        authorization: str = f"Bearer {DEV_TOKEN}",
        method: str = "GET",
    ) -> httpx.Response:
        headers = {"Authorization": authorization}
        if routing is not None:
            headers[ROUTING_HEADER] = routing
        return await self.http.request(method, f"{origin}{PROTECTED_PATH}", headers=headers)

    async def assertion(self, token: str) -> str:
        """Register an identity and a task for ``token``'s account; return a fresh assertion."""
        key = AgentKey.generate(os.urandom(64))
        registered = await self.http.post(
            f"{self.main}/backend-api/v1/agent/register",
            headers={"Authorization": f"Bearer {token}"},
            json={"abom": ABOM, "agent_public_key": key.public_key_ssh, "capabilities": []},
        )
        runtime_id = registered.json()["agent_runtime_id"]
        now = datetime.now(UTC)
        task = await self.http.post(
            f"{self.main}/backend-api/v1/agent/{runtime_id}/task/register",
            json=task_registration_body(key, runtime_id, now),
        )
        assert task.status_code == 200, task.text
        task_id = task.json()["task_id"]
        return build_assertion(key, runtime_id, runtime_id, task_id, now).header_value()


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


@pytest.fixture(name="client")
async def fixture_client(http: httpx.AsyncClient, start_emulator: StartEmulator) -> Client:
    emulator = await start_emulator(tokens=TOKENS, plaintext_task_ids=True, require_biscuit=False)
    return Client(http, emulator)


class TestRegionalOrigin:
    async def test_is_a_second_loopback_origin(self, client: Client) -> None:
        """``regional_origin`` is ``http://127.0.0.1:<port>``: another port, no path, no slash."""
        regional = httpx.URL(client.regional)
        assert (regional.scheme, regional.host, regional.path) == ("http", "127.0.0.1", "/")
        assert not client.regional.endswith("/")
        assert regional.port not in (None, httpx.URL(client.main).port)

    async def test_serves_the_backend_like_the_main_origin(self, client: Client) -> None:
        """An account without a route is served at both origins, as before routing existed."""
        for origin in (client.main, client.regional):
            response = await client.protected(origin)
            assert response.status_code == 200, response.text
            assert response.json()["account_id"] == DEV
            assert entry(await client.check(origin=origin))["id"] == DEV

    async def test_stops_with_the_emulator(self, http: httpx.AsyncClient) -> None:
        """Both listeners close on ``stop()``; the regional origin is then unknown."""
        emulator = Emulator()
        await emulator.start()
        regional = emulator.regional_origin
        await emulator.stop()
        with pytest.raises(RuntimeError, match="not running"):
            _ = emulator.regional_origin
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{regional}{PROTECTED_PATH}")


class TestDiscovery:
    async def test_account_without_route_is_not_constrained(self, client: Client) -> None:
        """No route: the backend's answer shape with ``NO_CONSTRAINT`` for origin and override."""
        response = await client.check()
        assert response.json() == accounts_check_body(DEV)
        assert entry(response) == {
            "id": DEV,
            "structure": "workspace",
            "workspace_backend_origin": NO_CONSTRAINT,
            "account_routing_override": NO_CONSTRAINT,
        }

    @pytest.mark.parametrize("override", [NO_CONSTRAINT, "us", "us_cr"])
    async def test_answers_each_override_at_the_regional_origin(
        self, client: Client, override: str
    ) -> None:
        """``set_route`` returns the regional origin, and discovery answers it with the override."""
        answered = client.emulator.set_route(DEV, override=override)
        assert answered == client.regional
        found = entry(await client.check())
        assert found["workspace_backend_origin"] == client.regional
        assert found["account_routing_override"] == override

    @pytest.mark.parametrize(
        "origin", ["ftp://x", "https://u:p@host", "https://host/path", "not a url", NO_CONSTRAINT]
    )
    async def test_answers_a_configured_origin_verbatim(self, client: Client, origin: str) -> None:
        """Any other origin string is answered as given, so clients can be tested on bad ones."""
        assert client.emulator.set_route(DEV, override="us", origin=origin) == origin
        assert entry(await client.check())["workspace_backend_origin"] == origin

    async def test_routes_are_per_account(self, client: Client) -> None:
        """One account's route leaves the others unconstrained."""
        client.emulator.set_route(DEV, override="us_cr")
        other = entry(await client.check(token=OTHER_TOKEN, account=OTHER))
        assert other["account_routing_override"] == NO_CONSTRAINT

    async def test_clear_route_unconstrains_the_account(self, client: Client) -> None:
        """``clear_route`` forgets the route; it reports whether there was one."""
        client.emulator.set_route(DEV)
        assert client.emulator.routes() == {DEV: WorkspaceRoute("us")}
        assert client.emulator.clear_route(DEV) is True
        assert client.emulator.clear_route(DEV) is False
        assert entry(await client.check())["account_routing_override"] == NO_CONSTRAINT
        assert (await client.protected(client.main, routing="us")).status_code == 200

    @pytest.mark.parametrize(
        ("token", "expected"), [(None, "missing"), ("not-a-known-token", "unknown_token")]
    )
    async def test_needs_a_known_bearer(
        self, client: Client, token: str | None, expected: str
    ) -> None:
        """No Bearer, or an unknown one: 401, as every Bearer endpoint of the emulator."""
        response = await client.check(token=token)
        assert (response.status_code, reason(response)) == (401, expected)

    async def test_needs_the_account_header(self, client: Client) -> None:
        """``ChatGPT-Account-ID`` is required: 400 without it."""
        response = await client.check(account=None)
        assert (response.status_code, reason(response)) == (400, "missing_account_header")

    async def test_account_header_must_name_the_bearers_account(self, client: Client) -> None:
        """An account header naming another account than the Bearer's: 403 ``account_mismatch``."""
        response = await client.check(account=OTHER)
        assert (response.status_code, reason(response)) == (403, "account_mismatch")

    async def test_fedramp_account_needs_the_fedramp_header(self, client: Client) -> None:
        """A FedRAMP account discovers with ``X-OpenAI-Fedramp: true``; without it, 400."""
        refused = await client.check(token=FEDRAMP_TOKEN, account=FEDRAMP)
        assert (refused.status_code, reason(refused)) == (400, "fedramp_header_missing")
        found = entry(await client.check(token=FEDRAMP_TOKEN, account=FEDRAMP, fedramp=True))
        assert found["id"] == FEDRAMP

    async def test_counts_discoveries(self, client: Client) -> None:
        """Discoveries are counted per endpoint; the JSON names them once one arrived."""
        before = await client.http.get(f"{client.main}/_emulator/stats")
        assert "accounts_check" not in before.json()["requests_by_endpoint"]
        assert client.emulator.stats().requests_by_endpoint["accounts_check"] == 0
        await client.check()
        await client.check(origin=client.regional)
        await client.check(account=OTHER)
        assert client.emulator.stats().requests_by_endpoint["accounts_check"] == 3
        after = await client.http.get(f"{client.main}/_emulator/stats")
        assert after.json()["requests_by_endpoint"]["accounts_check"] == 3

    def test_python_controls_validate(self) -> None:
        """Unknown overrides, empty accounts and the regional origin of a stopped emulator raise."""
        emulator = Emulator()
        with pytest.raises(ValueError, match="override"):
            emulator.set_route(DEV, override="eu", origin=NO_CONSTRAINT)
        with pytest.raises(ValueError, match="account_id"):
            emulator.set_route("", origin=NO_CONSTRAINT)
        with pytest.raises(RuntimeError, match="not running"):
            emulator.set_route(DEV)
        assert emulator.routes() == {}
        with pytest.raises(ValueError, match="count"):
            emulator.set_accounts_check_body(DEV, {}, count=0)
        with pytest.raises(ValueError, match="JSON"):
            emulator.set_accounts_check_body(DEV, {"x": object()})


class TestRawAnswers:
    @pytest.mark.parametrize(
        "body",
        [
            accounts_check_body(OTHER, origin=NO_CONSTRAINT, override="us"),
            {
                "accounts": [
                    {"id": DEV, "structure": "workspace", "account_routing_override": "us"}
                ],
                "account_ordering": [DEV],
                "default_account_id": DEV,
            },
            accounts_check_body(DEV, origin="https://eu.example", override="eu"),
            accounts_check_body(DEV, origin=42, override="us"),
            {"accounts": {"id": DEV}, "account_ordering": [DEV], "default_account_id": DEV},
            ["not", "an", "object"],
        ],
        ids=[
            "another-account",
            "no-origin",
            "override-eu",
            "origin-not-a-string",
            "accounts-not-a-list",
            "not-an-object",
        ],
    )
    async def test_next_discovery_answers_the_raw_body_once(
        self, client: Client, body: object
    ) -> None:
        """A queued raw body is the next answer, verbatim; then the route's answer is back."""
        client.emulator.set_route(DEV, override="us_cr")
        assert client.emulator.set_accounts_check_body(DEV, body) == 1
        raw = await client.check()
        assert (raw.status_code, raw.json()) == (200, body)
        assert entry(await client.check())["account_routing_override"] == "us_cr"

    async def test_raw_bodies_are_per_account_and_counted(self, client: Client) -> None:
        """``count`` answers are queued for the one account; other accounts are not affected."""
        changed = accounts_check_body(OTHER, origin=client.regional, override="us")
        assert client.emulator.set_accounts_check_body(DEV, changed, count=2) == 2
        assert entry(await client.check(token=OTHER_TOKEN, account=OTHER))["id"] == OTHER
        assert entry(await client.check())["id"] == OTHER
        assert entry(await client.check())["id"] == OTHER
        assert entry(await client.check())["id"] == DEV

    async def test_raw_body_still_needs_valid_credentials(self, client: Client) -> None:
        """The Bearer and the account header are checked before a raw body is answered."""
        client.emulator.set_accounts_check_body(DEV, {"accounts": []})
        refused = await client.check(token="not-a-known-token")
        assert refused.status_code == 401
        mismatched = await client.check(account=OTHER)
        assert mismatched.status_code == 403
        assert (await client.check()).json() == {"accounts": []}

    async def test_reset_forgets_raw_bodies_but_keeps_routes(self, client: Client) -> None:
        """A plain reset drops queued answers (like faults); ``state=True`` also the routes."""
        client.emulator.set_route(DEV, override="us")
        client.emulator.set_accounts_check_body(DEV, {"accounts": []})
        client.emulator.reset()
        assert entry(await client.check())["account_routing_override"] == "us"
        client.emulator.reset(state=True)
        assert client.emulator.routes() == {}
        assert entry(await client.check())["account_routing_override"] == NO_CONSTRAINT


class TestDiscoveryFaults:
    async def test_status_fault(self, client: Client) -> None:
        """A 503 fault on ``accounts_check`` answers the next discovery, then it recovers."""
        client.emulator.inject_fault("accounts_check", status=503)
        failed = await client.check()
        assert (failed.status_code, reason(failed)) == (503, "injected_fault")
        assert (await client.check()).status_code == 200
        stats = client.emulator.stats()
        assert (stats.faults_applied, stats.requests_by_endpoint["accounts_check"]) == (1, 2)

    async def test_delay_fault_holds_the_answer(self, client: Client) -> None:
        """A delay alone holds the discovery, then the real answer comes."""
        client.emulator.set_route(DEV, override="us")
        client.emulator.inject_fault("accounts_check", delay_seconds=0.3)
        started = time.monotonic()
        found = entry(await client.check())
        assert time.monotonic() - started >= 0.3
        assert found["account_routing_override"] == "us"

    async def test_dropped_connection(self, client: Client) -> None:
        """A dropped connection leaves the client without an answer."""
        client.emulator.inject_fault("accounts_check", drop_connection=True)
        with pytest.raises(httpx.TransportError):
            await client.check()

    async def test_fault_over_http(self, client: Client) -> None:
        """``POST /_emulator/faults`` accepts the ``accounts_check`` endpoint."""
        control = await client.http.post(
            f"{client.main}/_emulator/faults",
            json={"endpoint": "accounts_check", "status": 429},
        )
        assert control.status_code == 200, control.text
        assert (await client.check()).status_code == 429


class TestEnforcement:
    @pytest.mark.parametrize("override", ["us", "us_cr"])
    async def test_routed_call_at_the_regional_origin_with_the_header(
        self, client: Client, override: str
    ) -> None:
        """The route's origin and header: accepted, GET and POST."""
        origin = client.emulator.set_route(DEV, override=override)
        for method in ("GET", "POST"):
            response = await client.protected(origin, routing=override, method=method)
            assert response.status_code == 200, response.text
            assert response.json()["account_id"] == DEV

    @pytest.mark.parametrize("override", [NO_CONSTRAINT, "us", "us_cr"])
    async def test_wrong_origin_is_misdirected(self, client: Client, override: str) -> None:
        """A routed account's call at the main origin: 421 ``wrong_origin``, counted as failed."""
        client.emulator.set_route(DEV, override=override)
        routing = None if override == NO_CONSTRAINT else override
        response = await client.protected(client.main, routing=routing)
        assert (response.status_code, reason(response)) == (421, "wrong_origin")
        stats = client.emulator.stats()
        assert (stats.verifications_ok, stats.verifications_failed) == (0, 1)

    @pytest.mark.parametrize("override", ["us", "us_cr"])
    async def test_missing_header(self, client: Client, override: str) -> None:
        """The right origin without the routing header: 403 ``missing_routing_header``."""
        origin = client.emulator.set_route(DEV, override=override)
        response = await client.protected(origin)
        assert (response.status_code, reason(response)) == (403, "missing_routing_header")

    @pytest.mark.parametrize(
        ("override", "sent"), [("us", "us_cr"), ("us_cr", "us"), ("us", "US"), ("us", "eu")]
    )
    async def test_wrong_header(self, client: Client, override: str, sent: str) -> None:
        """Another routing header value: 403 ``wrong_routing_header``."""
        origin = client.emulator.set_route(DEV, override=override)
        response = await client.protected(origin, routing=sent)
        assert (response.status_code, reason(response)) == (403, "wrong_routing_header")

    async def test_no_constraint_route_takes_no_header(self, client: Client) -> None:
        """A ``NO_CONSTRAINT`` route: the call without a header passes, with one it is refused."""
        origin = client.emulator.set_route(DEV, override=NO_CONSTRAINT)
        assert (await client.protected(origin)).status_code == 200
        response = await client.protected(origin, routing="us")
        assert (response.status_code, reason(response)) == (403, "unexpected_routing_header")

    @pytest.mark.parametrize("origin", [NO_CONSTRAINT, "main"])
    async def test_main_origin_routes(self, client: Client, origin: str) -> None:
        """A route to ``NO_CONSTRAINT`` or to the main origin itself: the main origin is right."""
        configured = client.main if origin == "main" else origin
        client.emulator.set_route(DEV, override="us", origin=configured)
        assert (await client.protected(client.main, routing="us")).status_code == 200
        elsewhere = await client.protected(client.regional, routing="us")
        assert (elsewhere.status_code, reason(elsewhere)) == (421, "wrong_origin")

    @pytest.mark.parametrize("origin", ["https://residency.example", "ftp://x", "not a url"])
    async def test_unreachable_origin_refuses_every_listener(
        self, client: Client, origin: str
    ) -> None:
        """An origin no listener has: every call of the account is at the wrong origin."""
        client.emulator.set_route(DEV, override="us", origin=origin)
        for listener in (client.main, client.regional):
            response = await client.protected(listener, routing="us")
            assert (response.status_code, reason(response)) == (421, "wrong_origin")

    async def test_unrouted_account_is_unchanged(self, client: Client) -> None:
        """Another account's route changes nothing for this one; its routing header is ignored."""
        client.emulator.set_route(OTHER, override="us")
        for origin in (client.main, client.regional):
            for routing in (None, "us", "bogus"):
                response = await client.protected(origin, routing=routing)
                assert response.status_code == 200, response.text

    async def test_assertion_credentials_are_routed_by_their_identity(self, client: Client) -> None:
        """An AgentAssertion is held to the route of its identity's account."""
        authorization = await client.assertion(DEV_TOKEN)
        origin = client.emulator.set_route(DEV, override="us_cr")
        misdirected = await client.protected(
            client.main, routing="us_cr", authorization=authorization
        )
        assert (misdirected.status_code, reason(misdirected)) == (421, "wrong_origin")
        missing = await client.protected(origin, authorization=authorization)
        assert (missing.status_code, reason(missing)) == (403, "missing_routing_header")
        accepted = await client.protected(origin, routing="us_cr", authorization=authorization)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["scheme"] == "AgentAssertion"

    async def test_credential_is_checked_before_the_route(self, client: Client) -> None:
        """An unknown credential is a 401 whatever the origin: the route needs a known account."""
        client.emulator.set_route(DEV, override="us")
        response = await client.protected(client.main, authorization="Bearer not-a-known-token")
        assert (response.status_code, reason(response)) == (401, "unknown_token")


class TestRedirect:
    async def test_protected_can_answer_a_redirect(self, client: Client) -> None:
        """A 307 fault with ``location`` redirects a routed call (for "never follow redirects")."""
        origin = client.emulator.set_route(DEV, override="us")
        target = f"{client.main}{PROTECTED_PATH}"
        client.emulator.inject_fault("protected", status=307, location=target)
        response = await client.protected(origin, routing="us")
        assert response.status_code == 307
        assert response.headers["Location"] == target
        assert (await client.protected(origin, routing="us")).status_code == 200

    async def test_redirect_over_http(self, client: Client) -> None:
        """The fault's ``location`` member works over ``POST /_emulator/faults`` too."""
        control = await client.http.post(
            f"{client.main}/_emulator/faults",
            json={"endpoint": "protected", "status": 308, "location": "https://elsewhere.example/"},
        )
        assert control.status_code == 200, control.text
        response = await client.protected(client.main)
        assert (response.status_code, response.headers["Location"]) == (
            308,
            "https://elsewhere.example/",
        )

    async def test_location_needs_a_status(self, client: Client) -> None:
        """A ``location`` without a status is refused, in Python and over HTTP."""
        with pytest.raises(ValueError, match="location"):
            client.emulator.inject_fault("protected", delay_seconds=0.1, location="http://x/")
        control = await client.http.post(
            f"{client.main}/_emulator/faults",
            json={"endpoint": "protected", "delay_seconds": 0.1, "location": "http://x/"},
        )
        assert (control.status_code, reason(control)) == (400, "invalid_fault")


class TestHttpControls:
    async def test_set_list_and_clear_a_route(self, client: Client) -> None:
        """``POST``, ``GET`` and ``DELETE /_emulator/routes`` drive the routes from another process."""
        routes = f"{client.main}/_emulator/routes"
        created = await client.http.post(routes, json={"account_id": DEV, "origin": None})
        assert created.status_code == 200, created.text
        assert created.json() == {
            "ok": True,
            "account_id": DEV,
            "override": "us",
            "origin": client.regional,
        }
        listed = await client.http.get(routes)
        assert listed.json() == {
            "regional_origin": client.regional,
            "routes": [{"account_id": DEV, "override": "us", "origin": client.regional}],
        }
        assert entry(await client.check())["workspace_backend_origin"] == client.regional
        refused = await client.protected(client.main, routing="us")
        assert refused.status_code == 421
        cleared = await client.http.delete(f"{routes}/{DEV}")
        assert cleared.json() == {"ok": True, "account_id": DEV, "cleared": True}
        again = await client.http.delete(f"{routes}/{DEV}")
        assert again.json()["cleared"] is False
        assert (await client.protected(client.main, routing="us")).status_code == 200

    async def test_verbatim_origin_and_override(self, client: Client) -> None:
        """An explicit origin and override are answered as configured."""
        created = await client.http.post(
            f"{client.main}/_emulator/routes",
            json={"account_id": DEV, "override": "us_cr", "origin": "https://host/path"},
        )
        assert created.json()["origin"] == "https://host/path"
        found = entry(await client.check())
        assert (found["workspace_backend_origin"], found["account_routing_override"]) == (
            "https://host/path",
            "us_cr",
        )

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            ({"account_id": DEV, "override": "eu"}, "invalid_route"),
            ({"account_id": DEV, "origin": 42}, "invalid_route"),
            ({"account_id": DEV, "override": None}, "invalid_route"),
            ({"account_id": DEV, "colour": "blue"}, "invalid_route"),
            ({"override": "us"}, "invalid_field"),
            ([DEV], "invalid_route"),
        ],
    )
    async def test_invalid_route_is_refused(
        self, client: Client, body: object, expected: str
    ) -> None:
        """A malformed route is a JSON 400 and changes nothing."""
        response = await client.http.post(f"{client.main}/_emulator/routes", json=body)
        assert (response.status_code, reason(response)) == (400, expected)
        assert client.emulator.routes() == {}

    async def test_queue_a_raw_body(self, client: Client) -> None:
        """``POST /_emulator/routes/body`` queues raw discovery answers for one account."""
        body = accounts_check_body(DEV, origin=client.regional, override="eu")
        control = await client.http.post(
            f"{client.main}/_emulator/routes/body",
            json={"account_id": DEV, "body": body, "count": 2},
        )
        assert control.json() == {"ok": True, "account_id": DEV, "pending": 2}
        assert (await client.check()).json() == body
        assert (await client.check()).json() == body
        assert entry(await client.check())["account_routing_override"] == NO_CONSTRAINT

    @pytest.mark.parametrize(
        "body",
        [
            {"account_id": DEV},
            {"account_id": DEV, "body": {}, "count": 0},
            {"account_id": DEV, "body": {}, "count": "1"},
            {"account_id": DEV, "body": {}, "extra": 1},
        ],
    )
    async def test_invalid_raw_body_is_refused(self, client: Client, body: object) -> None:
        """A raw answer without a body, with a bad count or an unknown member: 400."""
        response = await client.http.post(f"{client.main}/_emulator/routes/body", json=body)
        assert (response.status_code, reason(response)) == (400, "invalid_route")
        assert entry(await client.check())["id"] == DEV
