"""The credential core's decisions without a socket: protocol §8 rules, single flight, rejection
and thread-task budgets, against the in-memory control plane, the embedded store, real Ed25519 and
a manual clock. Each test runs in milliseconds; the emulator-backed integration tests cover HTTP.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import timedelta

import pytest

from broker.adapters.bearer import StaticBearer
from broker.adapters.memory_controlplane import InMemoryControlPlane
from broker.adapters.store.embedded import EmbeddedStore
from broker.core.callers import CallerPolicy
from broker.core.credentials.authorizer import Authorizer
from broker.core.credentials.identity import IdentityManager
from broker.core.credentials.model import FallbackReason, Mode, Scheme, TaskKind
from broker.core.credentials.spec import IdentityRuntime, IdentitySpec, ThreadTaskLimits
from broker.core.credentials.tasks import TaskRegistry
from broker.core.protocol.assertion import build_assertion, parse_assertion, verify_assertion
from broker.core.protocol.keys import AgentKey
from broker.errors import (
    ControlPlaneError,
    ControlPlaneUnavailable,
    InvalidArgument,
    ReportRefused,
    TaskUnavailable,
    ThreadTaskBudgetExhausted,
)
from broker.secret import Secret
from tests.conftest import ManualClock

SUPPORTED = "https://chatgpt.com/backend-api"


class Core:
    """An Authorizer wired to in-memory adapters, with handles on each of them."""

    def __init__(self, clock: ManualClock, **spec_changes: object) -> None:
        self.clock = clock
        self.store = EmbeddedStore(clock)
        self.control_plane = InMemoryControlPlane()
        spec = IdentitySpec(name="main", controlplane_url=SUPPORTED, account_id="acct-1")
        self.spec = replace(spec, **spec_changes)
        runtime = IdentityRuntime(self.spec, self.control_plane, StaticBearer("bearer-1"))
        self.authorizer = Authorizer(
            identities={"main": runtime},
            default_identity="main",
            store=self.store,
            clock=clock,
            identity_manager=IdentityManager(
                store=self.store, clock=clock, random_bytes=os.urandom, lock_ttl=5, wait_deadline=5
            ),
            tasks=TaskRegistry(store=self.store, clock=clock, lock_ttl=5, wait_deadline=5),
            rejection_min_interval=5.0,
        )

    async def key(self) -> AgentKey:
        record = await self.authorizer.identity_manager.peek(self.authorizer.runtime("main"))
        assert record is not None
        return record.key


@pytest.fixture(name="core")
def fixture_core(clock: ManualClock) -> Core:
    return Core(clock)


class TestWhichHeader:
    """Protocol §8: assertion when possible, Bearer exactly where the rules say, and why."""

    async def test_an_assertion_signed_by_the_registered_key(self, core: Core) -> None:
        answer = await core.authorizer.authorize()
        assert answer.scheme is Scheme.AGENT_ASSERTION
        assert answer.fallback_reason is FallbackReason.NONE
        assert answer.task_kind is TaskKind.BACKGROUND
        envelope = parse_assertion(answer.header_value.reveal())
        verify_assertion(envelope, (await core.key()).public_key_bytes)
        assert core.control_plane.runtime_of(answer.task_id) == answer.agent_runtime_id
        assert answer.companion_headers == {"ChatGPT-Account-ID": "acct-1"}

    async def test_bearer_only_is_requested(self, core: Core) -> None:
        answer = await core.authorizer.authorize(mode=Mode.BEARER_ONLY)
        assert (answer.scheme, answer.fallback_reason) == (Scheme.BEARER, FallbackReason.REQUESTED)
        assert answer.header_value == Secret("Bearer bearer-1")
        # On a ChatGPT host the account's workspace route is discovered (§16); nothing else.
        assert core.control_plane.calls == {"accounts_check": 1}

    async def test_disabled(self, clock: ManualClock) -> None:
        core = Core(clock, enabled=False)
        answer = await core.authorizer.authorize()
        assert answer.fallback_reason is FallbackReason.DISABLED
        assert core.control_plane.calls == {"accounts_check": 1}

    async def test_unsupported_host_for_background_only(self, clock: ManualClock) -> None:
        core = Core(clock, controlplane_url="https://backend.example.org/api")
        background = await core.authorizer.authorize()
        assert background.fallback_reason is FallbackReason.UNSUPPORTED_HOST
        thread = await core.authorizer.authorize(thread_id="t-1")  # §3.2: no host rule for threads
        assert thread.scheme is Scheme.AGENT_ASSERTION

    async def test_no_account_binding(self, clock: ManualClock) -> None:
        core = Core(clock, account_id=None)
        answer = await core.authorizer.authorize()
        assert answer.fallback_reason is FallbackReason.IDENTITY_UNAVAILABLE
        assert core.control_plane.identity_registrations == 0

    async def test_background_task_unavailable_falls_back(self, core: Core) -> None:
        core.control_plane.fail_next(
            "register_task", ControlPlaneUnavailable("503", operation="register_task", status=503)
        )
        answer = await core.authorizer.authorize()
        assert answer.fallback_reason is FallbackReason.TASK_REGISTRATION_UNAVAILABLE

    async def test_thread_task_unavailable_never_falls_back(self, core: Core) -> None:
        """§8.3: a thread call fails rather than get a silent Bearer."""
        await core.authorizer.authorize()
        core.control_plane.fail_next(
            "register_task", ControlPlaneError("403", operation="register_task", status=403)
        )
        with pytest.raises(TaskUnavailable):
            await core.authorizer.authorize(thread_id="t-1")

    async def test_min_remaining_is_bounded(self, core: Core) -> None:
        with pytest.raises(InvalidArgument, match="min_remaining"):
            await core.authorizer.authorize(min_remaining=core.spec.assertion_ttl)


class TestCaching:
    async def test_a_warm_call_touches_nothing(self, core: Core) -> None:
        first = await core.authorizer.authorize()
        calls = dict(core.control_plane.calls)
        assert await core.authorizer.authorize() is first
        assert core.control_plane.calls == calls
        assert core.authorizer.counters.l1_hit == 1

    async def test_a_new_assertion_before_the_old_one_expires(self, core: Core) -> None:
        first = await core.authorizer.authorize()
        serve_until = core.authorizer.serve_until(first)
        assert first.issued_at is not None
        assert serve_until == first.issued_at + timedelta(
            seconds=core.spec.assertion_ttl - core.spec.refresh_margin
        )
        core.clock.advance(core.spec.assertion_ttl - core.spec.refresh_margin + 0.001)
        second = await core.authorizer.authorize()
        assert second.header_value != first.header_value
        assert second.task_id == first.task_id  # same task, fresh signature
        assert core.control_plane.task_registrations == 1


class TestSingleFlight:
    async def test_concurrent_cold_callers_register_once(self, core: Core) -> None:
        answers = await asyncio.gather(*(core.authorizer.authorize() for _ in range(50)))
        assert len({a.header_value for a in answers}) == 1
        assert core.control_plane.identity_registrations == 1
        assert core.control_plane.task_registrations == 1

    async def test_each_thread_registers_once(self, core: Core) -> None:
        answers = await asyncio.gather(
            *(core.authorizer.authorize(thread_id=f"t-{i % 5}") for i in range(50))
        )
        assert len({a.task_id for a in answers}) == 5
        assert core.control_plane.task_registrations == 5


class TestRejection:
    async def test_a_genuine_report_replaces_the_task_once(self, core: Core) -> None:
        first = await core.authorizer.authorize()
        outcomes = await asyncio.gather(
            *(core.authorizer.report_rejection("", "", first.header_value, 401) for _ in range(10))
        )
        assert sum(o.replaced for o in outcomes) == 1
        assert {o.authorization.task_id for o in outcomes} != {first.task_id}
        assert core.control_plane.task_registrations == 2
        # the replacement reported at once: throttled, nothing registered
        again = await core.authorizer.report_rejection(
            "", "", outcomes[0].authorization.header_value, 401
        )
        assert not again.replaced
        assert core.control_plane.task_registrations == 2

    async def test_a_forged_report_is_refused(self, core: Core) -> None:
        first = await core.authorizer.authorize()
        forged = build_assertion(
            AgentKey.generate(os.urandom(64)),
            first.agent_runtime_id,
            first.agent_runtime_id,
            first.task_id,
            core.clock.now(),
        )
        with pytest.raises(ReportRefused):
            await core.authorizer.report_rejection("", "", Secret(forged.header_value()), 401)
        assert core.control_plane.task_registrations == 1


class TestThreadTaskBudgets:
    async def test_a_caller_is_held_to_its_burst(self, clock: ManualClock) -> None:
        limits = ThreadTaskLimits(per_caller_rate=0.5, per_caller_burst=2)
        core = Core(clock, thread_limits=limits)
        caller = CallerPolicy(name="worker")
        for i in range(2):
            await core.authorizer.authorize(thread_id=f"t-{i}", caller=caller)
        with pytest.raises(ThreadTaskBudgetExhausted) as refused:
            await core.authorizer.authorize(thread_id="t-2", caller=caller)
        assert refused.value.limit == "caller:worker"
        assert refused.value.retry_after == pytest.approx(2.0)
        clock.advance(2.0)  # one token back
        await core.authorizer.authorize(thread_id="t-2", caller=caller)
        assert core.control_plane.task_registrations == 3
