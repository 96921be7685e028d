"""The bytes on the wire: the request every run sends and gRPC's length-prefixed framing."""

from __future__ import annotations

from typing import Final

from broker._proto.credential_broker.v1 import broker_pb2 as pb

SERVICE: Final = "credential_broker.v1.CredentialBroker"
METHOD_PATH: Final = f"/{SERVICE}/GetAuthorization"
IDENTITY: Final = "default"


def request() -> pb.GetAuthorizationRequest:
    """The warm path's request: the default identity's background task, an assertion if possible."""
    return pb.GetAuthorizationRequest(identity=IDENTITY, mode=pb.MODE_DEFAULT)


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message: flag 0, 4-byte big-endian length, then the message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def request_body() -> bytes:
    """The HTTP/2 DATA that ``h2load -d`` posts for each request."""
    return grpc_frame(request().SerializeToString())


def caller_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata a caller with ``token`` sends (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def caller_headers(token: str | None) -> tuple[str, ...]:
    """The same as h2load request headers."""
    return tuple(f"{name}: {value}" for name, value in caller_metadata(token))
