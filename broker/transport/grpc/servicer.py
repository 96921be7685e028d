"""The worker-facing servicer: convert the request, make one core call, convert the result back.

RPC semantics are documented in ``proto/credential_broker/v1/broker.proto``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import structlog

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.core.credentials.authorizer import Authorizer
from broker.errors import BrokerError
from broker.events import Event
from broker.secrets import Secret
from broker.transport.grpc import convert
from broker.transport.grpc.status import internal_status, to_status

log = structlog.get_logger("broker.grpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _answer(
    context: grpc.aio.ServicerContext[Req, Resp], call: Callable[[], Awaitable[Resp]]
) -> Resp:
    """Run ``call``; turn a BrokerError into its status and a bug into a bare INTERNAL."""
    try:
        return await call()
    except BrokerError as exc:
        await context.abort_with_status(to_status(exc))
        raise  # unreachable: abort_with_status raises
    except grpc.aio.AbortError:
        raise
    except Exception:  # the edge: a bug becomes INTERNAL, never a stack trace
        log.exception(Event.RPC_INTERNAL_ERROR)
        await context.abort_with_status(internal_status())
        raise


class BrokerServicer(pb_grpc.CredentialBrokerServicer):
    """Implements ``credential_broker.v1.CredentialBroker`` over an :class:`Authorizer`."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

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
            )
            return pb.GetAuthorizationResponse(
                authorization=convert.authorization_to_proto(authorization)
            )

        return await _answer(context, call)

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
            )
            async for authorization in updates:
                yield pb.WatchAuthorizationResponse(
                    authorization=convert.authorization_to_proto(authorization)
                )
        except BrokerError as exc:
            await context.abort_with_status(to_status(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:  # the edge: a bug becomes INTERNAL
            log.exception(Event.RPC_INTERNAL_ERROR)
            await context.abort_with_status(internal_status())

    async def EnsureTask(
        self,
        request: pb.EnsureTaskRequest,
        context: grpc.aio.ServicerContext[pb.EnsureTaskRequest, pb.EnsureTaskResponse],
    ) -> pb.EnsureTaskResponse:
        async def call() -> pb.EnsureTaskResponse:
            runtime, task = await self._authorizer.ensure_task(request.identity, request.thread_id)
            return pb.EnsureTaskResponse(task=convert.task_to_proto(runtime.spec.name, task))

        return await _answer(context, call)

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
            )
            return pb.ReportRejectionResponse(
                authorization=convert.authorization_to_proto(outcome.authorization),
                replaced=outcome.replaced,
            )

        return await _answer(context, call)

    async def GetIdentity(
        self,
        request: pb.GetIdentityRequest,
        context: grpc.aio.ServicerContext[pb.GetIdentityRequest, pb.GetIdentityResponse],
    ) -> pb.GetIdentityResponse:
        async def call() -> pb.GetIdentityResponse:
            runtime, record, background = await self._authorizer.describe(request.identity)
            return pb.GetIdentityResponse(
                identity=convert.identity_to_proto(runtime, record, background)
            )

        return await _answer(context, call)
