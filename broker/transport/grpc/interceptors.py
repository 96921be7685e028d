"""Server interceptors: per-RPC log context and the canonical ``rpc.completed`` line.

Each RPC runs with ``rpc_method``, ``request_id`` and ``peer`` bound in structlog's contextvars, so
every event the core writes while serving it carries them; when the RPC ends, exactly one
``rpc.completed`` line records its gRPC code and duration.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import structlog
from structlog.contextvars import bound_contextvars

from broker.events import Event

log = structlog.get_logger("broker.grpc")

# grpc's handler callables are untyped at this level; the wrappers below only pass values through.
_Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
_Stream = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]

_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _code_name(context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> str:
    # grpc.aio returns None until a status was set; the stubs do not say so.
    code = cast("grpc.StatusCode | None", context.code())
    if code is not None:
        return code.name
    return "UNKNOWN" if failed else "OK"


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    """Bind per-RPC context and write one ``rpc.completed`` event per RPC."""

    def __init__(self, on_completed: Callable[[str, str, float], None] | None = None) -> None:
        """Args:
        on_completed: called with (method, code, seconds) after each RPC (the stats counters).
        """
        self._on_completed = on_completed

    def _completed(self, method: str, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        if self._on_completed is not None:
            self._on_completed(method, code, elapsed)
        level = log.debug if method.startswith(_QUIET_PREFIXES) else log.info
        level(Event.RPC_COMPLETED, grpc_code=code, duration_ms=round(elapsed * 1000, 3))

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
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, cast("_Stream", handler.unary_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, method: str, inner: _Unary) -> _Unary:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            failed = False
            with bound_contextvars(
                rpc_method=method, request_id=secrets.token_hex(8), peer=context.peer()
            ):
                try:
                    return await inner(request, context)
                except BaseException:
                    failed = True
                    raise
                finally:
                    self._completed(method, _code_name(context, failed), started)

        return unary

    def _wrap_stream(self, method: str, inner: _Stream) -> _Stream:
        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failed = False
            with bound_contextvars(
                rpc_method=method, request_id=secrets.token_hex(8), peer=context.peer()
            ):
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException:
                    failed = True
                    raise
                finally:
                    self._completed(method, _code_name(context, failed), started)

        return stream
