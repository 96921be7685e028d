"""The server interceptor: caller admission, per-RPC log context, RPC counts, the access log.

Theory of operation
-------------------
The server has one handler, :class:`RpcInterceptor`: every service's method handlers are wrapped
once, when the service is added, and each call costs one dict lookup to find its wrapper. The
wrapper does each RPC's work once:

1. It sets :data:`broker.logs.RPC_LOG_CONTEXT` to the RPC (an :class:`_Rpc`). ``rpc_method``,
   ``request_id``, ``peer`` and ``caller`` are computed only if a line is written while serving the
   RPC, so a call that logs nothing never draws a request id or formats a peer address.
2. The method's :meth:`CallerGate.admission`, chosen once per method, admits the caller; the
   metadata and the TLS auth context are read only if it looks at them (an open, loopback broker
   never does). The caller's policy goes in ``CURRENT_CALLER`` for the servicer.
3. The handler runs.
4. The RPC is counted in its method's :class:`~broker.transport.grpc.tally.MethodTally` (what
   ``broker.stats``, ``/metrics`` and ``GetUsage`` read). An RPC that did not end OK writes its
   ``rpc.completed`` line at once; a successful one writes none, unless the access log is on
   (``BROKER_ACCESS_LOG_SAMPLE=N``: one successful call in N).

Each RPC runs in its own task (grpc.aio creates one per call), so the context variables set here end
with it and need no reset.

The warm path
-------------
Two things make a warm ``GetAuthorization`` cost little more than grpc.aio itself:

* **The caller is known at lookup.** grpc decodes a call's metadata to look its method up
  (``handler_call_details.invocation_metadata``); :meth:`RpcInterceptor.service` finds a token
  caller there (:meth:`CallerGate.token_caller`, one dict lookup per call for a known header) and
  returns that caller's own wrapper of the method, built once per (method, caller). Its admission
  reads nothing of the call (:meth:`CallerGate.admission_of`: the admin rule and the rate limit
  still apply). Anything else (no token, an unknown one, a certificate) takes the method's
  per-call admission, which authenticates the call and denies it with its reason.
* **A warm path before the handler.** A method added with a :data:`WarmPath` (``GetAuthorization``:
  a fresh L1 hit as prebuilt bytes) tries it first. Where nothing can refuse the call
  (:meth:`CallerGate.fixed_caller`: an open broker, or a known caller with no rate limit on a method
  it may call), a warm answer is counted and returned with no per-call state at all: no ``_Rpc``,
  no context variable, no task switch into the handler. Everything else (a miss, an error, a
  refusal) goes the whole way above, so every rule, count and log line is the handler's.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Final, cast

import grpc
import structlog
from google.protobuf.message import DecodeError

from broker.core.callers import CallerPolicy
from broker.errors import BrokerError, InvalidArgument
from broker.events import Event
from broker.logs import RPC_LOG_CONTEXT
from broker.transport.grpc.callers import CURRENT_CALLER, Admission, CallerGate
from broker.transport.grpc.status import to_status
from broker.transport.grpc.tally import OK, MethodTally, RpcTally

log = structlog.get_logger("broker.grpc")

# grpc's handler callables are untyped at this level; the wrappers below only pass values through.
_Context = grpc.aio.ServicerContext[Any, Any]
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]
# A streaming handler may also be a coroutine that sends with ``context.write`` (grpc's own health
# servicer's Watch is one); grpc.aio tells the two kinds apart by inspecting the handler.
_Writer = Callable[[Any, _Context], Awaitable[None]]
WarmPath = Callable[[Any, CallerPolicy], Any]
"""A unary method's answer from what is already cached, or ``None`` to decline (see
:meth:`RpcInterceptor.add_service`): synchronous, and it never raises."""


_QUIET_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods whose ``rpc.completed`` lines are debug: probes and tooling, not workers."""
UNDECODABLE_MESSAGE: Final = "the request message cannot be decoded"


class _Undecodable:
    """Stands in for a request whose bytes do not decode as the RPC's message."""


_UNDECODABLE: Final = _Undecodable()


