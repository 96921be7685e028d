"""The control-plane emulator over real loopback HTTP: every check of protocol §12, faults, controls."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from broker.core.protocol.assertion import AssertionEnvelope, build_assertion
from broker.core.protocol.keys import AgentKey
from broker.core.protocol.task_id import task_id_from_response
from broker.core.protocol.task_registration import task_registration_body
from broker.events import Event
from cb_emulator import Emulator, EmulatorAccount
from tests.conftest import ManualClock
from tests.fixtures.emulator import StartEmulator

pytestmark = pytest.mark.integration

DEV_TOKEN = "dev-access-token"
OTHER_TOKEN = "other-access-token"
TOKENS = {
    DEV_TOKEN: EmulatorAccount("acct-dev", "user-dev"),
    OTHER_TOKEN: EmulatorAccount("acct-other", "user-other", fedramp=True),
}
ABOM = {"agent_version": "0.1.0", "agent_harness_id": "broker", "running_location": "test-linux"}


def new_key() -> AgentKey:
    return AgentKey.generate(os.urandom(64))


@dataclass(frozen=True)
class Agent:
    """A registered identity: its key and runtime id."""

    key: AgentKey
    runtime_id: str


class Driver:
    """Speaks the protocol to one emulator with raw httpx requests, as a client would."""

    def __init__(self, http: httpx.AsyncClient, emulator: Emulator) -> None:
        self.http = http
        self.emulator = emulator
        self.base = emulator.base_url
        self.biscuits: list[str] = []

    def task_url(self, runtime_id: str) -> str:
        return f"{self.base}/v1/agent/{runtime_id}/task/register"

    async def mint(self, url: str, *, method: str = "POST", token: str = DEV_TOKEN) -> str:
        response = await self.http.get(
            f"{self.base}/authenticate_app_v2",
            headers={
                "Authorization": f"Bearer {token}",
                "X-Original-Method": method,
                "X-Original-Url": url,
            },
        )
        assert response.status_code == 200, response.text
        biscuit = response.headers["x-openai-authorization"]
        self.biscuits.append(biscuit)
        return biscuit

    async def post_identity(
        self, body: object, *, biscuit: str | None = None, token: str | None = None
    ) -> httpx.Response:
        headers = {}
        if biscuit is not None:
            headers["X-OpenAI-Authorization"] = biscuit
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.http.post(f"{self.base}/v1/agent/register", headers=headers, json=body)

    async def register_identity(
        self, key: AgentKey | None = None, *, token: str = DEV_TOKEN
    ) -> Agent:
        key = key or new_key()
        biscuit = await self.mint(f"{self.base}/v1/agent/register", token=token)
        response = await self.post_identity(
            {"abom": ABOM, "agent_public_key": key.public_key_ssh, "capabilities": []},
            biscuit=biscuit,
        )
        assert response.status_code == 200, response.text
        return Agent(key, response.json()["agent_runtime_id"])

    async def post_task(
        self,
        agent: Agent,
        *,
        now: datetime | None = None,
        body: object = None,
        biscuit: bool = True,
        token: str = DEV_TOKEN,
        signer: AgentKey | None = None,
    ) -> httpx.Response:
        url = self.task_url(agent.runtime_id)
        if body is None:
            moment = now or datetime.now(UTC)
            body = task_registration_body(signer or agent.key, agent.runtime_id, moment)
        headers = {"X-OpenAI-Authorization": await self.mint(url, token=token)} if biscuit else {}
        return await self.http.post(url, headers=headers, json=body)

    async def register_task(self, agent: Agent, *, now: datetime | None = None) -> str:
        response = await self.post_task(agent, now=now)
        assert response.status_code == 200, response.text
        return task_id_from_response(agent.key, response.json())

    async def protected(
        self, authorization: str | None, *, account: str | None = None, method: str = "GET"
    ) -> httpx.Response:
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        if account is not None:
            headers["ChatGPT-Account-ID"] = account
        return await self.http.request(method, f"{self.base}/protected", headers=headers)


def assertion(agent: Agent, task_id: str, now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return build_assertion(
        agent.key, agent.runtime_id, agent.runtime_id, task_id, moment
    ).header_value()


def signature_of(token: str) -> str:
    envelope = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return str(json.loads(envelope)["signature"])


def reason(response: httpx.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["ok"] is False
    return str(body["reason"])


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


@pytest.fixture(name="driver")
async def fixture_driver(http: httpx.AsyncClient, start_emulator: StartEmulator) -> Driver:
    return Driver(http, await start_emulator(tokens=TOKENS))


class TestBiscuit:
    async def test_mints_biscuit_in_response_header(self, driver: Driver) -> None:
        """A known Bearer with the original method and URL yields a biscuit header, never in the body (§4.1)."""
        biscuit = await driver.mint(f"{driver.base}/v1/agent/register")
        response = await driver.http.get(
            f"{driver.base}/authenticate_app_v2",
            headers={
                "Authorization": f"Bearer {DEV_TOKEN}",
                "X-Original-Method": "POST",
                "X-Original-Url": f"{driver.base}/v1/agent/register",
            },
        )
        assert biscuit
        assert biscuit not in response.text
        assert driver.emulator.stats().biscuits_minted == 2

    @pytest.mark.parametrize(
        ("authorization", "expected"),
        [
            (None, "missing"),
            ("Bearer nope-nope-nope", "unknown_token"),
            ("Basic abc", "unknown_token"),
        ],
    )
    async def test_refuses_unknown_or_missing_bearer(
        self, driver: Driver, authorization: str | None, expected: str
    ) -> None:
        """Minting needs a known Bearer token; anything else is a JSON 401."""
        headers = {
            "X-Original-Method": "POST",
            "X-Original-Url": f"{driver.base}/v1/agent/register",
        }
        if authorization:
            headers["Authorization"] = authorization
        response = await driver.http.get(f"{driver.base}/authenticate_app_v2", headers=headers)
        assert response.status_code == 401
        assert reason(response) == expected

    @pytest.mark.parametrize(
        "headers",
        [
            {"X-Original-Method": "POST"},
            {"X-Original-Url": "http://x/y"},
            {"X-Original-Method": "POST", "X-Original-Url": "relative/path"},
        ],
    )
    async def test_requires_original_method_and_url(
        self, driver: Driver, headers: dict[str, str]
    ) -> None:
        """A biscuit must name the call it authorises: method and absolute URL (§4.1)."""
        response = await driver.http.get(
            f"{driver.base}/authenticate_app_v2",
            headers={"Authorization": f"Bearer {DEV_TOKEN}", **headers},
        )
        assert response.status_code == 400
        assert reason(response) == "invalid_header"

    async def test_biscuit_is_single_use(self, driver: Driver) -> None:
        """A biscuit authorises one call; replaying it is refused."""
        key = new_key()
        body = {"abom": ABOM, "agent_public_key": key.public_key_ssh, "capabilities": []}
        biscuit = await driver.mint(f"{driver.base}/v1/agent/register")
        assert (await driver.post_identity(body, biscuit=biscuit)).status_code == 200
        replay = await driver.post_identity(body, biscuit=biscuit)
        assert replay.status_code == 401
        assert reason(replay) == "unknown_biscuit"

    @pytest.mark.parametrize(
        ("method", "path"), [("POST", "/v1/agent/other"), ("GET", "/v1/agent/register")]
    )
    async def test_biscuit_is_bound_to_method_and_url(
        self, driver: Driver, method: str, path: str
    ) -> None:
        """A biscuit minted for another method or URL does not authorise this call (§4.1)."""
        biscuit = await driver.mint(driver.base + path, method=method)
        body = {"abom": ABOM, "agent_public_key": new_key().public_key_ssh, "capabilities": []}
        response = await driver.post_identity(body, biscuit=biscuit)
        assert response.status_code == 401
        assert reason(response) == "biscuit_mismatch"

    async def test_biscuit_expires_on_the_emulator_clock(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator, clock: ManualClock
    ) -> None:
        """A biscuit older than its lifetime (60 s) is refused."""
        driver = Driver(http, await start_emulator(clock=clock))
        biscuit = await driver.mint(f"{driver.base}/v1/agent/register")
        clock.advance(61)
        body = {"abom": ABOM, "agent_public_key": new_key().public_key_ssh, "capabilities": []}
        response = await driver.post_identity(body, biscuit=biscuit)
        assert response.status_code == 401
        assert reason(response) == "biscuit_expired"


class TestIdentityRegistration:
    async def test_biscuit_authorised_registration(self, driver: Driver) -> None:
        """A G1 registration returns a fresh runtime id bound to the biscuit's account (§4.1)."""
        agent = await driver.register_identity(token=OTHER_TOKEN)
        assert agent.runtime_id.startswith("agent-")
        [identity] = driver.emulator.identities()
        assert (identity.agent_runtime_id, identity.account_id) == (agent.runtime_id, "acct-other")
        assert (identity.authorised_by, identity.capabilities) == ("biscuit", ())

    async def test_bearer_authorised_registration(self, driver: Driver) -> None:
        """A G4 registration with Bearer, ``ttl: null`` and unknown fields is accepted (§4.3, §12.1)."""
        body = {
            "abom": ABOM,
            "agent_public_key": new_key().public_key_ssh,
            "capabilities": ["responsesapi"],
            "ttl": None,
            "something_new": {"x": 1},
        }
        response = await driver.http.post(
            f"{driver.base}/v1/agent/register",
            headers={"Authorization": f"Bearer {DEV_TOKEN}", "X-OpenAI-Fedramp": "true"},
            json=body,
        )
        assert response.status_code == 200
        [identity] = driver.emulator.identities()
        assert identity.authorised_by == "bearer"
        assert identity.capabilities == ("responsesapi",)
        assert identity.fedramp_header is True

    async def test_registration_without_credential_is_refused(self, driver: Driver) -> None:
        """Neither biscuit nor Bearer: 401 and nothing registered."""
        body = {"abom": ABOM, "agent_public_key": new_key().public_key_ssh, "capabilities": []}
        response = await driver.post_identity(body)
        assert response.status_code == 401
        assert driver.emulator.identities() == []

    @pytest.mark.parametrize(
        ("change", "expected"),
        [
            ({"agent_public_key": "ssh-rsa AAAAB3NzaC1yc2E="}, "invalid_public_key"),
            ({"agent_public_key": "ssh-ed25519 not-base64!"}, "invalid_public_key"),
            ({"agent_public_key": 42}, "invalid_field"),
            ({"abom": ["not", "an", "object"]}, "invalid_field"),
            ({"capabilities": "responsesapi"}, "invalid_field"),
            ({"capabilities": [1, 2]}, "invalid_field"),
            ({"ttl": "forever"}, "invalid_field"),
        ],
    )
    async def test_malformed_fields_are_400(
        self, driver: Driver, change: dict[str, object], expected: str
    ) -> None:
        """A bad public key or a field of the wrong type is a JSON 400 naming the problem (§12.1)."""
        body = {
            "abom": ABOM,
            "agent_public_key": new_key().public_key_ssh,
            "capabilities": [],
            **change,
        }
        response = await driver.post_identity(body, token=DEV_TOKEN)
        assert response.status_code == 400
        assert reason(response) == expected

    async def test_body_that_is_not_an_object_is_400(self, driver: Driver) -> None:
        """A JSON array body is refused with 400."""
        response = await driver.post_identity(["abom"], token=DEV_TOKEN)
        assert response.status_code == 400
        assert reason(response) == "invalid_body"


