"""The server interceptor: caller admission, per-RPC log context, the canonical ``rpc.completed``.

Each RPC runs with ``rpc_method``, ``request_id``, ``peer`` and ``caller`` bound in structlog's
contextvars, so every event the core writes while serving it carries them. Before the handler runs,
the :class:`CallerGate` authenticates the caller, applies admin and rate-limit rules, and puts the
caller's policy in ``CURRENT_CALLER`` for the servicer. When the RPC ends, exactly one
``rpc.completed`` line records its gRPC code and duration, and the caller's usage is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, cast

import grpc
import structlog
from google.protobuf.message import DecodeError
from structlog.contextvars import bound_contextvars

from broker.core.callers import CallerDenied, CallerPolicy
from broker.errors import InvalidArgument
from broker.events import Event
from broker.transport.grpc.callers import CURRENT_CALLER, CallerGate
from broker.transport.grpc.status import to_status

log = structlog.get_logger("broker.grpc")

# grpc's handler callables are untyped at this level; the wrappers below only pass values through.
_Context = grpc.aio.ServicerContext[Any, Any]
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]
# A streaming handler may also be a coroutine that sends with ``context.write`` (grpc's own health
# servicer's Watch is one); grpc.aio tells the two kinds apart by inspecting the handler.
_Writer = Callable[[Any, _Context], Awaitable[None]]

_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class _Undecodable:
    """Stands in for a request whose bytes do not decode as the RPC's message."""


_UNDECODABLE: Final = _Undecodable()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so a decode error reaches us (INVALID_ARGUMENT), not grpc
    (which would answer UNKNOWN before any broker code ran)."""
    if deserializer is None:
        return None

    def load(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return load


def _code_name(context: _Context, failure: BaseException | None) -> str:
    # grpc.aio returns None until a status was set; the stubs do not say so.
    code = cast("grpc.StatusCode | None", context.code())
    if code is not None:
        return code.name
    if isinstance(failure, asyncio.CancelledError):
        return "CANCELLED"  # the caller ended the call (how every watch stream ends)
    return "UNKNOWN" if failure is not None else "OK"


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Admit the caller, bind per-RPC context, and write one ``rpc.completed`` event per RPC."""

    def __init__(
        self,
        gate: CallerGate,
        on_completed: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """Args:
        gate: authenticates callers and counts their usage.
        on_completed: called with (method, code, seconds) after each RPC (the stats counters).
        """
        self._gate = gate
        self._on_completed = on_completed

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, cast("_Unary", handler.unary_unary)),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _admit(
        self, method: str, context: _Context, request: Any = None
    ) -> CallerPolicy | None:
        if request is _UNDECODABLE:
            await context.abort_with_status(
                to_status(InvalidArgument("the request message cannot be decoded"))
            )
        try:
            metadata = cast(
                "Iterable[tuple[str, str | bytes]]", context.invocation_metadata() or ()
            )
            return self._gate.admit(method, metadata, context.auth_context() or {})
        except CallerDenied as exc:
            await context.abort_with_status(to_status(exc))
            raise  # unreachable: abort_with_status raises

    def _completed(
        self,
        method: str,
        caller: CallerPolicy | None,
        context: _Context,
        failure: BaseException | None,
        started: float,
    ) -> None:
        elapsed = time.perf_counter() - started
        code = _code_name(context, failure)
        if self._on_completed is not None:
            self._on_completed(method, code, elapsed)
        if caller is not None:
            self._gate.completed(caller.name, method, code)
        level = log.debug if method.startswith(_QUIET_PREFIXES) else log.info
        level(Event.RPC_COMPLETED, grpc_code=code, duration_ms=round(elapsed * 1000, 3))

    @contextlib.asynccontextmanager
    async def _rpc(self, method: str, context: _Context, request: Any) -> AsyncIterator[None]:
        """One RPC's scope: bound log context, caller admission, and the closing line."""
        started = time.perf_counter()
        failure: BaseException | None = None
        caller: CallerPolicy | None = None
        with bound_contextvars(
            rpc_method=method, request_id=secrets.token_hex(8), peer=context.peer()
        ):
            try:
                caller = await self._admit(method, context, request)
                # Each RPC runs in its own task, so the value ends with it.
                CURRENT_CALLER.set(caller)
                with bound_contextvars(caller=caller.name if caller else None):
                    yield
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._completed(method, caller, context, failure, started)

    def _wrap_unary(self, method: str, inner: _Unary) -> _Unary:
        async def unary(request: Any, context: _Context) -> Any:
            async with self._rpc(method, context, request):
                return await inner(request, context)

        return unary

    def _wrap_stream(self, method: str, inner: Callable[..., Any]) -> _Stream | _Writer:
        """A wrapper of the same kind as ``inner``: an async generator, or a writing coroutine.

        grpc.aio iterates an async-generator handler and awaits a coroutine one; wrapping a
        coroutine in a generator would iterate a coroutine (UNKNOWN for every caller).
        """
        if inspect.iscoroutinefunction(inner):
            writer = cast("_Writer", inner)

            async def write(request: Any, context: _Context) -> None:
                async with self._rpc(method, context, request):
                    await writer(request, context)

            return write

        generator = cast("_Stream", inner)

        async def stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            async with self._rpc(method, context, request):
                async for item in generator(request, context):
                    yield item

        return stream