class _Unadmitted:
    """The caller of an RPC that was not admitted (yet)."""


_UNADMITTED: Final = _Unadmitted()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so a decode error reaches us (INVALID_ARGUMENT), not grpc
    (which would answer UNKNOWN before any broker code ran)."""
    if deserializer is None:
        return deserializer

    def load(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return load


class _Rpc:
    """One RPC being served: its method, when it started, its caller, its log fields on demand.

    ``request_id`` and ``peer`` are drawn the first time a line is written while serving the RPC
    (slots left unset until then).
    """

    __slots__ = ("caller", "context", "method", "peer", "request_id", "started")

    def __init__(self, method: str, context: _Context, started: float) -> None:
        self.started = started
        self.method = method
        self.context: _Context | None = context
        """Dropped when the RPC ends: grpc frees the call, and asking it for the peer then is
        not safe (a task the RPC started may still log)."""
        self.caller: str | _Unadmitted | None = _UNADMITTED
        self.request_id: str
        self.peer: str

    def log_fields(self) -> Iterator[tuple[str, object]]:
        """``rpc_method``, ``request_id``, ``peer`` while known, ``caller`` once admitted."""
        yield "rpc_method", self.method
        request_id = getattr(self, "request_id", None)
        if request_id is None:
            request_id = self.request_id = secrets.token_hex(8)
        yield "request_id", request_id
        peer = getattr(self, "peer", None)
        if peer is None and self.context is not None:
            peer = self.peer = self.context.peer()
        if peer is not None:
            yield "peer", peer
        if not isinstance(self.caller, _Unadmitted):
            yield "caller", self.caller

    def caller_name(self) -> str | None:
        """The admitted caller's name; ``None`` for none (open methods), or before admission."""
        return None if isinstance(self.caller, _Unadmitted) else self.caller


def _code_name(context: _Context, failure: BaseException) -> str:
    # grpc.aio returns None until a status was set; the stubs do not say so.
    code = cast("grpc.StatusCode | None", context.code())
    if code is not None:
        return str(code.name)
    if isinstance(failure, asyncio.CancelledError):
        return "CANCELLED"  # the caller ended the call (how every watch stream ends)
    return "UNKNOWN"