class TestTaskRegistration:
    async def test_sealed_task_id_opens_with_the_identity_key(self, driver: Driver) -> None:
        """The task id comes back sealed to the identity's X25519 key (§5.3, §12.2)."""
        agent = await driver.register_identity()
        response = await driver.post_task(agent)
        assert set(response.json()) == {"encrypted_task_id"}
        task_id = task_id_from_response(agent.key, response.json())
        assert task_id.startswith("task-")
        assert [(t.agent_runtime_id, t.task_id) for t in driver.emulator.tasks()] == [
            (agent.runtime_id, task_id)
        ]

    async def test_plaintext_task_ids(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator
    ) -> None:
        """With ``plaintext_task_ids`` the response carries ``task_id`` (§5.2)."""
        driver = Driver(http, await start_emulator(plaintext_task_ids=True))
        agent = await driver.register_identity()
        body = (await driver.post_task(agent)).json()
        assert set(body) == {"task_id"}
        assert body["task_id"] == driver.emulator.tasks()[0].task_id

    async def test_bad_signature_is_401(self, driver: Driver) -> None:
        """A body signed by another key is refused (§12.2)."""
        agent = await driver.register_identity()
        response = await driver.post_task(agent, signer=new_key())
        assert response.status_code == 401
        assert reason(response) == "bad_signature"
        assert driver.emulator.tasks() == []

    @pytest.mark.parametrize("offset", [-301, 301])
    async def test_timestamp_outside_skew_is_401(
        self,
        http: httpx.AsyncClient,
        start_emulator: StartEmulator,
        clock: ManualClock,
        offset: int,
    ) -> None:
        """A signed timestamp more than 300 s from the emulator clock is stale (§12.2)."""
        driver = Driver(http, await start_emulator(clock=clock))
        agent = await driver.register_identity()
        response = await driver.post_task(agent, now=clock.now() + timedelta(seconds=offset))
        assert response.status_code == 401
        assert reason(response) == "stale_timestamp"

    async def test_timestamp_inside_skew_is_accepted(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator, clock: ManualClock
    ) -> None:
        """A timestamp 299 s old is still inside the window."""
        driver = Driver(http, await start_emulator(clock=clock))
        agent = await driver.register_identity()
        response = await driver.post_task(agent, now=clock.now() - timedelta(seconds=299))
        assert response.status_code == 200

    async def test_unknown_runtime_is_404(self, driver: Driver) -> None:
        """A task for a runtime id the emulator never issued is 404 (§12.2)."""
        response = await driver.post_task(Agent(new_key(), "agent-unknown"))
        assert response.status_code == 404
        assert reason(response) == "unknown_runtime"

    async def test_biscuit_is_required_by_default(self, driver: Driver) -> None:
        """G1 task registration without a biscuit is refused (§5.1)."""
        agent = await driver.register_identity()
        response = await driver.post_task(agent, biscuit=False)
        assert response.status_code == 401
        assert reason(response) == "biscuit_required"

    async def test_no_credential_accepted_when_biscuit_not_required(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator
    ) -> None:
        """G2-G4 send no credential: the signature alone suffices when biscuits are not required (§5.1)."""
        driver = Driver(http, await start_emulator(require_biscuit=False))
        agent = await driver.register_identity()
        response = await driver.post_task(agent, biscuit=False)
        assert response.status_code == 200

    async def test_biscuit_of_another_account_is_403(self, driver: Driver) -> None:
        """A biscuit minted by another account cannot register tasks for this identity."""
        agent = await driver.register_identity(token=DEV_TOKEN)
        response = await driver.post_task(agent, token=OTHER_TOKEN)
        assert response.status_code == 403
        assert reason(response) == "account_mismatch"

    @pytest.mark.parametrize(
        "body",
        [
            {"timestamp": 5, "signature": "x"},
            {"timestamp": "yesterday", "signature": "AAAA"},
            {"timestamp": "2026-04-13T12:00:00Z", "signature": "%%%"},
            {},
        ],
    )
    async def test_malformed_body_is_400(self, driver: Driver, body: dict[str, object]) -> None:
        """Missing, mistyped or unparseable fields are a JSON 400."""
        agent = await driver.register_identity()
        response = await driver.post_task(agent, body=body)
        assert response.status_code == 400
        assert reason(response) == "invalid_field"


