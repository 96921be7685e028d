"""Workspace routes in the credential core (protocol §16): discovered once for the fleet, handed out
with every header, refreshed when the account's token changes, and failing closed.

Replicas are Authorizers over one embedded store and one in-memory control plane, on a manual clock.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import pytest

from broker.adapters.memory_controlplane import InMemoryControlPlane
from broker.adapters.store.embedded import EmbeddedStore
from broker.core.credentials.authorizer import Authorizer
from broker.core.credentials.identity import IdentityManager
from broker.core.credentials.model import Authorization, FallbackReason, Mode, Scheme
from broker.core.credentials.routing import FAILURE_HOLD, ROUTE_TTL
from broker.core.credentials.spec import IdentityRuntime, IdentitySpec, WorkspaceRouting
from broker.core.credentials.tasks import TaskRegistry
from broker.core.protocol.routing import ROUTING_HEADER
from broker.errors import (
    ControlPlaneError,
    ControlPlaneUnavailable,
    WorkspaceRoutingInvalid,
    WorkspaceRoutingUnauthorized,
    WorkspaceRoutingUnavailable,
)
from broker.secret import Secret
from tests.conftest import ManualClock

CHATGPT = "https://chatgpt.com/backend-api"
REGIONAL = "https://us.chatgpt.com"


class Bearer:
    """The account's token, which a test can replace (as a refresh by another replica would)."""

    def __init__(self, token: str) -> None:
        self.value = token

    async def token(self) -> Secret | None:
        return Secret(self.value)

    async def rejected(self, token: Secret) -> None:
        return None

    async def reread(self) -> Secret | None:
        return Secret(self.value)


class Fleet:
    """Replicas sharing one store, one control plane and one account token."""

    def __init__(self, clock: ManualClock, **spec_changes: object) -> None:
        self.clock = clock
        self.store = EmbeddedStore(clock)
        self.control_plane = InMemoryControlPlane()
        self.bearer = Bearer("bearer-1")
        spec = IdentitySpec(name="main", controlplane_url=CHATGPT, account_id="acct-1")
        self.spec = replace(spec, **spec_changes)

    def replica(self) -> Authorizer:
        runtime = IdentityRuntime(self.spec, self.control_plane, self.bearer)
        return Authorizer(
            identities={"main": runtime},
            default_identity="main",
            store=self.store,
            clock=self.clock,
            identity_manager=IdentityManager(
                store=self.store,
                clock=self.clock,
                random_bytes=os.urandom,
                lock_ttl=5,
                wait_deadline=5,
            ),
            tasks=TaskRegistry(store=self.store, clock=self.clock, lock_ttl=5, wait_deadline=5),
        )

    def route(self, override: str, origin: str = REGIONAL) -> None:
        self.control_plane.routes["acct-1"] = (origin, override)

    def fail_discovery(self, error: ControlPlaneError, count: int = 1) -> None:
        self.control_plane.fail_next("accounts_check", error, count)


def routed(answer: Authorization) -> tuple[str, str | None]:
    return answer.backend_origin, answer.companion_headers.get(ROUTING_HEADER)


@pytest.fixture(name="fleet")
def fixture_fleet(clock: ManualClock) -> Fleet:
    return Fleet(clock)


class TestRoutes:
    @pytest.mark.parametrize("override", ["us", "us_cr"])
    async def test_every_header_carries_the_route(self, fleet: Fleet, override: str) -> None:
        fleet.route(override)
        broker = fleet.replica()
        background = await broker.authorize()
        thread = await broker.authorize(thread_id="t-1")
        bearer = await broker.authorize(mode=Mode.BEARER_ONLY)
        assert background.scheme is Scheme.AGENT_ASSERTION
        assert bearer.scheme is Scheme.BEARER
        for answer in (background, thread, bearer):
            assert routed(answer) == (REGIONAL, override)
            assert answer.companion_headers["ChatGPT-Account-ID"] == "acct-1"
        assert fleet.control_plane.discoveries == 1

    async def test_no_constraint_means_the_configured_origin_and_no_header(
        self, fleet: Fleet
    ) -> None:
        answer = await fleet.replica().authorize()
        assert routed(answer) == ("https://chatgpt.com", None)
        assert ROUTING_HEADER not in answer.companion_headers

    async def test_an_origin_of_no_constraint_keeps_the_configured_one(self, fleet: Fleet) -> None:
        fleet.route("us", origin="NO_CONSTRAINT")
        assert routed(await fleet.replica().authorize()) == ("https://chatgpt.com", "us")

    async def test_three_replicas_share_one_discovery(self, fleet: Fleet) -> None:
        fleet.route("us")
        fleet.control_plane.discovery_gate = gate = asyncio.Event()
        replicas = [fleet.replica() for _ in range(3)]
        calls = asyncio.gather(
            *(r.authorize(thread_id=f"t-{i}") for i in range(10) for r in replicas)
        )
        for _ in range(20):  # every replica reaches the discovery (or its lock) meanwhile
            await asyncio.sleep(0)
        gate.set()
        answers = await calls
        assert {routed(a) for a in answers} == {(REGIONAL, "us")}
        assert fleet.control_plane.discoveries == 1

    async def test_a_new_token_is_discovered_again_once(self, fleet: Fleet) -> None:
        fleet.route("us")
        first, second = fleet.replica(), fleet.replica()
        await first.authorize(mode=Mode.BEARER_ONLY)
        fleet.bearer.value = "bearer-2"  # the login was refreshed
        fleet.route("us_cr")
        assert routed(await first.authorize(mode=Mode.BEARER_ONLY)) == (REGIONAL, "us_cr")
        assert routed(await second.authorize(mode=Mode.BEARER_ONLY)) == (REGIONAL, "us_cr")
        assert fleet.control_plane.discoveries == 2

    async def test_a_route_is_discovered_again_after_its_ttl(self, fleet: Fleet) -> None:
        broker = fleet.replica()
        await broker.authorize(mode=Mode.BEARER_ONLY)
        fleet.clock.advance(ROUTE_TTL - 1)
        await broker.authorize(mode=Mode.BEARER_ONLY)
        assert fleet.control_plane.discoveries == 1
        fleet.clock.advance(2)
        await broker.authorize(mode=Mode.BEARER_ONLY)
        assert fleet.control_plane.discoveries == 2


