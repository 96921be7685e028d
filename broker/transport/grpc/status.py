"""The one table from broker errors to gRPC status codes, with a google.rpc.ErrorInfo attached."""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker.errors import BrokerError, ErrorKind

DOMAIN: Final = "credential-broker"

_CODES: Final[dict[ErrorKind, tuple[grpc.StatusCode, int]]] = {
    ErrorKind.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    ErrorKind.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    ErrorKind.FAILED_PRECONDITION: (
        grpc.StatusCode.FAILED_PRECONDITION,
        code_pb2.FAILED_PRECONDITION,
    ),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    ErrorKind.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    ErrorKind.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    ErrorKind.RESOURCE_EXHAUSTED: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        code_pb2.RESOURCE_EXHAUSTED,
    ),
    ErrorKind.INTERNAL: (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
}


def grpc_code(error: BrokerError) -> grpc.StatusCode:
    """The gRPC status code of a broker error."""
    return _CODES[error.kind][0]


def to_status(error: BrokerError) -> grpc.Status:
    """A rich status: code, the error's message, ErrorInfo(reason, domain) and, for a rate limit,
    RetryInfo(retry_delay) in the details."""
    numeric = _CODES[error.kind][1]
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, float | int):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(max(retry_after, 0.001) * 1e9))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    status = status_pb2.Status(code=numeric, message=error.message, details=details)
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    """What a caller sees for a bug: no stack trace, no detail beyond a stable reason."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message="internal error; the broker's log has the details",
        details=[detail],
    )
    return rpc_status.to_status(status)