class TestProtected:
    async def test_valid_assertion_is_accepted(self, driver: Driver) -> None:
        """A fresh assertion for a live task of its runtime is accepted, with the right account (§12.3)."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        for method in ("GET", "POST"):
            response = await driver.protected(
                assertion(agent, task_id), account="acct-dev", method=method
            )
            assert response.status_code == 200
            assert response.json() == {
                "ok": True,
                "scheme": "AgentAssertion",
                "account_id": "acct-dev",
                "agent_runtime_id": agent.runtime_id,
                "task_id": task_id,
            }
        assert driver.emulator.stats().verifications_ok == 2

    async def test_revoked_task_is_refused(self, driver: Driver) -> None:
        """After revocation the same task's assertions are refused with ``task_revoked``."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        driver.emulator.revoke_task(task_id)
        response = await driver.protected(assertion(agent, task_id))
        assert response.status_code == 401
        assert reason(response) == "task_revoked"
        assert driver.emulator.tasks()[0].revoked is True

    async def test_revocation_over_http(self, driver: Driver) -> None:
        """``POST /_emulator/revoke`` revokes as the Python control does."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        control = await driver.http.post(
            f"{driver.emulator.root_url}/_emulator/revoke", json={"task_id": task_id}
        )
        assert control.status_code == 200
        assert reason(await driver.protected(assertion(agent, task_id))) == "task_revoked"

    async def test_tampered_assertion_is_refused(self, driver: Driver) -> None:
        """Changing a signed field invalidates the signature (§6.1)."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        other_task = await driver.register_task(agent)
        genuine = build_assertion(
            agent.key, agent.runtime_id, agent.runtime_id, task_id, datetime.now(UTC)
        )
        forged = AssertionEnvelope(
            agent_runtime_id=genuine.agent_runtime_id,
            task_id=other_task,
            timestamp=genuine.timestamp,
            signature=genuine.signature,
        )
        response = await driver.protected(forged.header_value())
        assert response.status_code == 401
        assert reason(response) == "bad_signature"

    async def test_unknown_task_is_refused(self, driver: Driver) -> None:
        """A correctly signed assertion naming a task never registered is refused."""
        agent = await driver.register_identity()
        response = await driver.protected(assertion(agent, "task-never-registered"))
        assert reason(response) == "unknown_task"

    async def test_task_of_another_runtime_is_refused(self, driver: Driver) -> None:
        """An identity cannot use a task registered by another identity."""
        owner = await driver.register_identity()
        intruder = await driver.register_identity()
        task_id = await driver.register_task(owner)
        response = await driver.protected(assertion(intruder, task_id))
        assert reason(response) == "task_runtime_mismatch"

    async def test_stale_assertion_is_refused(
        self, http: httpx.AsyncClient, start_emulator: StartEmulator, clock: ManualClock
    ) -> None:
        """An assertion timestamped outside the skew window is refused (§12.3)."""
        driver = Driver(http, await start_emulator(clock=clock))
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent, now=clock.now())
        header = assertion(agent, task_id, clock.now())
        clock.advance(301)
        response = await driver.protected(header)
        assert reason(response) == "stale_timestamp"

    @pytest.mark.parametrize(
        ("authorization", "expected"),
        [
            (None, "missing"),
            ("AgentAssertion !!!not-base64!!!", "malformed"),
            ("AgentAssertion eyJhIjoxfQ", "malformed"),
            ("Basic dXNlcjpwYXNz", "unsupported_scheme"),
            ("Bearer unknown-token-123", "unknown_token"),
        ],
    )
    async def test_bad_credentials_are_refused(
        self, driver: Driver, authorization: str | None, expected: str
    ) -> None:
        """Every refusal is a JSON 401 with a machine-readable reason."""
        response = await driver.protected(authorization)
        assert response.status_code == 401
        assert reason(response) == expected
        assert driver.emulator.stats().verifications_failed == 1

    async def test_bearer_is_accepted(self, driver: Driver) -> None:
        """A known Bearer token is accepted with scheme Bearer (the fallback of §8.1)."""
        response = await driver.protected(f"Bearer {OTHER_TOKEN}", account="acct-other")
        assert response.status_code == 200
        assert response.json() == {"ok": True, "scheme": "Bearer", "account_id": "acct-other"}

    async def test_account_header_must_match_identity(self, driver: Driver) -> None:
        """``ChatGPT-Account-ID`` naming another account than the identity's is refused (§6.2)."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        response = await driver.protected(assertion(agent, task_id), account="acct-other")
        assert reason(response) == "account_mismatch"


class TestMalformedRequests:
    @pytest.mark.parametrize(
        "path",
        [
            "/backend-api/v1/agent/register",
            "/backend-api/v1/agent/agent-x/task/register",
            "/_emulator/faults",
            "/_emulator/revoke",
            "/_emulator/reset",
        ],
    )
    async def test_malformed_json_is_400(self, driver: Driver, path: str) -> None:
        """Every JSON endpoint answers undecodable JSON with a JSON 400, never a 500."""
        response = await driver.http.post(
            driver.emulator.root_url + path,
            content=b'{"abom": ',
            headers={"Authorization": f"Bearer {DEV_TOKEN}", "Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert reason(response) == "malformed_json"

    async def test_deeply_nested_json_is_400(self, driver: Driver) -> None:
        """JSON nested past the parser's recursion limit is a 400, not a crash."""
        response = await driver.http.post(
            f"{driver.base}/v1/agent/register",
            content=b"[" * 100_000,
            headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        )
        assert response.status_code == 400
        assert reason(response) == "malformed_json"

    async def test_oversized_body_is_413(self, driver: Driver) -> None:
        """A body above 1 MiB is refused with a JSON 413."""
        response = await driver.http.post(
            f"{driver.base}/v1/agent/register", content=b" " * (1024 * 1024 + 1)
        )
        assert response.status_code == 413
        assert reason(response) == "body_too_large"

    async def test_unknown_path_and_method_are_json(self, driver: Driver) -> None:
        """Routing errors are JSON too: 404 for an unknown path, 405 for a wrong method."""
        missing = await driver.http.get(f"{driver.base}/nothing-here")
        wrong = await driver.http.delete(f"{driver.base}/v1/agent/register")
        assert (missing.status_code, reason(missing)) == (404, "not_found")
        assert (wrong.status_code, reason(wrong)) == (405, "method_not_allowed")


