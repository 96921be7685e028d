"""The emulator's one middleware: counting, injected faults, JSON errors, one log line (protocol §12).

Every request passes through :class:`Middleware`: it counts requests per protocol endpoint (the name
of the matched resource), applies an injected fault if one is pending, renders :class:`Rejection` and
aiohttp's own HTTP errors as JSON (so a malformed request never meets a 500 or a traceback), and writes
one ``emulator.request`` event with the method, path, status and duration. Headers, tokens, biscuits,
assertions and JWTs are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import structlog
from aiohttp import web

from broker.events import Event
from cb_emulator.faults import Fault
from cb_emulator.model import Rejection
from cb_emulator.state import EmulatorState

MAX_REQUEST_BODY: Final = 1024 * 1024
_HTTP_REASONS: Final[Mapping[int, str]] = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}

_REASON: Final = web.RequestKey("emulator_reason", str)

_log = structlog.get_logger()

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, reason: str, message: str) -> web.Response:
    """The emulator's JSON refusal: ``{"ok": false, "reason": …, "message": …}``."""
    return web.json_response({"ok": False, "reason": reason, "message": message}, status=status)


def note_reason(request: web.Request, reason: str) -> None:
    """Record a refusal's machine reason for the request's log line.

    For handlers that answer in their own error shape instead of raising :class:`Rejection`.
    """
    request[_REASON] = reason


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


def _fault_response(fault: Fault) -> web.Response:
    """The answer of a responding fault: its body (or the JSON error) and its ``Location``."""
    if fault.body is None:
        response = error_response(
            fault.response_status, "injected_fault", "fault injected by a test"
        )
    else:
        response = web.Response(
            status=fault.response_status,
            body=fault.body.encode("utf-8"),
            headers={"Content-Type": fault.content_type},
        )
    if fault.location is not None:
        response.headers["Location"] = fault.location
    return response


class Middleware:
    """Counting, faults, JSON errors and the per-request log line.

    Args:
        state: the emulator's state (counters and the fault queue).
        stopping: set when the emulator stops; pending fault delays end at once.
    """

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
        handled = await self._answer(request, handler) if fault.after_handler else None
        if fault.delay_seconds:
            await self._pause(fault.delay_seconds)
        if fault.drops:
            _drop(request, reset=fault.reset_connection)
            return web.Response(status=499)
        if fault.responds:
            return _fault_response(fault)
        return handled if handled is not None else await self._answer(request, handler)

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
            return error_response(rejection.status, rejection.reason, rejection.message)
        except web.HTTPException as exc:
            reason = _HTTP_REASONS.get(exc.status, "http_error")
            response = error_response(exc.status, reason, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception:  # noqa: BLE001 -- the HTTP edge: a bug becomes one logged, fixed 500
            # A bug in the emulator: answer a fixed JSON error, keep the traceback in the log only.
            _log.exception(Event.EMULATOR_REQUEST, path=request.path, error="internal")
            return error_response(500, "internal", "internal emulator error")
