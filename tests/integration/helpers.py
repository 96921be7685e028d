"""Small helpers for integration tests: ErrorInfo extraction and control-plane round trips."""

from __future__ import annotations

import grpc
import httpx
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker._proto.credential_broker.v1 import broker_pb2 as pb


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason attached to a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no rich status"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError("no ErrorInfo in the status details")


async def call_protected(base_url: str, authorization: pb.Authorization) -> httpx.Response:
    """Send the header and its companions to the emulator's protected endpoint."""
    headers = {"Authorization": authorization.header_value, **dict(authorization.headers)}
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"{base_url}/protected", headers=headers)