class TestFaults:
    async def test_status_fault_applies_to_the_next_n_requests(self, driver: Driver) -> None:
        """``inject_fault(status=503, count=2)`` fails two requests, then the endpoint recovers."""
        driver.emulator.inject_fault("protected", status=503, count=2)
        statuses = [(await driver.protected(f"Bearer {DEV_TOKEN}")).status_code for _ in range(3)]
        assert statuses == [503, 503, 200]
        stats = driver.emulator.stats()
        assert (stats.faults_applied, stats.requests_by_endpoint["protected"]) == (2, 3)

    async def test_fault_over_http_control(self, driver: Driver) -> None:
        """``POST /_emulator/faults`` queues the same fault from another process."""
        control = await driver.http.post(
            f"{driver.emulator.root_url}/_emulator/faults",
            json={"endpoint": "protected", "status": 429, "count": 1},
        )
        assert control.status_code == 200
        assert (await driver.protected(f"Bearer {DEV_TOKEN}")).status_code == 429
        assert (await driver.protected(f"Bearer {DEV_TOKEN}")).status_code == 200

    async def test_fault_only_hits_its_endpoint(self, driver: Driver) -> None:
        """A fault for one endpoint leaves the others alone; ``*`` hits any."""
        driver.emulator.inject_fault("register_task", status=500)
        assert (await driver.protected(f"Bearer {DEV_TOKEN}")).status_code == 200
        driver.emulator.inject_fault("*", status=502)
        assert (await driver.protected(f"Bearer {DEV_TOKEN}")).status_code == 502

    async def test_delay_fault_holds_the_response(self, driver: Driver) -> None:
        """A delay longer than the client's read timeout makes the client time out."""
        driver.emulator.inject_fault("protected", delay_seconds=30)
        with pytest.raises(httpx.ReadTimeout):
            await driver.http.get(
                f"{driver.base}/protected",
                headers={"Authorization": f"Bearer {DEV_TOKEN}"},
                timeout=httpx.Timeout(5.0, read=0.2),
            )
        assert (await driver.protected(f"Bearer {DEV_TOKEN}")).status_code == 200

    async def test_delay_alone_passes_the_request_on(self, driver: Driver) -> None:
        """A delay without a status ends in the real handler's answer."""
        driver.emulator.inject_fault("protected", delay_seconds=0.01)
        response = await driver.protected(f"Bearer {DEV_TOKEN}")
        assert response.json()["scheme"] == "Bearer"
        assert driver.emulator.stats().faults_applied == 1

    async def test_drop_connection(self, driver: Driver) -> None:
        """A dropped connection ends without any response."""
        driver.emulator.inject_fault("protected", drop_connection=True)
        with pytest.raises(httpx.RemoteProtocolError):
            await driver.protected(f"Bearer {DEV_TOKEN}")
        assert (await driver.protected(f"Bearer {DEV_TOKEN}")).status_code == 200

    async def test_reset_connection_over_http_control(self, driver: Driver) -> None:
        """``reset_connection`` aborts the connection with a TCP reset."""
        await driver.http.post(
            f"{driver.emulator.root_url}/_emulator/faults",
            json={"endpoint": "protected", "reset_connection": True},
        )
        with pytest.raises(httpx.ReadError):
            await driver.protected(f"Bearer {DEV_TOKEN}")

    async def test_custom_raw_body(self, driver: Driver) -> None:
        """A fault can answer any raw body and content type (to exercise client parsers)."""
        driver.emulator.inject_fault(
            "protected", body="<html>oops</html>", content_type="text/html"
        )
        response = await driver.protected(f"Bearer {DEV_TOKEN}")
        assert (response.status_code, response.text) == (200, "<html>oops</html>")
        assert response.headers["Content-Type"].startswith("text/html")

    @pytest.mark.parametrize(
        "fault",
        [
            {"endpoint": "nowhere", "status": 503},
            {"endpoint": "protected"},
            {"endpoint": "protected", "status": "503"},
            {"endpoint": "protected", "status": 503, "count": 0},
            {"endpoint": "protected", "drop_connection": True, "status": 503},
            {"endpoint": "protected", "status": 503, "surprise": 1},
            ["protected"],
        ],
    )
    async def test_invalid_fault_is_400(self, driver: Driver, fault: object) -> None:
        """A fault that is malformed or would do nothing is refused with a JSON 400."""
        response = await driver.http.post(
            f"{driver.emulator.root_url}/_emulator/faults", json=fault
        )
        assert response.status_code == 400
        assert reason(response) == "invalid_fault"

    def test_invalid_fault_in_python_raises(self, emulator: Emulator) -> None:
        """The Python control validates like the HTTP one."""
        with pytest.raises(ValueError, match="count"):
            emulator.inject_fault("protected", status=503, count=0)


