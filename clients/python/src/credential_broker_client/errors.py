"""The client's exceptions: one tree, translated from gRPC statuses at the edge.

::

    BrokerClientError                 anything this package raises; .code, .reason (ErrorInfo)
    ├── BrokerUnavailableError        UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED: retry later
    ├── InvalidRequestError           INVALID_ARGUMENT, OUT_OF_RANGE: a malformed field; never retried
    ├── UnknownIdentityError          NOT_FOUND: the identity is not configured on the broker
    ├── CredentialUnavailableError    FAILED_PRECONDITION: no assertion possible and no Bearer either
    ├── CallerDeniedError             UNAUTHENTICATED, PERMISSION_DENIED: this caller may not ask
    ├── ClientClosedError             the client was closed
    └── RoutedRedirectRefused         a plug-in's routed request was answered with a redirect

``reason`` is the broker's stable ``google.rpc.ErrorInfo`` reason (``NO_BEARER_TOKEN``,
``STORE_UNAVAILABLE``, …; see the broker's README), or ``None`` when the status carried none (a
transport error). Only :class:`BrokerUnavailableError` is retryable; the client never retries
``INVALID_ARGUMENT`` or ``CANCELLED`` (STYLE §3.7).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Final

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"


class BrokerClientError(Exception):
    """Anything the client raises. Catch this to handle every failure in one place.

    Attributes:
        code: the gRPC status code, or ``None`` for an error that did not come from an RPC.
        reason: the broker's ``google.rpc.ErrorInfo`` reason, or ``None``.
        metadata: the ``ErrorInfo`` metadata (empty when there was none).
        retryable: whether trying again later can succeed.
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))


class BrokerUnavailableError(BrokerClientError):
    """The broker (or its control plane / store) cannot answer now; retry later."""

    retryable: ClassVar[bool] = True


class InvalidRequestError(BrokerClientError):
    """A malformed request field (named in the message). Fix the call; retrying will not help."""


class UnknownIdentityError(BrokerClientError):
    """The named identity is not configured on the broker."""


class CredentialUnavailableError(BrokerClientError):
    """No assertion is possible and there is no Bearer to fall back to (e.g. ``NO_BEARER_TOKEN``)."""


class CallerDeniedError(BrokerClientError):
    """The broker refused this caller (missing or wrong caller credentials, or not allowed)."""


class ClientClosedError(BrokerClientError):
    """The client was used after ``close()``."""


class RoutedRedirectRefused(BrokerClientError):
    """A routed request (one sent to ``Authorization.backend_origin``) was answered with a redirect.

    Routed requests never follow redirects, so the HTTP plug-ins raise this instead of following
    the ``Location``. The message names the status only, never a header's value.

    Attributes:
        status_code: the control plane's 3xx status.
    """

    def __init__(self, status_code: int) -> None:
        super().__init__(
            f"a routed request was answered with HTTP {status_code} and a Location; "
            "routed requests never follow redirects"
        )
        self.status_code = status_code


_BY_CODE: Final[Mapping[grpc.StatusCode, type[BrokerClientError]]] = {
    grpc.StatusCode.UNAVAILABLE: BrokerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: BrokerUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BrokerUnavailableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: UnknownIdentityError,
    grpc.StatusCode.FAILED_PRECONDITION: CredentialUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: CallerDeniedError,
    grpc.StatusCode.PERMISSION_DENIED: CallerDeniedError,
}

RETRYABLE_CODES: Final = frozenset(
    code for code, kind in _BY_CODE.items() if kind is BrokerUnavailableError
)
"""Status codes worth retrying (the broker's README: only UNAVAILABLE-like failures are)."""


def _error_info(error: grpc.aio.AioRpcError) -> tuple[str | None, dict[str, str]]:
    for key, value in error.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None, {}
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason, dict(info.metadata)
    return None, {}


def from_rpc_error(error: grpc.aio.AioRpcError) -> BrokerClientError:
    """The client exception for a failed RPC (the caller raises it ``from`` the original).

    Args:
        error: the failed call's error.

    Returns:
        The matching :class:`BrokerClientError` subclass, with code, reason and metadata.
    """
    code = error.code()
    reason, metadata = _error_info(error)
    kind = _BY_CODE.get(code, BrokerClientError)
    return kind(f"{code.name}: {error.details()}", code=code, reason=reason, metadata=metadata)
