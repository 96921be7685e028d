"""The emulator's HTTP server: an aiohttp application around :class:`EmulatorState` (protocol §12).

One middleware wraps every request: it counts requests per protocol endpoint, applies an injected
fault if one is pending, renders :class:`Rejection` and aiohttp's own HTTP errors as JSON (so a
malformed request never meets a 500 or a traceback), and writes one ``emulator.request`` event with the
method, path, status and duration. Headers, tokens, biscuits and assertions are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Final

import structlog
from aiohttp import web

from broker.adapters.clock import SystemClock
from broker.core.credentials.ports import Clock
from broker.emulator.faults import Fault
from broker.emulator.model import (
    DEFAULT_TOKENS,
    EmulatorAccount,
    EmulatorIdentity,
    EmulatorStats,
    EmulatorTask,
    Rejection,
)
from broker.emulator.routes import PREFIX, ControlRoutes, ProtocolRoutes
from broker.emulator.state import EmulatorState
from broker.events import Event

MAX_REQUEST_BODY: Final = 1024 * 1024
_SHUTDOWN_GRACE_SECONDS: Final = 1.0
_HTTP_REASONS: Final[Mapping[int, str]] = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}

_REASON: Final = web.RequestKey("emulator_reason", str)

_log = structlog.get_logger()

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"ok": False, "reason": reason, "message": message}, status=status)


def _endpoint_of(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.name if resource is not None else None


def _drop(request: web.Request, *, reset: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout turns close() into a TCP RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Middleware:
    """Counting, faults, JSON errors and the per-request log line."""

    def __init__(self, state: EmulatorState, stopping: asyncio.Event) -> None:
        self._state = state
        self._stopping = stopping

    @web.middleware
    async def __call__(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        started = time.perf_counter()
        endpoint = _endpoint_of(request)
        status: int | None = None
        fault: Fault | None = None
        try:
            if endpoint is not None:
                self._state.count_request(endpoint)
                fault = self._state.take_fault(endpoint)
            if fault is not None:
                response = await self._apply(request, fault, handler)
            else:
                response = await self._answer(request, handler)
            status = None if fault is not None and fault.drops else response.status
            return response
        finally:
            _log.info(
                Event.EMULATOR_REQUEST,
                method=request.method,
                path=request.path,
                endpoint=endpoint,
                status=status,
                reason=request.get(_REASON),
                fault=fault is not None,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )

    async def _apply(
        self, request: web.Request, fault: Fault, handler: _Handler
    ) -> web.StreamResponse:
        if fault.delay_seconds:
            await self._pause(fault.delay_seconds)
        if fault.drops:
            _drop(request, reset=fault.reset_connection)
            return web.Response(status=499)
        if fault.responds:
            body = fault.body
            if body is None:
                return _error(fault.response_status, "injected_fault", "fault injected by a test")
            return web.Response(
                status=fault.response_status,
                body=body.encode("utf-8"),
                headers={"Content-Type": fault.content_type},
            )
        return await self._answer(request, handler)

    async def _pause(self, seconds: float) -> None:
        # A stopping emulator ends pending delays at once instead of holding shutdown hostage.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _answer(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Rejection as rejection:
            request[_REASON] = rejection.reason
            return _error(rejection.status, rejection.reason, rejection.message)
        except web.HTTPException as exc:
            reason = _HTTP_REASONS.get(exc.status, "http_error")
            response = _error(exc.status, reason, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception:  # noqa: BLE001 -- the HTTP edge: a bug becomes one logged, fixed 500
            # A bug in the emulator: answer a fixed JSON error, keep the traceback in the log only.
            _log.exception(Event.EMULATOR_REQUEST, path=request.path, error="internal")
            return _error(500, "internal", "internal emulator error")


class Emulator:
    """A faithful, checking emulator of the agent-identity control plane (protocol §12).

    Call :meth:`start` and :meth:`stop`, or scope it with ``async with``, which stops it on exit::

        async with Emulator() as emulator:
            base_url = await emulator.start()

    The ``/_emulator/`` HTTP controls and the methods below act on the same state.

    Args:
        tokens: bearer token → account it logs in as; defaults to ``dev-access-token`` →
            ``acct-dev``/``user-dev``.
        clock: time for biscuit expiry and the skew window (default: the system clock).
        skew_seconds: accepted distance of signed timestamps from the clock (§12.2, §12.3).
        plaintext_task_ids: answer ``task_id`` instead of ``encrypted_task_id`` (§5.2).
        require_biscuit: whether task registration needs a G1 biscuit (G2-G4 send none, §5.1).
        biscuit_ttl_seconds: lifetime of a minted biscuit (§4.1).
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, EmulatorAccount] | None = None,
        clock: Clock | None = None,
        skew_seconds: float = 300,
        plaintext_task_ids: bool = False,
        require_biscuit: bool = True,
        biscuit_ttl_seconds: float = 60,
    ) -> None:
        self._state = EmulatorState(
            tokens=DEFAULT_TOKENS if tokens is None else tokens,
            clock=clock or SystemClock(),
            skew_seconds=skew_seconds,
            biscuit_ttl_seconds=biscuit_ttl_seconds,
            plaintext_task_ids=plaintext_task_ids,
            require_biscuit=require_biscuit,
        )
        self._biscuit_ttl_seconds = biscuit_ttl_seconds
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._root_url: str | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application (for embedding in another aiohttp server or runner)."""
        app = web.Application(
            middlewares=[_Middleware(self._state, self._stopping).__call__],
            client_max_size=MAX_REQUEST_BODY,
        )
        ProtocolRoutes(self._state, biscuit_ttl_seconds=self._biscuit_ttl_seconds).install(app)
        ControlRoutes(self._state).install(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port) and return the base URL.

        Returns:
            ``http://<host>:<port>/backend-api``, the ChatGPT base URL clients are configured with.

        Raises:
            RuntimeError: the emulator is already running.
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_GRACE_SECONDS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port = int(runner.addresses[0][1])
        url_host = f"[{host}]" if ":" in host else host
        self._runner = runner
        self._root_url = f"http://{url_host}:{bound_port}"
        _log.info(Event.EMULATOR_STARTED, url=self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and end in-flight requests (pending fault delays end at once)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        """``http://<host>:<port>``, where ``/_emulator/`` controls live.

        Raises:
            RuntimeError: the emulator is not running.
        """
        if self._root_url is None or self._runner is None:
            raise RuntimeError("the emulator is not running")
        return self._root_url

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/backend-api`` (§3.1).

        Raises:
            RuntimeError: the emulator is not running.
        """
        return self.root_url + PREFIX

    # -- test controls (the /_emulator/ endpoints, in process) ---------------------------------

    def stats(self) -> EmulatorStats:
        """Counters since start or the last :meth:`reset`."""
        return self._state.stats()

    def inject_fault(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        count: int = 1,
        delay_seconds: float = 0.0,
        drop_connection: bool = False,
        reset_connection: bool = False,
        body: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Make the next ``count`` requests of ``endpoint`` misbehave (see :class:`Fault`).

        Args:
            endpoint: ``authenticate``, ``register_identity``, ``register_task``, ``protected`` or
                ``*``.
            status: answer with this status (default 200 when only ``body`` is set).
            count: how many matching requests the fault applies to.
            delay_seconds: wait before answering, or before passing the request on.
            drop_connection: close the connection without a response.
            reset_connection: reset (RST) the connection without a response.
            body: a raw response body instead of the default JSON error.
            content_type: the ``Content-Type`` of ``body``.

        Raises:
            ValueError: the fault is malformed or would do nothing.
        """
        self._state.faults.add(
            Fault(
                endpoint=endpoint,
                status=status,
                count=count,
                delay_seconds=delay_seconds,
                drop_connection=drop_connection,
                reset_connection=reset_connection,
                body=body,
                content_type=content_type,
            )
        )

    def revoke_task(self, task_id: str) -> None:
        """Revoke a task; later assertions naming it are refused with ``task_revoked`` (§12.3).

        Raises:
            KeyError: no such task.
        """
        if not self._state.revoke_task(task_id):
            raise KeyError(task_id)

    def reset(self, *, state: bool = False) -> None:
        """Clear faults and counters; with ``state`` also identities, tasks and biscuits."""
        self._state.reset(state=state)

    def tasks(self) -> list[EmulatorTask]:
        """Every registered task, in registration order."""
        return self._state.tasks()

    def identities(self) -> list[EmulatorIdentity]:
        """Every registered identity, in registration order."""
        return self._state.identities()
