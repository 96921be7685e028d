"""The worker-facing servicer: convert the request, make one core call, convert the result back.

RPC semantics are documented in ``proto/credential_broker/v1/broker.proto``. The caller admitted by
the interceptor (``CURRENT_CALLER``) is passed to the core, which applies its policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import structlog

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.core.callers import CallerPolicy
from broker.core.credentials.authorizer import Authorizer
from broker.errors import BrokerError, CallerDenied, Unauthenticated
from broker.events import Event
from broker.secret import Secret
from broker.transport.grpc import convert
from broker.transport.grpc.callers import CURRENT_CALLER, CallerGate
from broker.transport.grpc.status import internal_status, to_status

log = structlog.get_logger("broker.grpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def admitted() -> CallerPolicy:
    """The caller the interceptor admitted for this RPC; none at all is refused, never trusted.

    Every worker-facing method needs a caller (``LOCAL_CALLER`` stands for one on an open,
    loopback-only broker). A call that reached the servicer without one (a server wired without
    the caller interceptor, a method added to the open list by mistake) fails closed.

    Raises:
        Unauthenticated: no caller was admitted.
    """
    caller = CURRENT_CALLER.get()
    if caller is None:
        raise Unauthenticated(
            "no caller was admitted for this call; the broker refuses it rather than trust it",
            rule="no_caller",
        )
    return caller


async def abort_for(
    context: grpc.aio.ServicerContext[Req, Resp],
    exc: BaseException,
    gate: CallerGate | None,
) -> None:
    """Abort the RPC for ``exc``: its status for a BrokerError, a bare INTERNAL for a bug."""
    if isinstance(exc, BrokerError):
        caller = CURRENT_CALLER.get()
        if isinstance(exc, CallerDenied) and gate is not None and caller is not None:
            method = structlog.contextvars.get_contextvars().get("rpc_method", "")
            gate.denied(caller.name, str(method), exc)
        await context.abort_with_status(to_status(exc))
    log.exception(Event.RPC_INTERNAL_ERROR)
    await context.abort_with_status(internal_status())


async def answer(
    context: grpc.aio.ServicerContext[Req, Resp],
    call: Callable[[], Awaitable[Resp]],
    gate: CallerGate | None = None,
) -> Resp:
    """Run ``call``; turn a BrokerError into its status and a bug into a bare INTERNAL."""
    try:
        return await call()
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # the edge: a bug becomes INTERNAL, never a stack trace
        await abort_for(context, exc, gate)
        raise  # unreachable: abort_with_status raises


class BrokerServicer(pb_grpc.CredentialBrokerServicer):
    """Implements ``credential_broker.v1.CredentialBroker`` over an :class:`Authorizer`."""

    def __init__(self, authorizer: Authorizer, gate: CallerGate | None = None) -> None:
        self._authorizer = authorizer
        self._gate = gate

    async def GetAuthorization(
        self,
        request: pb.GetAuthorizationRequest,
        context: grpc.aio.ServicerContext[pb.GetAuthorizationRequest, pb.GetAuthorizationResponse],
    ) -> pb.GetAuthorizationResponse:
        async def call() -> pb.GetAuthorizationResponse:
            authorization = await self._authorizer.authorize(
                request.identity,
                request.thread_id,
                convert.mode_from_proto(request.mode),
                convert.seconds_from_duration(request.min_remaining, "min_remaining"),
                admitted(),
            )
            # The broker serves this method from prebuilt bytes (prebuilt.py); this typed form
            # is what a server without that handler answers.
            return pb.GetAuthorizationResponse(
                authorization=convert.authorization_to_proto(authorization)
            )

        return await answer(context, call, self._gate)

    async def WatchAuthorization(
        self,
        request: pb.WatchAuthorizationRequest,
        context: grpc.aio.ServicerContext[
            pb.WatchAuthorizationRequest, pb.WatchAuthorizationResponse
        ],
    ) -> AsyncIterator[pb.WatchAuthorizationResponse]:
        try:
            updates = self._authorizer.watch(
                request.identity,
                request.thread_id,
                convert.mode_from_proto(request.mode),
                convert.seconds_from_duration(request.min_remaining, "min_remaining"),
                admitted(),
            )
            async for authorization in updates:
                yield pb.WatchAuthorizationResponse(
                    authorization=convert.authorization_to_proto(authorization)
                )
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001  (the edge: abort_for re-raises as a status)
            await abort_for(context, exc, self._gate)

    async def EnsureTask(
        self,
        request: pb.EnsureTaskRequest,
        context: grpc.aio.ServicerContext[pb.EnsureTaskRequest, pb.EnsureTaskResponse],
    ) -> pb.EnsureTaskResponse:
        async def call() -> pb.EnsureTaskResponse:
            runtime, task = await self._authorizer.ensure_task(
                request.identity, request.thread_id, admitted()
            )
            return pb.EnsureTaskResponse(task=convert.task_to_proto(runtime.spec.name, task))

        return await answer(context, call, self._gate)

    async def ReportRejection(
        self,
        request: pb.ReportRejectionRequest,
        context: grpc.aio.ServicerContext[pb.ReportRejectionRequest, pb.ReportRejectionResponse],
    ) -> pb.ReportRejectionResponse:
        async def call() -> pb.ReportRejectionResponse:
            outcome = await self._authorizer.report_rejection(
                request.identity,
                request.thread_id,
                Secret(request.header_value),
                request.http_status,
                admitted(),
            )
            return pb.ReportRejectionResponse(
                authorization=convert.authorization_to_proto(outcome.authorization),
                replaced=outcome.replaced,
            )

        return await answer(context, call, self._gate)

    async def GetIdentity(
        self,
        request: pb.GetIdentityRequest,
        context: grpc.aio.ServicerContext[pb.GetIdentityRequest, pb.GetIdentityResponse],
    ) -> pb.GetIdentityResponse:
        async def call() -> pb.GetIdentityResponse:
            runtime, record, background = await self._authorizer.describe(
                request.identity, admitted()
            )
            return pb.GetIdentityResponse(
                identity=convert.identity_to_proto(runtime, record, background)
            )

        return await answer(context, call, self._gate)
