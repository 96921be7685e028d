"""The control-plane circuit breaker against the real emulator over loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from broker.adapters.controlplane import ControlPlaneClient, RetryPolicy, build_http_client
from broker.core.credentials.circuit import CircuitBreaker, CircuitState
from broker.core.credentials.spec import Profile
from broker.core.protocol.keys import AgentKey
from broker.errors import ControlPlaneError, ControlPlaneUnavailable
from broker.secret import Secret
from cb_emulator import Emulator
from tests.conftest import ManualClock

pytestmark = pytest.mark.integration

TOKEN = Secret("dev-access-token")
KEY = AgentKey.from_seed(bytes([3]) * 32)
FAST = RetryPolicy(attempts=2, deadline=5, wait_initial=0.001, wait_max=0.002, wait_jitter=0.0)


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[httpx.AsyncClient]:
    client = build_http_client()
    yield client
    await client.aclose()


@pytest.fixture(name="breaker")
def fixture_breaker(
    http: httpx.AsyncClient, emulator: Emulator, clock: ManualClock
) -> CircuitBreaker:
    client = ControlPlaneClient(
        http,
        base_url=emulator.base_url,
        profile=Profile.CHATGPT_BACKEND,
        retry=FAST,
        user_agent="test",
    )
    return CircuitBreaker(client, clock=clock, identity="t", failure_threshold=2, cooldown=30)


async def register(breaker: CircuitBreaker) -> str:
    return await breaker.register_identity(
        bearer=TOKEN, agent_public_key=KEY.public_key_ssh, abom={"agent_version": "0"}
    )


class TestCircuitBreaker:
    async def test_opens_after_consecutive_failures(
        self, breaker: CircuitBreaker, emulator: Emulator
    ) -> None:
        """Two exhausted retryable failures open the circuit; then calls fail fast."""
        emulator.inject_fault("authenticate", status=503, count=100)
        for _ in range(2):
            with pytest.raises(ControlPlaneUnavailable):
                await register(breaker)
        assert breaker.state is CircuitState.OPEN
        reached = emulator.stats().requests_by_endpoint.get("authenticate", 0)
        with pytest.raises(ControlPlaneUnavailable, match="circuit is open"):
            await register(breaker)
        assert emulator.stats().requests_by_endpoint.get("authenticate", 0) == reached

    async def test_probe_closes_after_cooldown(
        self, breaker: CircuitBreaker, emulator: Emulator, clock: ManualClock
    ) -> None:
        """After the cooldown one probe goes through; its success closes the circuit."""
        emulator.inject_fault("authenticate", status=503, count=4)
        for _ in range(2):
            with pytest.raises(ControlPlaneUnavailable):
                await register(breaker)
        clock.advance(31)
        assert breaker.state is CircuitState.HALF_OPEN
        assert (await register(breaker)).startswith("agent-")
        assert breaker.state is CircuitState.CLOSED

    async def test_failed_probe_reopens(
        self, breaker: CircuitBreaker, emulator: Emulator, clock: ManualClock
    ) -> None:
        """A failing probe opens the circuit for another cooldown."""
        emulator.inject_fault("authenticate", status=503, count=100)
        for _ in range(2):
            with pytest.raises(ControlPlaneUnavailable):
                await register(breaker)
        clock.advance(31)
        with pytest.raises(ControlPlaneUnavailable):
            await register(breaker)
        assert breaker.state is CircuitState.OPEN

    async def test_client_errors_do_not_open(
        self, breaker: CircuitBreaker, emulator: Emulator
    ) -> None:
        """A 403 proves the control plane is up: it never opens the circuit."""
        emulator.inject_fault("register_identity", status=403, count=5)
        for _ in range(5):
            with pytest.raises(ControlPlaneError) as caught:
                await register(breaker)
            assert not isinstance(caught.value, ControlPlaneUnavailable)
        assert breaker.state is CircuitState.CLOSED
