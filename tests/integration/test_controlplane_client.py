"""ControlPlaneClient against the real emulator over loopback HTTP: both profiles, every failure mode."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from broker.adapters.controlplane import (
    ControlPlaneClient,
    ControlPlaneTimeouts,
    Profile,
    RetryPolicy,
    build_http_client,
)
from broker.core.protocol.keys import AgentKey
from broker.core.protocol.task_id import task_id_from_response
from broker.core.protocol.task_registration import task_registration_body
from broker.errors import ControlPlaneError, ControlPlaneUnavailable, NoBearerToken, UrlError
from broker.events import Event
from broker.secret import Secret
from cb_emulator import Emulator, EmulatorAccount
from tests.conftest import free_port
from tests.fixtures.emulator import StartEmulator

pytestmark = pytest.mark.integration

TOKEN = "s3cr3t-bearer-token-value-0123456789"
BEARER = Secret(TOKEN)
TOKENS = {TOKEN: EmulatorAccount("acct-dev", "user-dev")}
ABOM = {"agent_version": "0.1.0", "agent_harness_id": "broker", "running_location": "test-linux"}
USER_AGENT = "credential-broker-tests/1.0"
FAST_RETRY = RetryPolicy(
    attempts=3, deadline=10.0, wait_initial=0.001, wait_max=0.005, wait_jitter=0.001
)
FAST_TIMEOUTS = ControlPlaneTimeouts(
    connect=1.0,
    read=0.3,
    write=1.0,
    pool=1.0,
    mint_biscuit=2.0,
    register_identity=2.0,
    register_task_chatgpt_backend=2.0,
    register_task_authapi=2.0,
)
REQUEST_ID = re.compile(r"codex-agent-identity-[A-Za-z0-9_-]{22}")


@dataclass(frozen=True)
class Sent:
    """One request as it left the client (recorded by an httpx event hook)."""

    method: str
    url: str
    headers: httpx.Headers
    body: Any


MakeClient = Callable[..., ControlPlaneClient]


def new_key() -> AgentKey:
    return AgentKey.generate(os.urandom(64))


def requests_to(emulator: Emulator, endpoint: str) -> int:
    return emulator.stats().requests_by_endpoint[endpoint]


def recorder(sent: list[Sent]) -> Callable[[httpx.Request], Awaitable[None]]:
    """An httpx request hook that records each request as it leaves the client."""

    async def record(request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else None
        sent.append(Sent(request.method, str(request.url), request.headers.copy(), body))

    return record


@pytest.fixture(name="sent")
def fixture_sent() -> list[Sent]:
    return []


@pytest.fixture(name="http")
async def fixture_http(sent: list[Sent]) -> AsyncIterator[httpx.AsyncClient]:
    hooks = {"request": [recorder(sent)]}
    async with httpx.AsyncClient(trust_env=False, event_hooks=hooks) as client:
        yield client


@pytest.fixture(name="g1")
async def fixture_g1(start_emulator: StartEmulator) -> Emulator:
    """An emulator as a G1 ChatGPT backend: biscuits required, sealed task ids."""
    return await start_emulator(tokens=TOKENS)


@pytest.fixture(name="g4")
async def fixture_g4(start_emulator: StartEmulator) -> Emulator:
    """An emulator as a G4 AuthAPI: task registration without a credential."""
    return await start_emulator(tokens=TOKENS, require_biscuit=False)


@pytest.fixture(name="make_client")
def fixture_make_client(http: httpx.AsyncClient) -> MakeClient:
    def make(target: Emulator | str, profile: Profile, **kwargs: Any) -> ControlPlaneClient:
        base = target if isinstance(target, str) else target.base_url
        if profile is Profile.AUTHAPI:
            kwargs.setdefault("authapi_base_url", base)
        kwargs.setdefault("timeouts", FAST_TIMEOUTS)
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("user_agent", USER_AGENT)
        return ControlPlaneClient(http, base_url=base, profile=profile, **kwargs)

    return make


async def register_identity(client: ControlPlaneClient, key: AgentKey | None = None) -> str:
    key = key or new_key()
    return await client.register_identity(
        bearer=BEARER, agent_public_key=key.public_key_ssh, abom=ABOM
    )


async def register_task(client: ControlPlaneClient, key: AgentKey, runtime_id: str) -> str:
    body = task_registration_body(key, runtime_id, datetime.now(UTC))
    response = await client.register_task(bearer=BEARER, agent_runtime_id=runtime_id, body=body)
    return task_id_from_response(key, response)


class TestChatGptBackendProfile:
    async def test_identity_registration_uses_a_fresh_biscuit(
        self, g1: Emulator, make_client: MakeClient, sent: list[Sent]
    ) -> None:
        """G1 mints a biscuit for the exact registration URL, then registers with it and no Bearer (§4.1)."""
        key = new_key()
        runtime_id = await register_identity(make_client(g1, Profile.CHATGPT_BACKEND), key)
        [identity] = g1.identities()
        assert (identity.agent_runtime_id, identity.authorised_by) == (runtime_id, "biscuit")
        mint, register = sent
        assert (mint.method, mint.url) == ("GET", f"{g1.base_url}/authenticate_app_v2")
        assert mint.headers["Authorization"] == f"Bearer {TOKEN}"
        assert REQUEST_ID.fullmatch(mint.headers["X-Request-Id"])
        assert mint.headers["X-Original-Method"] == "POST"
        assert mint.headers["X-Original-Url"] == register.url == f"{g1.base_url}/v1/agent/register"
        assert "Authorization" not in register.headers
        assert register.headers["X-OpenAI-Authorization"]
        assert register.body == {
            "abom": ABOM,
            "agent_public_key": key.public_key_ssh,
            "capabilities": [],
        }

    async def test_every_request_carries_originator_and_user_agent(
        self, g1: Emulator, make_client: MakeClient, sent: list[Sent]
    ) -> None:
        """``originator`` and ``User-Agent`` go with every call, biscuit mints included (§3.5)."""
        client = make_client(g1, Profile.CHATGPT_BACKEND, originator="broker_tests")
        key = new_key()
        await register_task(client, key, await register_identity(client, key))
        assert len(sent) == 4
        for request in sent:
            assert request.headers["originator"] == "broker_tests"
            assert request.headers["User-Agent"] == USER_AGENT

    async def test_task_registration_mints_its_own_biscuit(
        self, g1: Emulator, make_client: MakeClient, sent: list[Sent]
    ) -> None:
        """Each task registration is authorised by a biscuit bound to its URL; the sealed id opens (§5)."""
        client = make_client(g1, Profile.CHATGPT_BACKEND)
        key = new_key()
        runtime_id = await register_identity(client, key)
        task_id = await register_task(client, key, runtime_id)
        assert [t.task_id for t in g1.tasks()] == [task_id]
        task_url = f"{g1.base_url}/v1/agent/{runtime_id}/task/register"
        assert sent[2].headers["X-Original-Url"] == sent[3].url == task_url
        assert "Authorization" not in sent[3].headers
        assert g1.stats().biscuits_minted == 2

    async def test_base_url_is_normalised(
        self, g1: Emulator, make_client: MakeClient, sent: list[Sent]
    ) -> None:
        """A trailing slash on the configured base is trimmed before URLs are built (§3.1)."""
        await register_identity(make_client(g1.base_url + "/", Profile.CHATGPT_BACKEND))
        assert sent[-1].url == f"{g1.base_url}/v1/agent/register"

    async def test_unknown_bearer_fails_the_biscuit_mint(
        self, start_emulator: StartEmulator, make_client: MakeClient
    ) -> None:
        """A Bearer the backend does not know fails at the mint, without retry or registration."""
        emulator = await start_emulator()
        with pytest.raises(ControlPlaneError) as caught:
            await register_identity(make_client(emulator, Profile.CHATGPT_BACKEND))
        assert type(caught.value) is ControlPlaneError
        assert (caught.value.operation, caught.value.status) == ("mint_biscuit", 401)
        assert requests_to(emulator, "authenticate") == 1
        assert requests_to(emulator, "register_identity") == 0


class TestAuthApiProfile:
    async def test_identity_registration_uses_bearer(
        self, g4: Emulator, make_client: MakeClient, sent: list[Sent]
    ) -> None:
        """G4 registers with Bearer, ``capabilities: ["responsesapi"]`` and an explicit ``ttl: null`` (§4.3)."""
        key = new_key()
        await register_identity(make_client(g4, Profile.AUTHAPI), key)
        [register] = sent
        assert register.headers["Authorization"] == f"Bearer {TOKEN}"
        assert "X-OpenAI-Fedramp" not in register.headers
        assert register.body == {
            "abom": ABOM,
            "agent_public_key": key.public_key_ssh,
            "capabilities": ["responsesapi"],
            "ttl": None,
        }
        [identity] = g4.identities()
        assert (identity.authorised_by, identity.capabilities) == ("bearer", ("responsesapi",))
        assert g4.stats().biscuits_minted == 0

    async def test_fedramp_header(
        self, g4: Emulator, make_client: MakeClient, sent: list[Sent]
    ) -> None:
        """A FedRAMP identity registers with ``X-OpenAI-Fedramp: true`` (§4.3)."""
        await register_identity(make_client(g4, Profile.AUTHAPI, fedramp=True))
        assert sent[0].headers["X-OpenAI-Fedramp"] == "true"
        assert g4.identities()[0].fedramp_header is True

    async def test_task_registration_sends_no_credential(
        self, g4: Emulator, make_client: MakeClient, sent: list[Sent]
    ) -> None:
        """G4 task registration carries no Authorization and no biscuit: the signature is the proof (§5.1)."""
        client = make_client(g4, Profile.AUTHAPI)
        key = new_key()
        task_id = await register_task(client, key, await register_identity(client, key))
        task_request = sent[-1]
        assert "Authorization" not in task_request.headers
        assert "X-OpenAI-Authorization" not in task_request.headers
        assert [t.task_id for t in g4.tasks()] == [task_id]

    async def test_client_default_authorization_is_not_sent(
        self, g4: Emulator, sent: list[Sent]
    ) -> None:
        """A default ``Authorization`` of an injected client never reaches credential-less calls."""
        async with httpx.AsyncClient(
            trust_env=False,
            headers={"Authorization": "Bearer leaked-default"},
            event_hooks={"request": [recorder(sent)]},
        ) as http:
            client = ControlPlaneClient(
                http,
                base_url=g4.base_url,
                authapi_base_url=g4.base_url,
                profile=Profile.AUTHAPI,
                user_agent=USER_AGENT,
            )
            key = new_key()
            await register_task(client, key, await register_identity(client, key))
        assert "Authorization" not in sent[-1].headers

    def test_custom_base_needs_an_authapi_url(self, http: httpx.AsyncClient) -> None:
        """Only production and staging ChatGPT bases map to a known AuthAPI (§3.4)."""
        with pytest.raises(UrlError):
            ControlPlaneClient(
                http,
                base_url="http://127.0.0.1:1/backend-api",
                profile=Profile.AUTHAPI,
                user_agent=USER_AGENT,
            )

    async def test_biscuit_requiring_backend_refuses_g4_tasks(
        self, g1: Emulator, make_client: MakeClient
    ) -> None:
        """A 401 on task registration is final: one request, no retry."""
        client = make_client(g1, Profile.AUTHAPI)
        key = new_key()
        runtime_id = await register_identity(client, key)
        with pytest.raises(ControlPlaneError) as caught:
            await register_task(client, key, runtime_id)
        assert (caught.value.status, caught.value.operation) == (401, "register_task")
        assert requests_to(g1, "register_task") == 1


class TestRetries:
    async def test_503_is_retried_until_success(
        self, g4: Emulator, make_client: MakeClient, log_output: list[dict[str, Any]]
    ) -> None:
        """Two 503s then success: three attempts, each logged, two retries announced (§11.2)."""
        g4.inject_fault("register_identity", status=503, count=2)
        await register_identity(make_client(g4, Profile.AUTHAPI))
        assert requests_to(g4, "register_identity") == 3
        attempts = [e for e in log_output if e["event"] == Event.CONTROLPLANE_REQUEST]
        assert [(e["attempt"], e["status"]) for e in attempts] == [(1, 503), (2, 503), (3, 200)]
        assert {e["path"] for e in attempts} == {"/backend-api/v1/agent/register"}
        retries = [e for e in log_output if e["event"] == Event.CONTROLPLANE_RETRY]
        assert [(e["attempt"], e["previous_status"]) for e in retries] == [(2, 503), (3, 503)]

    async def test_429_is_retried(self, g4: Emulator, make_client: MakeClient) -> None:
        """429 is retryable."""
        g4.inject_fault("register_identity", status=429, count=1)
        await register_identity(make_client(g4, Profile.AUTHAPI))
        assert requests_to(g4, "register_identity") == 2

    async def test_g1_mints_a_fresh_biscuit_per_attempt(
        self, g1: Emulator, make_client: MakeClient
    ) -> None:
        """A G1 retry starts over with a new biscuit: biscuits are single-use (§4.1)."""
        g1.inject_fault("register_identity", status=502, count=1)
        await register_identity(make_client(g1, Profile.CHATGPT_BACKEND))
        assert requests_to(g1, "authenticate") == 2
        assert requests_to(g1, "register_identity") == 2

    async def test_biscuit_mint_failure_is_retried(
        self, g1: Emulator, make_client: MakeClient
    ) -> None:
        """A 503 from ``authenticate_app_v2`` is retried like any step of the call."""
        g1.inject_fault("authenticate", status=503, count=1)
        await register_identity(make_client(g1, Profile.CHATGPT_BACKEND))
        assert requests_to(g1, "authenticate") == 2

    async def test_exhausted_retries_raise_unavailable(
        self, g4: Emulator, make_client: MakeClient
    ) -> None:
        """After the last retryable failure the call fails with ControlPlaneUnavailable (§11.2)."""
        client = make_client(g4, Profile.AUTHAPI)
        key = new_key()
        runtime_id = await register_identity(client, key)
        g4.inject_fault("register_task", status=503, count=10)
        with pytest.raises(ControlPlaneUnavailable) as caught:
            await register_task(client, key, runtime_id)
        assert (caught.value.operation, caught.value.status) == ("register_task", 503)
        assert "3 attempt(s)" in caught.value.message
        assert "injected_fault" in caught.value.body_excerpt
        assert requests_to(g4, "register_task") == 3

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
    async def test_client_errors_fail_at_once(
        self, g4: Emulator, make_client: MakeClient, status: int
    ) -> None:
        """4xx other than 429 is final: ControlPlaneError after exactly one request."""
        g4.inject_fault("register_identity", status=status, count=5)
        with pytest.raises(ControlPlaneError) as caught:
            await register_identity(make_client(g4, Profile.AUTHAPI))
        assert type(caught.value) is ControlPlaneError
        assert caught.value.status == status
        assert requests_to(g4, "register_identity") == 1

    async def test_real_400_for_a_bad_key(self, g4: Emulator, make_client: MakeClient) -> None:
        """The emulator's own 400 for a malformed key surfaces with its reason in the excerpt."""
        client = make_client(g4, Profile.AUTHAPI)
        with pytest.raises(ControlPlaneError) as caught:
            await client.register_identity(
                bearer=BEARER, agent_public_key="ssh-ed25519 AAAA", abom=ABOM
            )
        assert caught.value.status == 400
        assert "invalid_public_key" in caught.value.body_excerpt
        assert requests_to(g4, "register_identity") == 1

    @pytest.mark.parametrize("profile", list(Profile))
    async def test_real_404_for_an_unknown_runtime(
        self, start_emulator: StartEmulator, make_client: MakeClient, profile: Profile
    ) -> None:
        """Registering a task for a runtime the control plane never issued is a final 404."""
        emulator = await start_emulator(tokens=TOKENS, require_biscuit=False)
        client = make_client(emulator, profile)
        key = new_key()
        with pytest.raises(ControlPlaneError) as caught:
            await register_task(client, key, "agent-never-issued")
        assert caught.value.status == 404
        assert requests_to(emulator, "register_task") == 1

    async def test_read_timeout_is_retried(
        self, g4: Emulator, make_client: MakeClient, log_output: list[dict[str, Any]]
    ) -> None:
        """A response slower than the read timeout is retried; the attempt logs ReadTimeout."""
        g4.inject_fault("register_identity", delay_seconds=30, count=1)
        await register_identity(make_client(g4, Profile.AUTHAPI))
        assert requests_to(g4, "register_identity") == 2
        errors = [e["error"] for e in log_output if e["event"] == Event.CONTROLPLANE_REQUEST]
        assert errors == ["ReadTimeout", None]

    async def test_read_timeouts_exhaust_into_unavailable(
        self, g4: Emulator, make_client: MakeClient
    ) -> None:
        """Timeouts on every attempt end in ControlPlaneUnavailable with no status."""
        g4.inject_fault("register_identity", delay_seconds=30, count=3)
        with pytest.raises(ControlPlaneUnavailable) as caught:
            await register_identity(make_client(g4, Profile.AUTHAPI))
        assert caught.value.status is None
        assert "ReadTimeout" in caught.value.message

    async def test_per_exchange_deadline(self, g4: Emulator, make_client: MakeClient) -> None:
        """The per-exchange deadline bounds a call even when the read timeout is longer (§11.1)."""
        timeouts = ControlPlaneTimeouts(read=30.0, register_identity=0.2)
        g4.inject_fault("register_identity", delay_seconds=30, count=1)
        await register_identity(make_client(g4, Profile.AUTHAPI, timeouts=timeouts))
        assert requests_to(g4, "register_identity") == 2

    async def test_total_deadline_bounds_the_whole_call(
        self, g4: Emulator, make_client: MakeClient
    ) -> None:
        """However many attempts are allowed, the retry deadline ends the call."""
        retry = RetryPolicy(attempts=50, deadline=0.45, wait_initial=0.001, wait_jitter=0.0)
        g4.inject_fault("register_identity", delay_seconds=30, count=50)
        with pytest.raises(ControlPlaneUnavailable, match="retry deadline") as caught:
            await register_identity(make_client(g4, Profile.AUTHAPI, retry=retry))
        assert caught.value.status is None
        assert requests_to(g4, "register_identity") == 2

    async def test_cancellation_propagates(self, g4: Emulator, make_client: MakeClient) -> None:
        """Cancelling a call in flight cancels it: no retry, no ControlPlaneUnavailable."""
        timeouts = ControlPlaneTimeouts(read=30.0, register_identity=30.0)
        g4.inject_fault("register_identity", delay_seconds=30, count=5)
        client = make_client(g4, Profile.AUTHAPI, timeouts=timeouts)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(register_identity(client), timeout=0.2)
        assert requests_to(g4, "register_identity") == 1

    @pytest.mark.parametrize("drop", ["drop_connection", "reset_connection"])
    async def test_broken_connection_is_retried(
        self, g4: Emulator, make_client: MakeClient, drop: str
    ) -> None:
        """A connection closed or reset without a response is a transport error, retried."""
        g4.inject_fault("register_identity", **{drop: True})
        await register_identity(make_client(g4, Profile.AUTHAPI))
        assert requests_to(g4, "register_identity") == 2

    async def test_connection_refused_is_unavailable(
        self, make_client: MakeClient, log_output: list[dict[str, Any]]
    ) -> None:
        """Nobody listening: every attempt fails to connect, then ControlPlaneUnavailable."""
        base = f"http://127.0.0.1:{free_port()}/backend-api"
        with pytest.raises(ControlPlaneUnavailable) as caught:
            await register_identity(make_client(base, Profile.AUTHAPI))
        assert caught.value.status is None
        errors = [e["error"] for e in log_output if e["event"] == Event.CONTROLPLANE_REQUEST]
        assert errors == ["ConnectError"] * 3


