"""Proto <-> domain conversion. No decisions live here."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.credentials.model import (
    Authorization,
    FallbackReason,
    IdentityRecord,
    Mode,
    Scheme,
    TaskKind,
    TaskRecord,
    public_thread,
)
from broker.core.credentials.spec import IdentityRuntime
from broker.errors import InvalidArgument

_SCHEMES: Final = {
    Scheme.AGENT_ASSERTION: pb.SCHEME_AGENT_ASSERTION,
    Scheme.BEARER: pb.SCHEME_BEARER,
}
_TASK_KINDS: Final = {
    None: pb.TASK_KIND_UNSPECIFIED,
    TaskKind.BACKGROUND: pb.TASK_KIND_BACKGROUND,
    TaskKind.THREAD: pb.TASK_KIND_THREAD,
}
_FALLBACKS: Final = {
    FallbackReason.NONE: pb.FALLBACK_REASON_UNSPECIFIED,
    FallbackReason.DISABLED: pb.FALLBACK_REASON_DISABLED,
    FallbackReason.UNSUPPORTED_HOST: pb.FALLBACK_REASON_UNSUPPORTED_HOST,
    FallbackReason.TASK_REGISTRATION_UNAVAILABLE: pb.FALLBACK_REASON_TASK_REGISTRATION_UNAVAILABLE,
    FallbackReason.IDENTITY_UNAVAILABLE: pb.FALLBACK_REASON_IDENTITY_UNAVAILABLE,
    FallbackReason.REQUESTED: pb.FALLBACK_REASON_REQUESTED,
    FallbackReason.BOOTSTRAP_UNAVAILABLE: pb.FALLBACK_REASON_BOOTSTRAP_UNAVAILABLE,
}
_MODES: Final[dict[int, Mode]] = {
    pb.MODE_UNSPECIFIED: Mode.DEFAULT,
    pb.MODE_DEFAULT: Mode.DEFAULT,
    pb.MODE_BEARER_ONLY: Mode.BEARER_ONLY,
}
# A Duration beyond this is certainly a mistake; refuse before float conversion loses meaning.
_MAX_DURATION_SECONDS: Final = 86_400


def mode_from_proto(value: int) -> Mode:
    """The request's mode; an unknown enum number is refused, not guessed.

    Raises:
        InvalidArgument: an enum number this broker does not know.
    """
    mode = _MODES.get(value)
    if mode is None:
        raise InvalidArgument(f"mode {value} is not a known Mode")
    return mode


def seconds_from_duration(value: Duration, field_name: str) -> float:
    """A non-negative Duration as float seconds.

    Raises:
        InvalidArgument: negative, or absurdly long.
    """
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument(f"{field_name} must not be negative")
    if value.seconds > _MAX_DURATION_SECONDS:
        raise InvalidArgument(f"{field_name} is longer than {_MAX_DURATION_SECONDS} seconds")
    return value.seconds + value.nanos / 1e9


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def authorization_to_proto(authorization: Authorization) -> pb.Authorization:
    """The wire form of an Authorization."""
    return pb.Authorization(
        header_value=authorization.header_value.reveal(),
        scheme=_SCHEMES[authorization.scheme],
        identity=authorization.identity,
        agent_runtime_id=authorization.agent_runtime_id,
        task_id=authorization.task_id,
        task_kind=_TASK_KINDS[authorization.task_kind],
        issued_at=_timestamp(authorization.issued_at),
        expires_at=_timestamp(authorization.expires_at),
        fallback_reason=_FALLBACKS[authorization.fallback_reason],
        headers=authorization.companion_headers,
        thread_id=public_thread(authorization.thread_id),
        backend_origin=authorization.backend_origin,
    )


def task_to_proto(identity: str, task: TaskRecord) -> pb.Task:
    """The wire form of a task."""
    return pb.Task(
        identity=identity,
        agent_runtime_id=task.agent_runtime_id,
        task_id=task.task_id,
        task_kind=_TASK_KINDS[task.kind],
        thread_id=public_thread(task.thread_id or ""),
        registered_at=_timestamp(task.registered_at),
    )


def identity_to_proto(
    runtime: IdentityRuntime, record: IdentityRecord | None, background: TaskRecord | None
) -> pb.Identity:
    """Public facts of an identity; no key material."""
    spec = runtime.spec
    return pb.Identity(
        name=spec.name,
        agent_runtime_id=record.agent_runtime_id if record else "",
        public_key_ssh=record.key.public_key_ssh if record else "",
        registered_at=_timestamp(record.registered_at if record else None),
        has_background_task=background is not None,
        account_id=spec.account_id or "",
        profile=spec.profile.value,
        source=record.source if record else "register",
        registered=record is not None,
    )
