"""The ``authapi`` bootstrap cooldown (§8.5, §11.2) without a socket: replicas are Authorizers over
one embedded store, the control plane is in memory, and the cooldown passes on a manual clock."""

from __future__ import annotations

import os
from typing import Any

import pytest

from broker.adapters.bearer import StaticBearer
from broker.adapters.memory_controlplane import InMemoryControlPlane
from broker.adapters.store.embedded import EmbeddedStore
from broker.core.credentials.authorizer import Authorizer
from broker.core.credentials.counters import AuthorizerCounters
from broker.core.credentials.fallback import BOOTSTRAP_COOLDOWN, FallbackPolicy
from broker.core.credentials.identity import IdentityManager
from broker.core.credentials.model import FallbackReason, Scheme
from broker.core.credentials.routing import WorkspaceRouter
from broker.core.credentials.spec import IdentityRuntime, IdentitySpec, Profile
from broker.core.credentials.tasks import TaskRegistry
from broker.errors import (
    BootstrapRefused,
    ControlPlaneError,
    ControlPlaneUnavailable,
    NoBearerToken,
)
from broker.events import Event
from tests.conftest import ManualClock

COOLDOWN = 600.0


def down(operation: str) -> ControlPlaneUnavailable:
    return ControlPlaneUnavailable("503 after retries", operation=operation, status=503)


class Fleet:
    """Replicas of one ``authapi`` identity sharing a store and a control plane."""

    def __init__(self, clock: ManualClock, profile: Profile = Profile.AUTHAPI) -> None:
        self.clock = clock
        self.store = EmbeddedStore(clock)
        self.control_plane = InMemoryControlPlane()
        self.spec = IdentitySpec(
            name="main",
            controlplane_url="https://chatgpt.com/backend-api",
            profile=profile,
            account_id="acct-1",
            bootstrap_cooldown=COOLDOWN,
        )
        self.runtime = IdentityRuntime(self.spec, self.control_plane, StaticBearer("bearer-1"))

    def replica(self) -> Authorizer:
        return Authorizer(
            identities={"main": self.runtime},
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
            rejection_min_interval=5.0,
        )

    async def cooldown(self) -> float | None:
        return await self.store.cooldown_remaining("main", BOOTSTRAP_COOLDOWN)

    @property
    def calls(self) -> int:
        return sum(self.control_plane.calls.values())


@pytest.fixture(name="fleet")
def fixture_fleet(clock: ManualClock) -> Fleet:
    return Fleet(clock)


class TestStartsTheCooldown:
    async def test_a_retryable_identity_failure(
        self, fleet: Fleet, log_output: list[dict[str, Any]]
    ) -> None:
        """Bearer with BOOTSTRAP_UNAVAILABLE, and the marker set for the configured cooldown."""
        fleet.control_plane.fail_next("register_identity", down("register_identity"))
        answer = await fleet.replica().authorize()
        assert (answer.scheme, answer.fallback_reason) == (
            Scheme.BEARER,
            FallbackReason.BOOTSTRAP_UNAVAILABLE,
        )
        assert await fleet.cooldown() == pytest.approx(COOLDOWN)
        started = [e for e in log_output if e["event"] == Event.BOOTSTRAP_COOLDOWN]
        assert [e["cooldown_seconds"] for e in started] == [COOLDOWN]

    async def test_a_retryable_task_failure(self, fleet: Fleet) -> None:
        fleet.control_plane.fail_next("register_task", down("register_task"))
        answer = await fleet.replica().authorize()
        assert answer.fallback_reason is FallbackReason.BOOTSTRAP_UNAVAILABLE
        assert await fleet.cooldown() == pytest.approx(COOLDOWN)


class TestDuringTheCooldown:
    async def test_every_replica_stays_on_bearer_without_calling(self, fleet: Fleet) -> None:
        """The marker is fleet-wide: no replica calls the control plane until it ends."""
        fleet.control_plane.fail_next("register_identity", down("register_identity"))
        await fleet.replica().authorize()
        calls = fleet.calls
        fleet.clock.advance(COOLDOWN - 1)
        for replica in (fleet.replica(), fleet.replica()):
            answer = await replica.authorize()
            assert answer.fallback_reason is FallbackReason.BOOTSTRAP_UNAVAILABLE
        assert fleet.calls == calls

    async def test_thread_calls_are_not_held_back(self, fleet: Fleet) -> None:
        """The cooldown covers background calls; a thread call tries (and here succeeds)."""
        fleet.control_plane.fail_next("register_identity", down("register_identity"))
        replica = fleet.replica()
        await replica.authorize()
        answer = await replica.authorize(thread_id="t-1")
        assert answer.scheme is Scheme.AGENT_ASSERTION
        assert await fleet.cooldown() is not None


class TestAfterTheCooldown:
    async def test_the_bootstrap_is_tried_again(self, fleet: Fleet) -> None:
        fleet.control_plane.fail_next("register_identity", down("register_identity"))
        await fleet.replica().authorize()
        fleet.clock.advance(COOLDOWN)
        assert await fleet.cooldown() is None
        answer = await fleet.replica().authorize()
        assert answer.scheme is Scheme.AGENT_ASSERTION
        assert fleet.control_plane.identity_registrations == 1


class TestNoCooldown:
    async def test_a_refusal_is_an_error_not_a_cooldown(self, fleet: Fleet) -> None:
        """A 4xx is final (BootstrapRefused, not masked by Bearer) and the next call tries again."""
        fleet.control_plane.fail_next(
            "register_identity",
            ControlPlaneError("403", operation="register_identity", status=403),
        )
        replica = fleet.replica()
        with pytest.raises(BootstrapRefused):
            await replica.authorize()
        assert await fleet.cooldown() is None
        assert (await replica.authorize()).scheme is Scheme.AGENT_ASSERTION

    async def test_a_failure_that_is_not_the_control_plane(self, fleet: Fleet) -> None:
        router = WorkspaceRouter(store=fleet.store, clock=fleet.clock)
        policy = FallbackPolicy(fleet.store, AuthorizerCounters(), router)
        answer = await policy.bootstrap_failure(fleet.runtime, "", NoBearerToken("no token"))
        assert answer.fallback_reason is FallbackReason.IDENTITY_UNAVAILABLE
        assert await fleet.cooldown() is None

    async def test_other_profiles_have_no_bootstrap_cooldown(self, clock: ManualClock) -> None:
        fleet = Fleet(clock, Profile.CHATGPT_BACKEND)
        fleet.control_plane.fail_next("register_identity", down("register_identity"))
        replica = fleet.replica()
        answer = await replica.authorize()
        assert answer.fallback_reason is FallbackReason.IDENTITY_UNAVAILABLE
        assert await fleet.cooldown() is None
        assert (await replica.authorize()).scheme is Scheme.AGENT_ASSERTION