class TestResponses:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ("<html>maintenance</html>", "not valid JSON"),
            ("", "not valid JSON"),
            ("[1, 2]", "JSON list, not an object"),
            ("null", "JSON NoneType, not an object"),
            ("[" * 100_000, "not valid JSON"),
        ],
    )
    async def test_malformed_success_body(
        self, g4: Emulator, make_client: MakeClient, body: str, message: str
    ) -> None:
        """A 2xx that is not a JSON object is a final ControlPlaneError naming the problem."""
        g4.inject_fault("register_identity", status=200, body=body)
        with pytest.raises(ControlPlaneError, match=re.escape(message)) as caught:
            await register_identity(make_client(g4, Profile.AUTHAPI))
        assert type(caught.value) is ControlPlaneError
        assert caught.value.status == 200
        assert requests_to(g4, "register_identity") == 1

    async def test_oversized_body(self, g4: Emulator, make_client: MakeClient) -> None:
        """A success body over 1 MiB is refused without being parsed."""
        huge = json.dumps({"agent_runtime_id": "agent-x", "pad": "a" * (1024 * 1024)})
        g4.inject_fault("register_identity", status=200, body=huge)
        with pytest.raises(ControlPlaneError, match="exceeds 1048576 bytes"):
            await register_identity(make_client(g4, Profile.AUTHAPI))

    @pytest.mark.parametrize(
        "body", ["{}", '{"agent_runtime_id": 7}', '{"agent_runtime_id": " "}', '{"id": "agent-x"}']
    )
    async def test_missing_agent_runtime_id(
        self, g4: Emulator, make_client: MakeClient, body: str
    ) -> None:
        """An identity response without a non-empty string ``agent_runtime_id`` is an error (§4.1)."""
        g4.inject_fault("register_identity", status=200, body=body)
        with pytest.raises(ControlPlaneError, match="missing agent_runtime_id"):
            await register_identity(make_client(g4, Profile.AUTHAPI))

    async def test_runtime_id_that_would_change_the_path(
        self, g4: Emulator, make_client: MakeClient
    ) -> None:
        """A runtime id with a URL delimiter is refused: it is inserted into paths unencoded (§3.3)."""
        g4.inject_fault("register_identity", status=200, body='{"agent_runtime_id": "a/../b"}')
        with pytest.raises(ControlPlaneError, match="usable path segment"):
            await register_identity(make_client(g4, Profile.AUTHAPI))

    async def test_biscuit_header_missing(self, g1: Emulator, make_client: MakeClient) -> None:
        """A 2xx mint without ``x-openai-authorization`` is an error (§4.1)."""
        g1.inject_fault("authenticate", status=200, body="{}")
        with pytest.raises(ControlPlaneError, match="no x-openai-authorization") as caught:
            await register_identity(make_client(g1, Profile.CHATGPT_BACKEND))
        assert caught.value.operation == "mint_biscuit"
        assert requests_to(g1, "register_identity") == 0

    async def test_redirect_is_not_followed(self, g4: Emulator, make_client: MakeClient) -> None:
        """A 3xx is a final error: registrations are never replayed to another URL."""
        g4.inject_fault("register_identity", status=307, body="")
        with pytest.raises(ControlPlaneError) as caught:
            await register_identity(make_client(g4, Profile.AUTHAPI))
        assert caught.value.status == 307

    async def test_error_excerpt_is_cut_to_512_characters(
        self, g4: Emulator, make_client: MakeClient
    ) -> None:
        """Error bodies longer than 512 characters are cut, with ``...`` appended (§5.2)."""
        g4.inject_fault("register_identity", status=400, body="x" * 2000)
        with pytest.raises(ControlPlaneError) as caught:
            await register_identity(make_client(g4, Profile.AUTHAPI))
        assert caught.value.body_excerpt == "x" * 512 + "..."

    async def test_short_error_excerpt_is_kept_whole(
        self, g4: Emulator, make_client: MakeClient
    ) -> None:
        """A short error body is kept as is."""
        g4.inject_fault("register_identity", status=403, body='{"error": "forbidden"}')
        with pytest.raises(ControlPlaneError) as caught:
            await register_identity(make_client(g4, Profile.AUTHAPI))
        assert caught.value.body_excerpt == '{"error": "forbidden"}'


