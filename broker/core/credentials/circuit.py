"""A circuit breaker in front of one identity's control plane.

After ``failure_threshold`` consecutive retryable failures (each already retried by the client), the
circuit opens: for ``cooldown`` seconds every registration fails at once with
:class:`ControlPlaneUnavailable` instead of adding load to a control plane that is down. Then one
probe is let through (half-open); its success closes the circuit, its failure opens it again. A
non-retryable answer (a 4xx) proves the control plane is up and counts as success for the circuit.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import structlog

from broker.core.credentials.ports import Clock, ControlPlane
from broker.errors import ControlPlaneError, ControlPlaneUnavailable
from broker.events import Event
from broker.secret import Secret

log = structlog.get_logger("broker.circuit")

T = TypeVar("T")


class CircuitState(enum.Enum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Implements the ``ControlPlane`` port around another ``ControlPlane``."""

    def __init__(
        self,
        inner: ControlPlane,
        *,
        clock: Clock,
        identity: str,
        failure_threshold: int = 3,
        cooldown: float = 30.0,
    ) -> None:
        """Args:
        inner: the real control-plane client.
        clock: injected time.
        identity: named in events.
        failure_threshold: consecutive retryable failures that open the circuit.
        cooldown: seconds the circuit stays open before a probe.
        """
        self._inner = inner
        self._clock = clock
        self._identity = identity
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        """Closed, open, or half-open (cooldown over, next call probes)."""
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock.monotonic() - self._opened_at >= self._cooldown:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    async def register_identity(
        self, *, bearer: Secret, agent_public_key: str, abom: Mapping[str, str]
    ) -> str:
        """Register the identity through the breaker (see ``ControlPlane``)."""
        return await self._call(
            "register_identity",
            lambda: self._inner.register_identity(
                bearer=bearer, agent_public_key=agent_public_key, abom=abom
            ),
        )

    async def register_task(
        self, *, bearer: Secret, agent_runtime_id: str, body: Mapping[str, str]
    ) -> Mapping[str, object]:
        """Register a task through the breaker (see ``ControlPlane``)."""
        return await self._call(
            "register_task",
            lambda: self._inner.register_task(
                bearer=bearer, agent_runtime_id=agent_runtime_id, body=body
            ),
        )

    async def accounts_check(self, *, bearer: Secret, account_id: str) -> Mapping[str, object]:
        """Discover the account's workspace route through the breaker (see ``ControlPlane``)."""
        return await self._call(
            "accounts_check",
            lambda: self._inner.accounts_check(bearer=bearer, account_id=account_id),
        )

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        state = self.state
        if state is CircuitState.OPEN or (state is CircuitState.HALF_OPEN and self._probing):
            assert self._opened_at is not None  # noqa: S101  (state says so)
            retry_in = self._cooldown - (self._clock.monotonic() - self._opened_at)
            raise ControlPlaneUnavailable(
                f"control plane circuit is open for identity {self._identity!r} after "
                f"{self._failures} consecutive failures; next attempt in {max(retry_in, 0):.0f}s",
                operation=operation,
            )
        self._probing = state is CircuitState.HALF_OPEN
        try:
            result = await call()
        except ControlPlaneUnavailable:
            self._failures += 1
            if self._probing or self._failures >= self._threshold:
                self._opened_at = self._clock.monotonic()
                log.warning(
                    Event.CONTROLPLANE_CIRCUIT_OPENED,
                    identity=self._identity,
                    consecutive_failures=self._failures,
                    cooldown_seconds=self._cooldown,
                )
            raise
        except ControlPlaneError:
            self._close()
            raise
        finally:
            self._probing = False
        self._close()
        return result

    def _close(self) -> None:
        if self._opened_at is not None:
            log.info(Event.CONTROLPLANE_CIRCUIT_CLOSED, identity=self._identity)
        self._failures = 0
        self._opened_at = None
