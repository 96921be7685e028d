"""Proto <-> client types. No decisions live here."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from credential_broker_client._proto.credential_broker.v1 import broker_pb2 as pb
from credential_broker_client.authorization import (
    Authorization,
    FallbackReason,
    Scheme,
    TaskKind,
)

_E = TypeVar("_E", bound=enum.Enum)


def _by_name(kind: type[_E], names: Mapping[int, str], prefix: str) -> Mapping[int, _E]:
    """Proto enum numbers to the client enum member of the same name (``SCHEME_BEARER`` → BEARER).

    Matching by name keeps the tables complete as the proto grows: a number this client has no
    member for maps to the client's catch-all member instead.
    """
    members = {member.name: member for member in kind}
    return {
        number: members[name.removeprefix(prefix)]
        for number, name in names.items()
        if name.removeprefix(prefix) in members
    }


_SCHEMES: Final = _by_name(
    Scheme, {v.number: v.name for v in pb.DESCRIPTOR.enum_types_by_name["Scheme"].values}, "SCHEME_"
)
_TASK_KINDS: Final = _by_name(
    TaskKind,
    {v.number: v.name for v in pb.DESCRIPTOR.enum_types_by_name["TaskKind"].values},
    "TASK_KIND_",
)
_FALLBACKS: Final = {
    **_by_name(
        FallbackReason,
        {v.number: v.name for v in pb.DESCRIPTOR.enum_types_by_name["FallbackReason"].values},
        "FALLBACK_REASON_",
    ),
    pb.FALLBACK_REASON_UNSPECIFIED: FallbackReason.NONE,
}


def _moment(stamp: Timestamp) -> datetime:
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


def authorization_from_proto(message: pb.Authorization) -> tuple[Authorization, float]:
    """The client's :class:`Authorization` and its expiry in epoch seconds (``inf`` when unset)."""
    expires = math.inf
    expires_at = None
    if message.HasField("expires_at"):
        expires = message.expires_at.seconds + message.expires_at.nanos / 1e9
        expires_at = _moment(message.expires_at)
    authorization = Authorization(
        header_value=message.header_value,
        scheme=_SCHEMES.get(message.scheme, Scheme.UNSPECIFIED),
        identity=message.identity,
        agent_runtime_id=message.agent_runtime_id,
        task_id=message.task_id,
        task_kind=_TASK_KINDS.get(message.task_kind, TaskKind.UNSPECIFIED),
        thread_id=message.thread_id,
        issued_at=_moment(message.issued_at) if message.HasField("issued_at") else None,
        expires_at=expires_at,
        fallback_reason=_FALLBACKS.get(message.fallback_reason, FallbackReason.UNKNOWN),
        headers=MappingProxyType(dict(message.headers)),
        backend_origin=message.backend_origin,
    )
    return authorization, expires


def mode_to_proto(bearer_only: bool) -> pb.Mode.ValueType:
    """The request mode for the ``bearer_only`` flag."""
    return pb.MODE_BEARER_ONLY if bearer_only else pb.MODE_DEFAULT


def duration_to_proto(seconds: float | None) -> Duration | None:
    """``min_remaining`` seconds as a Duration (``None`` leaves the field unset)."""
    if seconds is None:
        return None
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