class TestSecrets:
    @pytest.mark.parametrize(
        ("profile", "status"),
        [(Profile.AUTHAPI, 403), (Profile.AUTHAPI, 503), (Profile.CHATGPT_BACKEND, 403)],
    )
    async def test_echoed_bearer_never_leaks(
        self,
        g4: Emulator,
        make_client: MakeClient,
        log_output: list[dict[str, Any]],
        profile: Profile,
        status: int,
    ) -> None:
        """A server echoing the token: it appears in no exception text, excerpt or log entry."""
        echo = f'{{"error": "token {TOKEN} refused", "seen": "Authorization: Bearer {TOKEN}"}}'
        g4.inject_fault("register_identity", status=status, body=echo, count=5)
        with pytest.raises(ControlPlaneError) as caught:
            await register_identity(make_client(g4, profile))
        error = caught.value
        assert error.body_excerpt.startswith('{"error": "token [REDACTED] refused"')
        for text in (str(error), repr(error), error.message, error.body_excerpt):
            assert TOKEN not in text
        assert TOKEN not in json.dumps(log_output, default=repr)

    async def test_biscuits_and_bearer_never_logged(
        self,
        g1: Emulator,
        make_client: MakeClient,
        sent: list[Sent],
        log_output: list[dict[str, Any]],
    ) -> None:
        """A full G1 flow with a retry logs neither the Bearer nor any biscuit."""
        g1.inject_fault("register_task", status=503, count=1)
        client = make_client(g1, Profile.CHATGPT_BACKEND)
        key = new_key()
        await register_task(client, key, await register_identity(client, key))
        biscuits = [s.headers["X-OpenAI-Authorization"] for s in sent if s.method == "POST"]
        assert len(biscuits) == 3
        dumped = json.dumps(log_output, default=repr)
        for secret in (TOKEN, *biscuits):
            assert secret not in dumped

    async def test_empty_bearer(self, g4: Emulator, make_client: MakeClient) -> None:
        """An empty token is refused before any request."""
        with pytest.raises(NoBearerToken):
            await make_client(g4, Profile.AUTHAPI).register_identity(
                bearer=Secret(""), agent_public_key=new_key().public_key_ssh, abom=ABOM
            )
        assert requests_to(g4, "register_identity") == 0

    async def test_bearer_that_would_split_a_header(
        self, g4: Emulator, make_client: MakeClient
    ) -> None:
        """A token with a line break is refused, and the message does not quote it."""
        token = "abc-token\r\nX-Evil: 1"
        with pytest.raises(ControlPlaneError) as caught:
            await make_client(g4, Profile.AUTHAPI).register_identity(
                bearer=Secret(token), agent_public_key=new_key().public_key_ssh, abom=ABOM
            )
        assert "abc-token" not in str(caught.value)
        assert requests_to(g4, "register_identity") == 0


