"""How records are laid out in Redis values, and how a stored value is judged corrupt.

Decoders raise :class:`~broker.errors.StoreCorrupt` with a reason that names what is wrong (a
missing field, a value that does not open) and never contains the value itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from broker.core.credentials.model import (
    CachedAssertion,
    IdentityRecord,
    TaskRecord,
    WorkspaceRouteRecord,
)
from broker.core.credentials.ports import Sealer
from broker.core.protocol.keys import AgentKey
from broker.errors import KeyFormatError, SealingError, StoreCorrupt, StoreUnavailable, UnknownKek
from broker.secret import Secret

PRIVATE_KEY_FIELD: Final = "private_key"
_IDENTITY_FIELDS: Final = (
    "runtime_id",
    "public_key_ssh",
    PRIVATE_KEY_FIELD,
    "account_id",
    "registered_at",
    "source",
)
_TASK_FIELDS: Final = ("task_id", "registered_at")
_ASSERTION_FIELDS: Final = (
    "header_value",
    "agent_runtime_id",
    "task_id",
    "issued_at",
    "expires_at",
)


def field_associated_data(key: str, field: str) -> bytes:
    """The AEAD associated data of a sealed hash field: the key name, NUL, the field name."""
    return f"{key}\x00{field}".encode()


BOUND_FIELD: Final = "bound"
"""Names, comma-separated, the plain fields of a record bound into its sealed field."""


def sealed_associated_data(key: str, field: str, fields: Mapping[str, bytes]) -> bytes:
    """The associated data of the sealed ``field`` of a hash record whose fields are ``fields``.

    The plain fields beside a sealed one (a login's ``state``, ``version``, ``burned_refresh``; an
    identity's runtime id, account and source) are bound into it: the writer names them in
    ``bound`` and their values, length-prefixed in that order, join the key and field names in the
    associated data. Anyone who can write Redis but lacks the KEK can then neither flip one of them
    nor shorten the list: the sealed field stops opening and the record is judged corrupt. A record
    without ``bound`` was written before fields were bound and opens with the key and field names
    alone; a bound record cannot be turned into one (its seal does not open without the list).
    Replaying a whole, older record is not detected here: it needs state outside Redis.
    """
    listed = fields.get(BOUND_FIELD)
    if not listed:
        return field_associated_data(key, field)
    parts = [field_associated_data(key, field), b"\x00", listed]
    for name in listed.decode("utf-8", errors="replace").split(","):
        value = fields.get(name, b"")
        parts += [b"\x00", str(len(value)).encode(), b":", value]
    return b"".join(parts)


def seal_bound(
    fields: dict[str, bytes], field: str, plaintext: bytes, key: str, sealer: Sealer
) -> dict[str, bytes]:
    """``fields`` (the record's plain fields) plus ``bound`` and ``field`` sealed over them all."""
    fields[BOUND_FIELD] = ",".join(sorted(fields)).encode()
    fields[field] = sealer.seal(plaintext, sealed_associated_data(key, field, fields))
    return fields


def _text(fields: Mapping[str, bytes], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise StoreCorrupt(f"field {name!r} is missing")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreCorrupt(f"field {name!r} is not UTF-8") from None


def _timestamp(text: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise StoreCorrupt(f"field {name!r} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        raise StoreCorrupt(f"field {name!r} has no UTC offset")
    return moment


def iso(moment: datetime, name: str) -> str:
    """ISO-8601 text of an aware timestamp.

    Raises:
        ValueError: ``moment`` is naive (it would be unreadable, hence discarded, on the next load).
    """
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment.isoformat()


def _open(sealer: Sealer, sealed: bytes, associated_data: bytes, what: str) -> bytes:
    try:
        return sealer.open(sealed, associated_data)
    except UnknownKek as exc:
        # Another replica already seals with a newer KEK (a rotation being rolled out): the value
        # is fine, this replica just cannot read it yet. Deleting it would destroy the identity.
        raise StoreUnavailable(
            f"{what}: {exc.message}; add that KEK to BROKER_KEK_FILE on this replica"
        ) from None
    except SealingError as exc:
        raise StoreCorrupt(f"{what}: {exc.message}") from None


# -- identity ------------------------------------------------------------------------------------


def encode_identity(record: IdentityRecord, key: str, sealer: Sealer) -> dict[str, bytes]:
    """The HASH fields of an identity record, its private key sealed to ``key`` and the field."""
    private_key = record.key.to_pkcs8_base64().encode("ascii")
    fields = {
        "runtime_id": record.agent_runtime_id.encode(),
        "public_key_ssh": record.key.public_key_ssh.encode("ascii"),
        "account_id": record.account_id.encode(),
        "registered_at": iso(record.registered_at, "registered_at").encode("ascii"),
        "source": record.source.encode(),
    }
    if record.user_id is not None:
        fields["user_id"] = record.user_id.encode()
    return seal_bound(fields, PRIVATE_KEY_FIELD, private_key, key, sealer)


def decode_identity(
    identity: str, fields: Mapping[str, bytes], key: str, sealer: Sealer
) -> IdentityRecord:
    """Rebuild an identity record; the stored public key must match the unsealed private key.

    Raises:
        StoreCorrupt: a field is missing or malformed, or the private key does not open.
    """
    for name in _IDENTITY_FIELDS:
        if name not in fields:
            raise StoreCorrupt(f"field {name!r} is missing")
    sealed = fields[PRIVATE_KEY_FIELD]
    associated_data = sealed_associated_data(key, PRIVATE_KEY_FIELD, fields)
    pkcs8 = _open(sealer, sealed, associated_data, PRIVATE_KEY_FIELD)
    try:
        agent_key = AgentKey.from_pkcs8_base64(pkcs8.decode("ascii"))
    except (UnicodeDecodeError, KeyFormatError):
        raise StoreCorrupt(
            f"field {PRIVATE_KEY_FIELD!r} does not hold an Ed25519 PKCS#8 key"
        ) from None
    if agent_key.public_key_ssh != _text(fields, "public_key_ssh"):
        raise StoreCorrupt("field 'public_key_ssh' does not match the private key")
    user_id = _text(fields, "user_id") if "user_id" in fields else None
    return IdentityRecord(
        name=identity,
        agent_runtime_id=_text(fields, "runtime_id"),
        key=agent_key,
        account_id=_text(fields, "account_id"),
        user_id=user_id,
        registered_at=_timestamp(_text(fields, "registered_at"), "registered_at"),
        source=_text(fields, "source"),
    )


# -- tasks ---------------------------------------------------------------------------------------


def encode_task(task: TaskRecord) -> dict[str, bytes]:
    """The HASH fields of a task record (its runtime id and slot are in the key name)."""
    return {
        "task_id": task.task_id.encode(),
        "registered_at": iso(task.registered_at, "registered_at").encode("ascii"),
    }


def decode_task(agent_runtime_id: str, slot: str, fields: Mapping[str, bytes]) -> TaskRecord:
    """Rebuild a task record.

    Raises:
        StoreCorrupt: a field is missing or malformed.
    """
    for name in _TASK_FIELDS:
        if name not in fields:
            raise StoreCorrupt(f"field {name!r} is missing")
    task_id = _text(fields, "task_id")
    if not task_id:
        raise StoreCorrupt("field 'task_id' is empty")
    return TaskRecord(
        agent_runtime_id=agent_runtime_id,
        task_id=task_id,
        slot=slot,
        registered_at=_timestamp(_text(fields, "registered_at"), "registered_at"),
    )


# -- assertions ----------------------------------------------------------------------------------


def encode_assertion(assertion: CachedAssertion, key: str, sealer: Sealer) -> bytes:
    """The sealed STRING value of a cached assertion (a JSON object sealed to ``key``)."""
    payload = {
        "header_value": assertion.header_value.reveal(),
        "agent_runtime_id": assertion.agent_runtime_id,
        "task_id": assertion.task_id,
        "issued_at": iso(assertion.issued_at, "issued_at"),
        "expires_at": iso(assertion.expires_at, "expires_at"),
    }
    return sealer.seal(json.dumps(payload, separators=(",", ":")).encode(), key.encode())


def decode_assertion(value: bytes, key: str, task_id: str, sealer: Sealer) -> CachedAssertion:
    """Open and rebuild a cached assertion of ``task_id``.

    Raises:
        StoreCorrupt: it does not open, is not the expected JSON object, or names another task.
    """
    plaintext = _open(sealer, value, key.encode(), "assertion")
    try:
        payload = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StoreCorrupt("assertion is not a JSON object") from None
    if not isinstance(payload, dict):
        raise StoreCorrupt("assertion is not a JSON object")
    for name in _ASSERTION_FIELDS:
        if not isinstance(payload.get(name), str):
            raise StoreCorrupt(f"assertion field {name!r} is missing or not a string")
    if payload["task_id"] != task_id:
        raise StoreCorrupt("assertion names another task than its key")
    return CachedAssertion(
        header_value=Secret(payload["header_value"]),
        agent_runtime_id=payload["agent_runtime_id"],
        task_id=payload["task_id"],
        issued_at=_timestamp(payload["issued_at"], "issued_at"),
        expires_at=_timestamp(payload["expires_at"], "expires_at"),
    )


# -- workspace routes ----------------------------------------------------------------------------


def encode_route(route: WorkspaceRouteRecord) -> bytes:
    """The STRING value of a workspace route: JSON, unsealed (it holds no secret)."""
    payload = {
        "account_id": route.account_id,
        "token_fingerprint": route.token_fingerprint,
        "origin": route.origin,
        "override": route.override,
        "discovered_at": iso(route.discovered_at, "discovered_at"),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_route(value: bytes) -> WorkspaceRouteRecord:
    """Rebuild a workspace route.

    Raises:
        StoreCorrupt: not the expected JSON object.
    """
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StoreCorrupt("route is not a JSON object") from None
    if not isinstance(payload, dict):
        raise StoreCorrupt("route is not a JSON object")
    for name in ("account_id", "token_fingerprint", "origin", "discovered_at"):
        if not isinstance(payload.get(name), str):
            raise StoreCorrupt(f"route field {name!r} is missing or not a string")
    override = payload.get("override")
    if override is not None and not isinstance(override, str):
        raise StoreCorrupt("route field 'override' is not a string")
    return WorkspaceRouteRecord(
        account_id=payload["account_id"],
        token_fingerprint=payload["token_fingerprint"],
        origin=payload["origin"],
        override=override,
        discovered_at=_timestamp(payload["discovered_at"], "discovered_at"),
    )
