"""Re-seal every secret in Redis under the primary KEK (KEK rotation, step two).

Rotation: put the new KEK first in ``BROKER_KEK_FILE`` with the old one after it and roll the
replicas (they seal with the new key and still open the old); then run ``credential-broker kek
reseal``, which opens each sealed value with whichever configured KEK it names and writes it back
sealed under the primary; finally drop the old KEK from the file. Each write is a compare-and-set
(only if the value is still the one that was read), so a replica writing at the same moment is never
overwritten, and TTLs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from broker.adapters.sealing import KekSealer
from broker.adapters.store import keys
from broker.adapters.store._account_codec import TOKENS_FIELD
from broker.adapters.store._codec import PRIVATE_KEY_FIELD, field_associated_data
from broker.adapters.store._redis_client import RedisClient
from broker.errors import SealingError

# Which field of which HASH is sealed: the identity's private key and the login's tokens.
_SEALED_HASH_FIELDS: Final = {"identity": PRIVATE_KEY_FIELD, "account": TOKENS_FIELD}
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


@dataclass(slots=True)
class ResealReport:
    """What a re-seal pass did."""

    scanned: int = 0
    resealed: int = 0
    already_current: int = 0
    unreadable: int = 0
    changed_meanwhile: int = 0


async def reseal_all(client: RedisClient, sealer: KekSealer) -> ResealReport:
    """Re-seal every private key, login and cached assertion under ``sealer``'s primary KEK.

    Values that no configured KEK opens are counted as unreadable and left alone (a broker
    discards them as corrupt when it next reads them).
    """
    report = ResealReport()
    set_field_if = client.register_script(_SET_HASH_FIELD_IF)
    set_string_if = client.register_script(_SET_STRING_IF)
    async for raw_key in client.scan_iter(match=f"{keys.PREFIX}:{{*", count=500):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        hash_field = _SEALED_HASH_FIELDS.get(key.rsplit(":", 1)[-1])
        if hash_field is not None:
            field: str | None = hash_field
            sealed = await client.hget(key, hash_field)
            associated_data = field_associated_data(key, hash_field)
        elif ":assertion:" in key:
            field = None
            sealed = await client.get(key)
            associated_data = key.encode()
        else:
            continue
        if not isinstance(sealed, bytes):
            continue
        report.scanned += 1
        if sealer.key_id_of(sealed) == sealer.primary_key_id:
            report.already_current += 1
            continue
        try:
            fresh = sealer.seal(sealer.open(sealed, associated_data), associated_data)
        except SealingError:
            report.unreadable += 1
            continue
        if field is not None:
            done = await set_field_if(keys=[key], args=[field, sealed, fresh])
        else:
            done = await set_string_if(keys=[key], args=[sealed, fresh])
        if done:
            report.resealed += 1
        else:
            report.changed_meanwhile += 1
    return report
