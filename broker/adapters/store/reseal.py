"""Re-seal every secret in Redis under the primary KEK (KEK rotation, step two).

Rotation: put the new KEK first in ``BROKER_KEK_FILE`` with the old one after it and roll the
replicas (they seal with the new key and still open the old); then run ``credential-broker kek
reseal``, which opens each sealed value with whichever configured KEK it names and writes it back
sealed under the primary; finally drop the old KEK from the file. Each write is a compare-and-set
(only if the value is still the one that was read), so a replica writing at the same moment is never
overwritten, and TTLs are kept.

Keys are classified by parsing them against the key schema (:func:`keys.parse_key`), never by what
their names contain, so a thread id cannot make a task record pass for a sealed value. A key the
pass cannot handle (a name outside the schema, such as one an older broker wrote for a thread id
holding ``:``; a value of another Redis type than its name says; a value no configured KEK opens)
is skipped, counted and logged as ``store.reseal_skipped``, and the pass goes on: one odd key never
stops a rotation. The command exits non-zero at the end when anything was skipped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import structlog
from redis.exceptions import ResponseError

from broker.adapters.sealing import KekSealer
from broker.adapters.store import keys
from broker.adapters.store._account_codec import TOKENS_FIELD
from broker.adapters.store._codec import PRIVATE_KEY_FIELD, sealed_associated_data
from broker.adapters.store._redis_client import RedisClient
from broker.errors import SealingError
from broker.events import Event

log = structlog.get_logger("broker.reseal")

# Which field of which HASH is sealed: the identity's private key and the login's tokens.
_SEALED_HASH_FIELDS: Final = {
    keys.KeyKind.IDENTITY: PRIVATE_KEY_FIELD,
    keys.KeyKind.ACCOUNT: TOKENS_FIELD,
}
_SET_HASH_FIELD_IF: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
_SET_STRING_IF: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


class SkipReason(enum.StrEnum):
    """Why a key was left alone (the ``reason`` of ``store.reseal_skipped``)."""

    UNRECOGNISED_KEY = "unrecognised_key"
    """The name is under the prefix but outside the key schema."""
    WRONG_TYPE = "wrong_type"
    """The value is of another Redis type than the schema gives that name."""
    UNREADABLE = "unreadable"
    """No configured KEK opens the value (a broker discards it when it next reads it)."""


@dataclass(slots=True)
class ResealReport:
    """What a re-seal pass did.

    ``skipped`` counts keys the pass could not handle (wrong name or type); ``unreadable`` counts
    values no configured KEK opens. Both are logged one key at a time.
    """

    scanned: int = 0
    resealed: int = 0
    already_current: int = 0
    unreadable: int = 0
    changed_meanwhile: int = 0
    skipped: int = 0

    @property
    def complete(self) -> bool:
        """Whether every key was handled (nothing skipped, nothing unreadable)."""
        return self.skipped == 0 and self.unreadable == 0


def _is_wrong_type(exc: ResponseError) -> bool:
    # A script's error may carry a prefix naming the script (older servers): look inside.
    return "WRONGTYPE" in str(exc)


def _text(name: object) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


async def reseal_all(client: RedisClient, sealer: KekSealer) -> ResealReport:
    """Re-seal every private key, login and cached assertion under ``sealer``'s primary KEK.

    Keys it cannot handle and values that no configured KEK opens are counted, logged and left
    alone (a broker discards unreadable values as corrupt when it next reads them).

    Raises:
        redis.exceptions.RedisError: Redis failed or refused a command for another reason than a
            key's type (the pass stops; nothing half-written is left behind).
    """
    report = ResealReport()
    set_field_if = client.register_script(_SET_HASH_FIELD_IF)
    set_string_if = client.register_script(_SET_STRING_IF)

    def skip(key: str, reason: SkipReason) -> None:
        if reason is SkipReason.UNREADABLE:
            report.unreadable += 1
        else:
            report.skipped += 1
        log.warning(Event.STORE_RESEAL_SKIPPED, key=key, reason=reason.value)

    async for raw_key in client.scan_iter(match=f"{keys.PREFIX}:{{*", count=500):
        key = _text(raw_key)
        parsed = keys.parse_key(key)
        if parsed is None:
            skip(key, SkipReason.UNRECOGNISED_KEY)
            continue
        field = _SEALED_HASH_FIELDS.get(parsed.kind)
        if field is None and parsed.kind is not keys.KeyKind.ASSERTION:
            continue  # holds no secret
        try:
            if field is None:
                sealed = await client.get(key)
                associated_data = key.encode()
            else:
                record = {
                    _text(name): value if isinstance(value, bytes) else str(value).encode()
                    for name, value in (await client.hgetall(key)).items()
                }
                sealed = record.get(field)
                associated_data = sealed_associated_data(key, field, record)
            if not isinstance(sealed, bytes):
                continue  # gone since the scan, or a record without a sealed field
            report.scanned += 1
            if sealer.key_id_of(sealed) == sealer.primary_key_id:
                report.already_current += 1
                continue
            try:
                fresh = sealer.seal(sealer.open(sealed, associated_data), associated_data)
            except SealingError:
                skip(key, SkipReason.UNREADABLE)
                continue
            if field is not None:
                done = await set_field_if(keys=[key], args=[field, sealed, fresh])
            else:
                done = await set_string_if(keys=[key], args=[sealed, fresh])
        except ResponseError as exc:
            if not _is_wrong_type(exc):
                raise
            skip(key, SkipReason.WRONG_TYPE)
            continue
        if done:
            report.resealed += 1
        else:
            report.changed_meanwhile += 1
    return report