class TestConfiguration:
    async def test_build_http_client(self) -> None:
        """The factory sets the transport timeouts and does not follow redirects."""
        timeouts = ControlPlaneTimeouts(connect=2.0, read=3.0, write=4.0, pool=5.0)
        client = build_http_client(timeouts)
        try:
            assert client.timeout == httpx.Timeout(connect=2.0, read=3.0, write=4.0, pool=5.0)
            assert client.follow_redirects is False
        finally:
            await client.aclose()

    @pytest.mark.parametrize(
        "kwargs", [{"read": 0.0}, {"connect": -1.0}, {"register_task_authapi": float("inf")}]
    )
    def test_timeouts_must_be_positive(self, kwargs: dict[str, float]) -> None:
        """Every timeout is a finite positive number of seconds."""
        with pytest.raises(ValueError, match="must be a finite number"):
            ControlPlaneTimeouts(**kwargs)

    @pytest.mark.parametrize(
        "kwargs", [{"attempts": 0}, {"deadline": 0.0}, {"wait_max": -1.0}, {"wait_exp_base": 0.5}]
    )
    def test_retry_policy_is_validated(self, kwargs: dict[str, Any]) -> None:
        """A retry policy must allow one attempt and use non-negative waits."""
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            RetryPolicy(**kwargs)

    def test_reference_timeouts(self) -> None:
        """Defaults follow §11.1: 15 s everywhere except G4 task registration (30 s)."""
        timeouts = ControlPlaneTimeouts()
        assert (timeouts.mint_biscuit, timeouts.register_identity) == (15.0, 15.0)
        assert timeouts.register_task(Profile.CHATGPT_BACKEND) == 15.0
        assert timeouts.register_task(Profile.AUTHAPI) == 30.0
