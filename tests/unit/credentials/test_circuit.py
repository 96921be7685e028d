"""The control-plane circuit breaker without a socket: the in-memory control plane behind it and a
manual clock, so the cooldown passes with ``clock.advance`` instead of waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.adapters.memory_controlplane import InMemoryControlPlane
from broker.core.credentials.circuit import CircuitBreaker, CircuitState
from broker.core.protocol.keys import AgentKey
from broker.errors import ControlPlaneError, ControlPlaneUnavailable
from broker.events import Event
from broker.secret import Secret
from tests.conftest import ManualClock

THRESHOLD = 3
COOLDOWN = 30.0
KEY = AgentKey.from_seed(bytes([3]) * 32)
DOWN = ControlPlaneUnavailable("503 after retries", operation="register_identity", status=503)
REFUSED = ControlPlaneError("403", operation="register_identity", status=403)


class Breaker:
    """A CircuitBreaker around an InMemoryControlPlane."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.inner = InMemoryControlPlane()
        self.breaker = CircuitBreaker(
            self.inner,
            clock=clock,
            identity="main",
            failure_threshold=THRESHOLD,
            cooldown=COOLDOWN,
        )

    @property
    def reached(self) -> int:
        """Calls that got through to the control plane."""
        return self.inner.calls.get("register_identity", 0)

    async def register(self) -> str:
        return await self.breaker.register_identity(
            bearer=Secret("bearer-1"), agent_public_key=KEY.public_key_ssh, abom={}
        )

    async def fail(self, times: int, error: ControlPlaneError = DOWN) -> None:
        """Let ``times`` calls through, each failing with ``error``."""
        self.inner.fail_next("register_identity", error, times)
        for _ in range(times):
            with pytest.raises(type(error)):
                await self.register()

    async def open(self) -> None:
        await self.fail(THRESHOLD)
        assert self.breaker.state is CircuitState.OPEN


@pytest.fixture(name="cb")
def fixture_cb(clock: ManualClock) -> Breaker:
    return Breaker(clock)


class TestOpens:
    async def test_opens_after_the_threshold_of_consecutive_failures(self, cb: Breaker) -> None:
        await cb.fail(THRESHOLD - 1)
        assert cb.breaker.state is CircuitState.CLOSED
        await cb.fail(1)
        assert cb.breaker.state is CircuitState.OPEN

    async def test_an_open_circuit_fails_fast(self, cb: Breaker) -> None:
        """While open, calls fail at once and never reach the control plane."""
        await cb.open()
        reached = cb.reached
        for _ in range(5):
            with pytest.raises(ControlPlaneUnavailable, match="circuit is open"):
                await cb.register()
        assert cb.reached == reached

    async def test_a_success_resets_the_count(self, cb: Breaker) -> None:
        """Failures must be consecutive: one success in between starts the count again."""
        await cb.fail(THRESHOLD - 1)
        await cb.register()
        await cb.fail(THRESHOLD - 1)
        assert cb.breaker.state is CircuitState.CLOSED

    async def test_a_refusal_proves_the_control_plane_is_up(self, cb: Breaker) -> None:
        """4xx answers are not outages: they never open the circuit, and reset the count."""
        await cb.fail(THRESHOLD - 1)
        await cb.fail(THRESHOLD * 2, REFUSED)
        await cb.fail(THRESHOLD - 1)
        assert cb.breaker.state is CircuitState.CLOSED

    async def test_opening_is_logged(self, cb: Breaker, log_output: list[dict[str, Any]]) -> None:
        await cb.open()
        opened = [e for e in log_output if e["event"] == Event.CONTROLPLANE_CIRCUIT_OPENED]
        assert len(opened) == 1
        assert opened[0]["consecutive_failures"] == THRESHOLD
        assert opened[0]["cooldown_seconds"] == COOLDOWN


class TestHalfOpen:
    async def test_half_open_once_the_cooldown_ends(self, cb: Breaker) -> None:
        await cb.open()
        cb.clock.advance(COOLDOWN - 0.001)
        assert cb.breaker.state is CircuitState.OPEN
        with pytest.raises(ControlPlaneUnavailable, match="circuit is open"):
            await cb.register()
        cb.clock.advance(0.001)
        assert cb.breaker.state is CircuitState.HALF_OPEN

    async def test_one_probe_at_a_time(self, cb: Breaker) -> None:
        """Half-open lets exactly one call through; the others fail fast until it answers."""
        await cb.open()
        cb.clock.advance(COOLDOWN)
        gate = asyncio.Event()
        register = cb.inner.register_identity

        async def slow(**kwargs: Any) -> str:
            await gate.wait()
            return await register(**kwargs)

        cb.inner.register_identity = slow  # type: ignore[method-assign]
        probe = asyncio.create_task(cb.register())
        await asyncio.sleep(0)
        async with asyncio.timeout(1.0):  # a second probe would wait on the gate: fail, not hang
            with pytest.raises(ControlPlaneUnavailable, match="circuit is open"):
                await cb.register()
        gate.set()
        assert (await probe).startswith("agent-")
        assert cb.reached == THRESHOLD + 1


class TestCloses:
    async def test_a_successful_probe_closes(
        self, cb: Breaker, log_output: list[dict[str, Any]]
    ) -> None:
        await cb.open()
        cb.clock.advance(COOLDOWN)
        assert (await cb.register()).startswith("agent-")
        assert cb.breaker.state is CircuitState.CLOSED
        assert [e for e in log_output if e["event"] == Event.CONTROLPLANE_CIRCUIT_CLOSED]
        await cb.fail(THRESHOLD - 1)  # the count starts again from zero
        assert cb.breaker.state is CircuitState.CLOSED

    async def test_a_refused_probe_closes(self, cb: Breaker) -> None:
        """A 4xx probe answer shows the control plane is back: the circuit closes."""
        await cb.open()
        cb.clock.advance(COOLDOWN)
        await cb.fail(1, REFUSED)
        assert cb.breaker.state is CircuitState.CLOSED

    async def test_a_failed_probe_reopens_for_a_whole_cooldown(self, cb: Breaker) -> None:
        await cb.open()
        cb.clock.advance(COOLDOWN)
        await cb.fail(1)  # one failure is enough while probing
        assert cb.breaker.state is CircuitState.OPEN
        cb.clock.advance(COOLDOWN - 0.001)
        assert cb.breaker.state is CircuitState.OPEN
        cb.clock.advance(0.001)
        assert cb.breaker.state is CircuitState.HALF_OPEN