class TestControls:
    async def test_stats_count_a_whole_flow(self, driver: Driver) -> None:
        """Counters follow a G1 flow; HTTP and Python stats agree."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        await driver.protected(assertion(agent, task_id))
        await driver.protected("Bearer wrong-token-123")
        expected = {
            "biscuits_minted": 2,
            "identity_registrations": 1,
            "task_registrations": 1,
            "verifications_ok": 1,
            "verifications_failed": 1,
            "faults_applied": 0,
            "requests_by_endpoint": {
                "authenticate": 2,
                "register_identity": 1,
                "register_task": 1,
                "protected": 2,
                "authapi_register_identity": 0,
                "authapi_register_task": 0,
                "jwks": 0,
            },
            "task_registrations_with_credential": 0,
            "jwts_minted": 0,
        }
        assert driver.emulator.stats().to_json() == expected
        over_http = await driver.http.get(f"{driver.emulator.root_url}/_emulator/stats")
        assert over_http.json() == expected

    async def test_reset_clears_counters_and_faults_but_keeps_state(self, driver: Driver) -> None:
        """A plain reset forgets counters and faults; identities and tasks survive."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        driver.emulator.inject_fault("protected", status=503)
        driver.emulator.reset()
        assert driver.emulator.stats().biscuits_minted == 0
        assert (await driver.protected(assertion(agent, task_id))).status_code == 200

    async def test_reset_with_state_over_http(self, driver: Driver) -> None:
        """``POST /_emulator/reset {"state": true}`` also forgets identities and tasks."""
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        control = await driver.http.post(
            f"{driver.emulator.root_url}/_emulator/reset", json={"state": True}
        )
        assert control.status_code == 200
        assert driver.emulator.tasks() == []
        assert reason(await driver.protected(assertion(agent, task_id))) == "unknown_runtime"

    async def test_tasks_listing_over_http(self, driver: Driver) -> None:
        """``GET /_emulator/tasks`` lists each task with its runtime and revocation state."""
        agent = await driver.register_identity()
        first = await driver.register_task(agent)
        second = await driver.register_task(agent)
        driver.emulator.revoke_task(second)
        listing = (await driver.http.get(f"{driver.emulator.root_url}/_emulator/tasks")).json()
        assert listing == [
            {"agent_runtime_id": agent.runtime_id, "task_id": first, "revoked": False},
            {"agent_runtime_id": agent.runtime_id, "task_id": second, "revoked": True},
        ]

    async def test_revoking_an_unknown_task(self, driver: Driver) -> None:
        """Revoking a task that does not exist is a 404 over HTTP and a KeyError in Python."""
        response = await driver.http.post(
            f"{driver.emulator.root_url}/_emulator/revoke", json={"task_id": "task-none"}
        )
        assert (response.status_code, reason(response)) == (404, "unknown_task")
        with pytest.raises(KeyError):
            driver.emulator.revoke_task("task-none")