class TestWhenRoutingApplies:
    async def test_off(self, clock: ManualClock) -> None:
        fleet = Fleet(clock, workspace_routing=WorkspaceRouting.OFF)
        answer = await fleet.replica().authorize()
        assert routed(answer) == ("", None)
        assert "accounts_check" not in fleet.control_plane.calls

    async def test_auto_skips_a_host_that_is_not_chatgpt(self, clock: ManualClock) -> None:
        fleet = Fleet(clock, controlplane_url="https://gateway.example.org/backend-api")
        answer = await fleet.replica().authorize(thread_id="t-1")
        assert routed(answer) == ("", None)
        assert "accounts_check" not in fleet.control_plane.calls

    async def test_on_discovers_on_any_host(self, clock: ManualClock) -> None:
        fleet = Fleet(
            clock,
            controlplane_url="https://gateway.example.org/backend-api",
            workspace_routing=WorkspaceRouting.ON,
        )
        answer = await fleet.replica().authorize(thread_id="t-1")
        assert routed(answer) == ("https://gateway.example.org", None)
        assert fleet.control_plane.discoveries == 1

    async def test_on_without_an_account_id_is_an_error(self, clock: ManualClock) -> None:
        fleet = Fleet(clock, account_id=None, workspace_routing=WorkspaceRouting.ON)
        with pytest.raises(WorkspaceRoutingInvalid, match="account id is unknown"):
            await fleet.replica().authorize(mode=Mode.BEARER_ONLY)


class TestFailures:
    async def test_an_unreachable_backend_fails_closed_and_is_not_hammered(
        self, fleet: Fleet
    ) -> None:
        fleet.route("us")
        fleet.fail_discovery(ControlPlaneUnavailable("down", operation="accounts_check"))
        replicas = [fleet.replica() for _ in range(3)]
        for _ in range(20):
            for replica in replicas:
                with pytest.raises(WorkspaceRoutingUnavailable):
                    await replica.authorize()
        # One request: every later call within the hold, on every replica, is answered from the
        # failure it remembers (a second request would have succeeded: only one failure is queued).
        assert fleet.control_plane.calls["accounts_check"] == 1
        fleet.clock.advance(FAILURE_HOLD + 0.1)
        assert routed(await replicas[0].authorize()) == (REGIONAL, "us")

    async def test_a_background_call_gets_no_bearer_in_its_place(self, fleet: Fleet) -> None:
        # Registration fails (a Bearer fallback), and so does discovery: the Bearer is not sent
        # anywhere without its route.
        fleet.control_plane.fail_next(
            "register_identity", ControlPlaneUnavailable("down", operation="register_identity")
        )
        fleet.fail_discovery(ControlPlaneUnavailable("down", operation="accounts_check"))
        with pytest.raises(WorkspaceRoutingUnavailable):
            await fleet.replica().authorize()

    async def test_an_invalid_origin_is_an_error(self, fleet: Fleet) -> None:
        fleet.route("us", origin="http://us.chatgpt.com")
        with pytest.raises(WorkspaceRoutingInvalid, match="must be https"):
            await fleet.replica().authorize()

    async def test_an_unknown_override_is_an_error(self, fleet: Fleet) -> None:
        fleet.route("eu")
        with pytest.raises(WorkspaceRoutingInvalid, match="'eu' is not one of"):
            await fleet.replica().authorize(mode=Mode.BEARER_ONLY)

    async def test_an_error_status_is_invalid(self, fleet: Fleet) -> None:
        fleet.fail_discovery(ControlPlaneError("HTTP 404", operation="accounts_check", status=404))
        with pytest.raises(WorkspaceRoutingInvalid, match="HTTP 404"):
            await fleet.replica().authorize(mode=Mode.BEARER_ONLY)

    async def test_a_401_with_the_current_token_is_final(self, fleet: Fleet) -> None:
        fleet.fail_discovery(ControlPlaneError("401", operation="accounts_check", status=401))
        with pytest.raises(WorkspaceRoutingUnauthorized):
            await fleet.replica().authorize(mode=Mode.BEARER_ONLY)
        assert fleet.control_plane.calls["accounts_check"] == 1

    async def test_a_401_then_a_newer_token_succeeds(self, fleet: Fleet) -> None:
        fleet.route("us")
        broker = fleet.replica()
        fleet.fail_discovery(ControlPlaneError("401", operation="accounts_check", status=401))
        original = fleet.bearer.reread

        async def refreshed_elsewhere() -> Secret | None:
            fleet.bearer.value = "bearer-2"
            return await original()

        fleet.bearer.reread = refreshed_elsewhere  # type: ignore[method-assign]
        answer = await broker.authorize(mode=Mode.BEARER_ONLY)
        assert routed(answer) == (REGIONAL, "us")
        assert answer.fallback_reason is FallbackReason.REQUESTED
        assert fleet.control_plane.calls["accounts_check"] == 2
