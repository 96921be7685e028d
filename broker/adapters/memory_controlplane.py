"""An in-memory control plane: the :class:`~broker.core.credentials.ports.ControlPlane` port without
sockets, as httpx's ``MockTransport`` is to httpx.

It keeps the rules that matter to the core's decisions and checks them with real cryptography:
registration needs a Bearer (the biscuit flow's precondition), a task registration must carry a
valid signature by the registered key over ``<runtime id>:<timestamp>`` (§5.1, §12.2), and every
call is counted. Failures are scripted with :meth:`fail_next`, so a test can say "the next two task
registrations answer 503" and watch the core fall back, open its circuit or retry.

For end-to-end tests over HTTP use the emulator (``credential-broker-emulator``) instead; this is
for the core's unit tests, which run in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from broker.core.protocol.keys import parse_ssh_public_key
from broker.core.protocol.task_registration import verify_task_registration
from broker.errors import ControlPlaneError, ProtocolError
from broker.secret import Secret

__all__ = ["InMemoryControlPlane"]


@dataclass
class InMemoryControlPlane:
    """Registers identities and tasks in process; counts calls; fails on request.

    Attributes:
        identity_registrations: successful ``register_identity`` calls.
        task_registrations: successful ``register_task`` calls.
        discoveries: successful ``accounts_check`` calls.
        calls: every call, successful or not, by operation name.
    """

    identity_registrations: int = 0
    task_registrations: int = 0
    discoveries: int = 0
    routes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(origin, override) the route discovery answers per account (default ``NO_CONSTRAINT``)."""
    discovery_gate: asyncio.Event | None = None
    """When set, a discovery waits for it (a slow backend, so that callers overlap)."""
    calls: dict[str, int] = field(default_factory=dict)
    _keys: dict[str, bytes] = field(default_factory=dict)
    _tasks: dict[str, str] = field(default_factory=dict)
    _failures: dict[str, deque[ControlPlaneError]] = field(default_factory=dict)

    def fail_next(self, operation: str, error: ControlPlaneError, count: int = 1) -> None:
        """Make the next ``count`` calls of ``operation`` raise ``error``."""
        self._failures.setdefault(operation, deque()).extend([error] * count)

    def runtime_of(self, task_id: str) -> str | None:
        """The runtime a registered task belongs to (``None``: no such task)."""
        return self._tasks.get(task_id)

    async def register_identity(
        self, *, bearer: Secret, agent_public_key: str, abom: Mapping[str, str]
    ) -> str:
        """Register the public key; return a new ``agent_runtime_id``."""
        self._enter("register_identity", bearer)
        try:
            public_key = parse_ssh_public_key(agent_public_key)
        except ProtocolError as exc:
            raise ControlPlaneError(
                f"register_identity: {exc.message}", operation="register_identity", status=400
            ) from None
        runtime_id = f"agent-{len(self._keys) + 1}"
        self._keys[runtime_id] = public_key
        self.identity_registrations += 1
        return runtime_id

    async def register_task(
        self, *, bearer: Secret, agent_runtime_id: str, body: Mapping[str, str]
    ) -> Mapping[str, object]:
        """Verify the signed body against the runtime's key; return a new plaintext task id."""
        self._enter("register_task", bearer)
        public_key = self._keys.get(agent_runtime_id)
        if public_key is None:
            raise ControlPlaneError(
                f"register_task: unknown runtime {agent_runtime_id!r}",
                operation="register_task",
                status=404,
            )
        try:
            signed_at: datetime = verify_task_registration(public_key, agent_runtime_id, body)
        except ProtocolError as exc:
            raise ControlPlaneError(
                f"register_task: {exc.message}", operation="register_task", status=401
            ) from None
        del signed_at  # freshness is the emulator's to judge; the signature is what matters here
        task_id = f"task-{len(self._tasks) + 1}"
        self._tasks[task_id] = agent_runtime_id
        self.task_registrations += 1
        return {"task_id": task_id}

    async def accounts_check(self, *, bearer: Secret, account_id: str) -> Mapping[str, object]:
        """The account's route: :attr:`routes` (origin, override) or ``NO_CONSTRAINT``."""
        self._enter("accounts_check", bearer)
        if self.discovery_gate is not None:
            await self.discovery_gate.wait()
        if not bearer.reveal():
            raise ControlPlaneError(
                "accounts_check: no Bearer", operation="accounts_check", status=401
            )
        origin, override = self.routes.get(account_id, ("NO_CONSTRAINT", "NO_CONSTRAINT"))
        self.discoveries += 1
        entry = {
            "id": account_id,
            "workspace_backend_origin": origin,
            "account_routing_override": override,
        }
        return {"accounts": [entry], "account_ordering": [account_id]}

    def _enter(self, operation: str, bearer: Secret) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        queued = self._failures.get(operation)
        if queued:
            raise queued.popleft()
        if not bearer.reveal() and operation == "register_identity":
            raise ControlPlaneError(f"{operation}: no Bearer", operation=operation, status=401)