class TestLifecycle:
    async def test_base_url_and_stop(self) -> None:
        """``start`` returns the /backend-api base URL; after ``stop`` nothing listens."""
        emulator = Emulator()
        async with emulator:
            url = await emulator.start()
            assert url == emulator.base_url
            assert url.startswith("http://127.0.0.1:")
            assert url.endswith("/backend-api")
        with pytest.raises(RuntimeError):
            _ = emulator.base_url
        async with httpx.AsyncClient(trust_env=False) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{url}/protected")


class TestLogging:
    async def test_one_event_per_request_without_secrets(
        self,
        log_output: list[dict[str, object]],
        http: httpx.AsyncClient,
        start_emulator: StartEmulator,
    ) -> None:
        """Each request logs method, path, status and duration; no token, biscuit or assertion (§11.3)."""
        emulator = await start_emulator()
        driver = Driver(http, emulator)
        agent = await driver.register_identity()
        task_id = await driver.register_task(agent)
        header = assertion(agent, task_id)
        await driver.protected(header)
        started = [e for e in log_output if e["event"] == Event.EMULATOR_STARTED]
        assert started
        assert started[0]["url"] == emulator.base_url
        requests = [e for e in log_output if e["event"] == Event.EMULATOR_REQUEST]
        assert [(e["endpoint"], e["status"]) for e in requests] == [
            ("authenticate", 200),
            ("register_identity", 200),
            ("authenticate", 200),
            ("register_task", 200),
            ("protected", 200),
        ]
        assert all(isinstance(e["duration_ms"], float) and e["method"] for e in requests)
        dumped = json.dumps(log_output, default=str)
        token = header.split(" ", 1)[1]
        for secret in (DEV_TOKEN, token, signature_of(token), *driver.biscuits):
            assert secret not in dumped

    async def test_rejection_reason_is_logged(
        self, log_output: list[dict[str, object]], driver: Driver
    ) -> None:
        """A refusal's machine reason is part of its request event."""
        await driver.protected("Bearer nope-nope-nope")
        [event] = [e for e in log_output if e["event"] == Event.EMULATOR_REQUEST]
        assert (event["status"], event["reason"]) == (401, "unknown_token")
