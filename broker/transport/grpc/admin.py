"""The admin servicer: ``credential_broker.v1.CredentialBrokerAdmin`` (admin callers only).

The interceptor already refused callers without the admin right; each method checks it again (fail
closed: a server wired without the interceptor serves no one), converts and delegates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker.core.credentials.admin import AdminOperations
from broker.transport.grpc import convert
from broker.transport.grpc.callers import CallerGate
from broker.transport.grpc.servicer import admitted, answer

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Call = Callable[[], Awaitable[Resp]]


class AdminServicer(apb_grpc.CredentialBrokerAdminServicer):
    """Implements the admin service over :class:`AdminOperations`."""

    def __init__(self, operations: AdminOperations, gate: CallerGate) -> None:
        self._operations = operations
        self._gate = gate

    async def _answer(self, context: grpc.aio.ServicerContext[Req, Resp], call: Call[Resp]) -> Resp:
        """``answer`` for an admin caller only: checked here too, so a server wired without the
        interceptor serves no one (fail closed)."""

        async def checked() -> Resp:
            admitted().check_admin()
            return await call()

        return await answer(context, checked, self._gate)

    async def ListIdentities(
        self,
        request: apb.ListIdentitiesRequest,
        context: grpc.aio.ServicerContext[apb.ListIdentitiesRequest, apb.ListIdentitiesResponse],
    ) -> apb.ListIdentitiesResponse:
        async def call() -> apb.ListIdentitiesResponse:
            states = await self._operations.list_identities()
            return apb.ListIdentitiesResponse(
                identities=[
                    apb.IdentityState(
                        identity=convert.identity_to_proto(s.runtime, s.record, s.background),
                        cached_headers=s.cached_headers,
                        watch_streams=s.watch_streams,
                    )
                    for s in states
                ]
            )

        return await self._answer(context, call)

    async def RotateIdentity(
        self,
        request: apb.RotateIdentityRequest,
        context: grpc.aio.ServicerContext[apb.RotateIdentityRequest, apb.RotateIdentityResponse],
    ) -> apb.RotateIdentityResponse:
        async def call() -> apb.RotateIdentityResponse:
            runtime, record, previous = await self._operations.rotate(request.identity)
            return apb.RotateIdentityResponse(
                identity=convert.identity_to_proto(runtime, record, None),
                previous_agent_runtime_id=previous or "",
            )

        return await self._answer(context, call)

    async def RevokeTask(
        self,
        request: apb.RevokeTaskRequest,
        context: grpc.aio.ServicerContext[apb.RevokeTaskRequest, apb.RevokeTaskResponse],
    ) -> apb.RevokeTaskResponse:
        async def call() -> apb.RevokeTaskResponse:
            task_id = await self._operations.revoke_task(request.identity, request.thread_id)
            return apb.RevokeTaskResponse(task_id=task_id or "")

        return await self._answer(context, call)

    async def FlushCaches(
        self,
        request: apb.FlushCachesRequest,
        context: grpc.aio.ServicerContext[apb.FlushCachesRequest, apb.FlushCachesResponse],
    ) -> apb.FlushCachesResponse:
        async def call() -> apb.FlushCachesResponse:
            return apb.FlushCachesResponse(
                identities=await self._operations.flush(request.identity)
            )

        return await self._answer(context, call)

    async def GetUsage(
        self,
        request: apb.GetUsageRequest,
        context: grpc.aio.ServicerContext[apb.GetUsageRequest, apb.GetUsageResponse],
    ) -> apb.GetUsageResponse:
        async def call() -> apb.GetUsageResponse:
            return apb.GetUsageResponse(
                callers=[
                    apb.CallerUsage(
                        caller=name,
                        rpcs_by_code=dict(usage.by_code),
                        rpcs_by_method=dict(usage.by_method),
                        denied=usage.denied,
                        rate_limited=usage.rate_limited,
                    )
                    for name, usage in sorted(self._gate.usage.items())
                ]
            )

        return await self._answer(context, call)