class RpcInterceptor(grpc.GenericRpcHandler):
    """Admit the caller, give the RPC its log context, count it (see the module docstring).

    The server's one handler: services are added with :meth:`add_service` (or generic handlers
    with :meth:`add_generic`), each method is wrapped once, and grpc looks methods up here with
    one dict lookup per call. (A ``grpc.aio.ServerInterceptor`` would be awaited on every call to
    wrap a handler that never changes.)

    Args:
        gate: authenticates callers.
        tally: where finished RPCs are counted.
        access_log_sample: write ``rpc.completed`` for one successful RPC in this many; 0: for
            none (failed RPCs always write theirs).
    """

    def __init__(self, gate: CallerGate, tally: RpcTally, *, access_log_sample: int = 0) -> None:
        if access_log_sample < 0:
            raise ValueError("access_log_sample must be 0 (off) or a positive sampling interval")
        self._gate = gate
        self._tally = tally
        self._sample = access_log_sample
        self._until_sampled = access_log_sample
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        """Each method's handler for a caller authenticated per call."""
        self._originals: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], WarmPath | None]] = {}
        self._by_caller: dict[tuple[str, str], grpc.RpcMethodHandler[Any, Any]] = {}
        """Each method's handler for a token caller recognised at lookup, by (method, caller);
        bounded by the methods times the configured callers."""
        self._generic: list[grpc.GenericRpcHandler] = []
        self._authenticates = gate.authenticates

    def add_service(
        self,
        service: str,
        handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]],
        *,
        warm: Mapping[str, WarmPath] | None = None,
    ) -> None:
        """Serve ``service``'s methods (handlers by method name, as generated code lists them).

        ``warm`` gives unary methods a :data:`WarmPath`, tried after admission and before the
        handler: an answer it gives is the call's response, without a task switch into the
        handler or any per-call context (it must answer only what the handler would).
        """
        for name, handler in handlers.items():
            self._add(f"/{service}/{name}", handler, (warm or {}).get(name))

    def add_generic(self, handler: grpc.GenericRpcHandler) -> None:
        """Serve the methods ``handler`` resolves that no added service has."""
        self._generic.append(handler)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            for generic in self._generic:
                handler = generic.service(handler_call_details)
                if handler is not None:
                    # Only methods that have a handler are kept: unknown names cannot grow this.
                    wrapped = self._add(method, handler, None)
                    break
            else:
                return None
        if self._authenticates:
            # grpc decoded this call's metadata for this lookup: a token caller is recognised
            # here, once, and the call never reads its metadata again.
            policy = self._gate.token_caller(handler_call_details.invocation_metadata)
            if policy is not None:
                return self._by_caller.get((method, policy.name)) or self._for_caller(
                    method, policy
                )
        return wrapped

    def _add(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], warm: WarmPath | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        self._originals[method] = (handler, warm)
        wrapped = self._handlers[method] = self._wrap(
            method, handler, warm, self._gate.admission(method), self._gate.fixed_caller(method)
        )
        return wrapped

    def _for_caller(self, method: str, policy: CallerPolicy) -> grpc.RpcMethodHandler[Any, Any]:
        handler, warm = self._originals[method]
        wrapped = self._by_caller[method, policy.name] = self._wrap(
            method,
            handler,
            warm,
            self._gate.admission_of(method, policy),
            self._gate.fixed_caller(method, policy),
        )
        return wrapped

    def _wrap(
        self,
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        warm: WarmPath | None,
        admission: Admission,
        fixed: CallerPolicy | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` admitted by ``admission``; ``fixed``: the caller of every call, if known."""
        if handler.unary_unary is not None:
            inner = cast("_Unary", handler.unary_unary)
            if warm is not None and fixed is not None:
                # The warm path is tried first, once: the full path behind it does not retry it.
                unary = self._warm(
                    method, warm, fixed, self._wrap_unary(method, inner, None, admission)
                )
            else:
                unary = self._wrap_unary(method, inner, warm, admission)
            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, admission),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, handler.stream_stream, admission),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    # -- each RPC ----------------------------------------------------------------------------------

    @staticmethod
    def _admit(
        rpc: _Rpc, context: _Context, request: Any, admission: Admission
    ) -> CallerPolicy | None:
        """Admit the caller of ``rpc`` and return it (or raise the BrokerError to answer)."""
        RPC_LOG_CONTEXT.set(rpc)
        if request is _UNDECODABLE:
            raise InvalidArgument(UNDECODABLE_MESSAGE)
        policy = admission(context)
        CURRENT_CALLER.set(policy)
        rpc.caller = None if policy is None else policy.name
        return policy

    def _done(self, rpc: _Rpc, tally: MethodTally, context: _Context) -> None:
        """Count an RPC whose handler returned: OK, unless the handler set another status."""
        code = cast("grpc.StatusCode | None", context.code())
        if code is None or code is grpc.StatusCode.OK:
            tally.succeeded(rpc.caller_name(), time.perf_counter() - rpc.started)
            self._sampled(rpc)
        else:
            self._finished(rpc, tally, str(code.name))
        rpc.context = None

    def _sampled(self, rpc: _Rpc) -> None:
        """Write the access log line of one successful RPC in ``access_log_sample``."""
        if not self._sample:
            return
        self._until_sampled -= 1
        if self._until_sampled <= 0:
            self._until_sampled = self._sample
            self._write(rpc, OK, sampled_1_in=self._sample)

    def _failed(self, rpc: _Rpc, tally: MethodTally, context: _Context, exc: BaseException) -> None:
        """Count and log an RPC that raised (an abort, a cancellation, a bug)."""
        self._finished(rpc, tally, _code_name(context, exc))
        rpc.context = None

    def _finished(self, rpc: _Rpc, tally: MethodTally, code: str) -> None:
        tally.finished(code, rpc.caller_name(), time.perf_counter() - rpc.started)
        self._write(rpc, code)

    def _write(self, rpc: _Rpc, code: str, **fields: object) -> None:
        write = log.debug if rpc.method.startswith(_QUIET_PREFIXES) else log.info
        elapsed_ms = round((time.perf_counter() - rpc.started) * 1000, 3)
        write(Event.RPC_COMPLETED, grpc_code=code, duration_ms=elapsed_ms, **fields)

    def _wrap_unary(
        self, method: str, inner: _Unary, warm: WarmPath | None, admission: Admission
    ) -> _Unary:
        tally = self._tally.method(method, timed=True)
        admit, done, failed, sampled = self._admit, self._done, self._failed, self._sampled
        succeeded, clock = tally.succeeded, time.perf_counter

        async def unary(request: Any, context: _Context, started: float = 0.0) -> Any:
            rpc = _Rpc(method, context, started or clock())
            try:
                try:
                    policy = admit(rpc, context, request, admission)
                except BrokerError as exc:
                    await context.abort_with_status(to_status(exc))
                response = None
                if warm is not None and policy is not None:
                    response = warm(request, policy)
                if response is None:
                    response = await inner(request, context)
            except BaseException as exc:
                failed(rpc, tally, context, exc)
                raise
            if context.code() is None:  # OK, the common case: counted here without a call more
                succeeded(None if policy is None else policy.name, clock() - rpc.started)
                if self._sample:
                    sampled(rpc)
                rpc.context = None
            else:
                done(rpc, tally, context)
            return response

        return unary

    def _warm(self, method: str, warm: WarmPath, caller: CallerPolicy, full: _Unary) -> _Unary:
        """``full`` with its warm path tried first, for a method whose every call is ``caller``'s.

        Nothing can refuse such a call (:meth:`CallerGate.fixed_caller`), so an answer of the warm
        path is counted and returned at once: no per-call state, no context variable, no task
        switch into the handler. A declined call goes the whole way, with its start time.
        """
        tally = self._tally.method(method, timed=True)
        succeeded, clock, name = tally.succeeded, time.perf_counter, caller.name
        full_from = cast("Callable[[Any, _Context, float], Awaitable[Any]]", full)

        async def unary(request: Any, context: _Context) -> Any:
            started = clock()
            response = warm(request, caller)
            if response is None:
                return await full_from(request, context, started)
            succeeded(name, clock() - started)
            if self._sample:
                self._sampled_warm(method, context, started, name)
            return response

        return unary

    def _sampled_warm(self, method: str, context: _Context, started: float, caller: str) -> None:
        rpc = _Rpc(method, context, started)
        rpc.caller = caller
        RPC_LOG_CONTEXT.set(rpc)
        self._sampled(rpc)
        rpc.context = None

    def _wrap_stream(
        self, method: str, inner: Callable[..., Any], admission: Admission
    ) -> _Stream | _Writer:
        """A wrapper of the same kind as ``inner``: an async generator, or a writing coroutine.

        grpc.aio iterates an async-generator handler and awaits a coroutine one; wrapping a
        coroutine in a generator would iterate a coroutine (UNKNOWN for every caller).
        """
        tally = self._tally.method(method, timed=False)
        admit, done, failed, clock = self._admit, self._done, self._failed, time.perf_counter
        if inspect.iscoroutinefunction(inner):
            writer = cast("_Writer", inner)

            async def write(request: Any, context: _Context) -> None:
                rpc = _Rpc(method, context, clock())
                try:
                    try:
                        admit(rpc, context, request, admission)
                    except BrokerError as exc:
                        await context.abort_with_status(to_status(exc))
                    await writer(request, context)
                except BaseException as exc:
                    failed(rpc, tally, context, exc)
                    raise
                done(rpc, tally, context)

            return write

        generator = cast("_Stream", inner)

        async def stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            rpc = _Rpc(method, context, clock())
            try:
                try:
                    admit(rpc, context, request, admission)
                except BrokerError as exc:
                    await context.abort_with_status(to_status(exc))
                async for item in generator(request, context):
                    yield item
            except BaseException as exc:
                failed(rpc, tally, context, exc)
                raise
            done(rpc, tally, context)

        return stream
