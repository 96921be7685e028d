"""Workspace routing end to end (protocol §16): real brokers discover their account's route from the
real emulator over loopback HTTP, hand it out over gRPC, and the emulator's protected resource
accepts a call only at the routed origin with the routing header.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest
import requests
from credential_broker_client import BrokerClient, RoutedRedirectRefused, SyncBrokerClient
from credential_broker_client.httpx_auth import BrokerAuth
from credential_broker_client.requests_auth import BrokerRequestsAuth

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from cb_emulator import DEV_ACCOUNT, DEV_TOKEN, Emulator
from cb_emulator.routing import accounts_check_body
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.integration.helpers import error_reason

pytestmark = pytest.mark.integration

ROUTING_ON = {"BROKER_WORKSPACE_ROUTING": "on"}
HEADER = "x-openai-account-routing-override"
ACCOUNT = DEV_ACCOUNT.account_id
BACKGROUND = pb.GetAuthorizationRequest()
THREAD = pb.GetAuthorizationRequest(thread_id="thread-1")
BEARER = pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)


async def authorize(broker: RunningBroker, request: pb.GetAuthorizationRequest) -> pb.Authorization:
    return (await broker.stub.GetAuthorization(request)).authorization


async def protected_at(origin: str, authorization: pb.Authorization) -> httpx.Response:
    """The emulator's protected resource at ``origin``, called as a worker would."""
    headers = {"Authorization": authorization.header_value, **dict(authorization.headers)}
    async with httpx.AsyncClient(timeout=5, follow_redirects=False) as client:
        return await client.get(f"{origin}/backend-api/protected", headers=headers)


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), error_reason(caught.value)


def discoveries(emulator: Emulator) -> int:
    return emulator.stats().requests_by_endpoint["accounts_check"]


class TestEachOverride:
    @pytest.mark.parametrize("override", ["us", "us_cr"])
    async def test_a_routed_account(
        self, emulator: Emulator, start_broker: StartBroker, override: str
    ) -> None:
        origin = emulator.set_route(ACCOUNT, override=override)
        broker = await start_broker(env=ROUTING_ON)
        for request in (BACKGROUND, THREAD, BEARER):
            answer = await authorize(broker, request)
            assert answer.backend_origin == origin == emulator.regional_origin
            assert answer.headers[HEADER] == override
            response = await protected_at(answer.backend_origin, answer)
            assert response.status_code == 200, response.text
        # The same header at the configured origin is refused: the route matters.
        wrong = await protected_at(emulator.root_url.rstrip("/"), answer)
        assert (wrong.status_code, wrong.json()["reason"]) == (421, "wrong_origin")
        assert discoveries(emulator) == 1

    async def test_no_constraint(self, emulator: Emulator, start_broker: StartBroker) -> None:
        emulator.set_route(ACCOUNT, override="NO_CONSTRAINT", origin="NO_CONSTRAINT")
        broker = await start_broker(env=ROUTING_ON)
        answer = await authorize(broker, BACKGROUND)
        assert answer.backend_origin == emulator.root_url.rstrip("/")
        assert HEADER not in answer.headers
        assert (await protected_at(answer.backend_origin, answer)).status_code == 200

    async def test_routing_off_hands_out_nothing(
        self, emulator: Emulator, start_broker: StartBroker
    ) -> None:
        emulator.set_route(ACCOUNT, override="us")
        broker = await start_broker(env={"BROKER_WORKSPACE_ROUTING": "off"})
        answer = await authorize(broker, BACKGROUND)
        assert (answer.backend_origin, HEADER in answer.headers) == ("", False)
        assert discoveries(emulator) == 0


class TestUnusableRoutes:
    @pytest.mark.parametrize(
        "origin",
        ["ftp://127.0.0.1:1", "https://user:pw@us.chatgpt.com", "https://us.chatgpt.com/path"],
    )
    async def test_an_invalid_origin_is_an_error(
        self, emulator: Emulator, start_broker: StartBroker, origin: str
    ) -> None:
        emulator.set_route(ACCOUNT, override="us", origin=origin)
        broker = await start_broker(env=ROUTING_ON)
        for request in (BACKGROUND, BEARER):
            code, reason = await refused(broker.stub.GetAuthorization(request))
            assert (code, reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "WORKSPACE_ROUTING_INVALID",
            )
        assert discoveries(emulator) == 1  # the failure is remembered, not asked again at once

    async def test_an_answer_for_another_account(
        self, emulator: Emulator, start_broker: StartBroker
    ) -> None:
        """The account changed while it was being discovered: the answer names another one."""
        emulator.set_accounts_check_body(
            ACCOUNT, accounts_check_body("acct-other", override="us"), count=5
        )
        broker = await start_broker(env=ROUTING_ON)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(BACKGROUND)
        assert error_reason(caught.value) == "WORKSPACE_ROUTING_INVALID"
        assert "acct-other, not the selected account acct-dev" in (caught.value.details() or "")

    async def test_a_new_token_is_discovered_again(
        self, emulator: Emulator, start_broker: StartBroker
    ) -> None:
        """The route is keyed by the account's token: a new token (another login of the account)
        is discovered once more, and its route is what workers get."""
        emulator.set_route(ACCOUNT, override="us")
        broker = await start_broker(env=ROUTING_ON)
        assert (await authorize(broker, BEARER)).headers[HEADER] == "us"
        login = emulator.create_login(ACCOUNT, user_id=DEV_ACCOUNT.user_id or "user-dev")
        tokens = login["tokens"]
        assert isinstance(tokens, dict)
        token = str(tokens["access_token"])
        emulator.set_route(ACCOUNT, override="us_cr")
        broker.token_file.write_text(token + "\n")
        await asyncio.sleep(1.2)  # the token file is re-read at most once a second
        assert (await authorize(broker, BEARER)).headers[HEADER] == "us_cr"
        assert discoveries(emulator) == 2

    async def test_unreachable_discovery_fails_closed(
        self, emulator: Emulator, start_broker: StartBroker
    ) -> None:
        emulator.inject_fault("accounts_check", status=503, count=100)
        broker = await start_broker(env=ROUTING_ON)
        for request in (BACKGROUND, THREAD, BEARER):
            code, reason = await refused(broker.stub.GetAuthorization(request))
            assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "WORKSPACE_ROUTING_UNAVAILABLE")

    async def test_a_401_is_final(self, emulator: Emulator, start_broker: StartBroker) -> None:
        emulator.inject_fault("accounts_check", status=401, count=100)
        broker = await start_broker(env=ROUTING_ON)
        code, reason = await refused(broker.stub.GetAuthorization(BEARER))
        assert (code, reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "WORKSPACE_ROUTING_UNAUTHORIZED",
        )


async def test_three_replicas_share_one_discovery(
    emulator: Emulator, start_broker: StartBroker, redis_url: str
) -> None:
    emulator.set_route(ACCOUNT, override="us")
    emulator.inject_fault("accounts_check", delay_seconds=0.3, after_handler=True)
    replicas = [await start_broker(redis_url=redis_url, env=ROUTING_ON) for _ in range(3)]
    answers = await asyncio.gather(
        *(
            authorize(replica, pb.GetAuthorizationRequest(thread_id=f"t-{n}"))
            for n in range(10)
            for replica in replicas
        )
    )
    assert {(a.backend_origin, a.headers[HEADER]) for a in answers} == {
        (emulator.regional_origin, "us")
    }
    assert discoveries(emulator) == 1


class TestWorkerPlugIns:
    """A worker that knows nothing of routes: the Python plug-ins send its calls where they go."""

    async def test_httpx_plug_in_reaches_the_routed_origin(
        self, emulator: Emulator, start_broker: StartBroker
    ) -> None:
        emulator.set_route(ACCOUNT, override="us_cr")
        broker = await start_broker(env=ROUTING_ON)
        async with (
            BrokerClient(broker.app.address, watch=False) as client,
            httpx.AsyncClient(auth=BrokerAuth(client, thread_id="thread-7"), timeout=5) as http,
        ):
            # The worker asks for the configured base; the plug-in sends it to the route.
            response = await http.get(f"{emulator.base_url}/protected")
        assert response.status_code == 200, response.text
        assert str(response.request.url).startswith(emulator.regional_origin + "/backend-api/")
        assert response.request.headers[HEADER] == "us_cr"
        assert response.json()["account_id"] == ACCOUNT

    async def test_requests_plug_in_refuses_a_redirect_on_a_routed_call(
        self, emulator: Emulator, start_broker: StartBroker
    ) -> None:
        emulator.set_route(ACCOUNT, override="us")
        broker = await start_broker(env=ROUTING_ON)
        emulator.inject_fault("protected", status=307, location=f"{emulator.base_url}/protected")
        before = emulator.stats().requests_by_endpoint["protected"]

        def call() -> None:
            with SyncBrokerClient(broker.app.address, watch=False) as client:
                session = requests.Session()
                session.auth = BrokerRequestsAuth(client)
                session.get(f"{emulator.base_url}/protected", timeout=5)

        with pytest.raises(RoutedRedirectRefused, match="307"):
            await asyncio.to_thread(call)
        # The redirected-to URL was never asked.
        assert emulator.stats().requests_by_endpoint["protected"] == before + 1


async def test_a_401_is_answered_by_rereading_the_token_once(
    emulator: Emulator, start_broker: StartBroker
) -> None:
    """Discovery refuses the token the broker read; meanwhile the token file got a newer one (a
    login refreshed elsewhere): the broker re-reads it once and discovers with it."""
    emulator.set_route(ACCOUNT, override="us")
    broker = await start_broker(env=ROUTING_ON)
    login = emulator.create_login(ACCOUNT, user_id=DEV_ACCOUNT.user_id or "user-dev")
    tokens = login["tokens"]
    assert isinstance(tokens, dict)
    emulator.inject_fault("accounts_check", status=401, delay_seconds=0.5)
    call = asyncio.ensure_future(authorize(broker, BEARER))
    await asyncio.sleep(0.2)  # the discovery with the first token is in flight
    broker.token_file.write_text(str(tokens["access_token"]) + "\n")
    answer = await call
    assert answer.headers[HEADER] == "us"
    assert answer.header_value == f"Bearer {DEV_TOKEN}"  # the Bearer is re-read on its own cadence
    assert discoveries(emulator) == 2
