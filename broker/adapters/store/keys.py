"""The store's key schema (DESIGN §4), one function per key.

Every key of one identity carries the hash tag ``{<identity>}``, so all of them live on one Redis
Cluster slot and multi-key scripts stay legal on a cluster. Task keys also carry the agent runtime id,
so a rotated identity can never be served a task of its predecessor::

    cb:{<identity>}:identity                              HASH
    cb:{<identity>}:account                               HASH
    cb:{<identity>}:route                                 STRING (PX TTL)
    cb:{<identity>}:<runtime_id>:task:background          HASH
    cb:{<identity>}:<runtime_id>:task:thread:<thread_id>  HASH (TTL)
    cb:{<identity>}:assertion:<task_id>                   STRING (PX TTL)
    cb:{<identity>}:lock:<name>                           STRING (PX TTL)
    cb:{<identity>}:cooldown:<name>                       STRING (PX TTL)

Identity names are validated (``[A-Za-z0-9_.-]{1,64}``) before they reach the store, so they never
contain ``{``, ``}`` or a newline; the hash tag is therefore always exactly the identity.

Identifiers that others choose (thread ids from callers; runtime ids and task ids from the control
plane) are written with :func:`encode_part`: ``%``, ``:``, ``{``, ``}``, whitespace, control and
non-ASCII characters become ``%XX`` (UTF-8), everything else stays as it is. Each of them is
therefore exactly one ``:``-separated segment, and a key's kind follows from the schema's fixed
positions (:func:`parse_key`), never from what a caller put in its thread id: ``a:assertion:b`` is
stored as ``a%3Aassertion%3Ab`` inside a task key. The encoding is the identity on every other
string, so the keys of ordinary ids (UUIDs, ``thread-42``, the control plane's ``agent-…`` and
``task-…`` ids) are byte for byte those an older broker wrote, and a deployment keeps reading them
across the upgrade. Only an id holding one of the encoded characters moves to a new key: its old
thread-task key is no longer read (the thread gets a new task once, as after the key's TTL) and
``kek reseal`` reports it as an unrecognised key until it expires or is deleted.

Lock and cooldown names are the broker's own strings (a lock name may end in a slot, so in a raw
thread id); a key whose first segment after the hash tag is ``lock`` or ``cooldown`` is one, and the
rest of it is never parsed.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from broker.core.credentials.model import BACKGROUND

__all__ = [
    "INVALIDATION_CHANNEL",
    "KeyKind",
    "ParsedKey",
    "assertion_key",
    "decode_part",
    "encode_part",
    "identity_key",
    "identity_pattern",
    "lock_key",
    "parse_key",
    "route_key",
    "task_key",
    "validate_slot",
]

PREFIX: Final = "cb"
INVALIDATION_CHANNEL: Final = "cb:invalidations"
"""The pub/sub channel every replica listens on; a message is ``<identity>\\n<slot>``."""

_THREAD_PREFIX: Final = "thread:"
_PART_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%:{}")
"""Printable ASCII but the separator, the hash-tag braces and the escape: kept as they are."""
_HASH_TAG: Final = re.compile(
    rf"{PREFIX}:\{{(?P<identity>[A-Za-z0-9_.-]{{1,64}})\}}:(?P<rest>.+)", re.S
)


def encode_part(value: str) -> str:
    """``value`` as one key segment: ``%``, ``:``, ``{``, ``}`` and non-printables as ``%XX``.

    The identity on printable ASCII without those four characters, and injective: distinct values
    give distinct segments.
    """
    return quote(value, safe=_PART_SAFE)


def decode_part(segment: str) -> str | None:
    """The value :func:`encode_part` turned into ``segment``, or ``None`` if it made no such thing.

    Only canonical encodings decode: an empty segment, a raw ``:``/``{``/``}``, a stray ``%``,
    lower-case or needless escapes and invalid UTF-8 are refused, so one value has one key.
    """
    if not segment:
        return None
    try:
        value = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None
    return value if encode_part(value) == segment else None


def validate_slot(slot: str) -> str:
    """Return ``slot`` if it is ``background`` or ``thread:<thread_id>``.

    Args:
        slot: a task slot.

    Raises:
        ValueError: any other string.
    """
    if slot == BACKGROUND or (slot.startswith(_THREAD_PREFIX) and len(slot) > len(_THREAD_PREFIX)):
        return slot
    raise ValueError("slot must be 'background' or 'thread:<thread_id>'")


def identity_key(identity: str) -> str:
    """``cb:{<identity>}:identity``: the identity record (HASH)."""
    return f"{PREFIX}:{{{identity}}}:identity"


def task_key(identity: str, agent_runtime_id: str, slot: str) -> str:
    """``cb:{<identity>}:<runtime_id>:task:<slot>``: a task record (HASH).

    Raises:
        ValueError: ``slot`` is neither ``background`` nor ``thread:<thread_id>``.
    """
    slot = validate_slot(slot)
    if slot != BACKGROUND:
        slot = _THREAD_PREFIX + encode_part(slot.removeprefix(_THREAD_PREFIX))
    return f"{PREFIX}:{{{identity}}}:{encode_part(agent_runtime_id)}:task:{slot}"


def assertion_key(identity: str, task_id: str) -> str:
    """``cb:{<identity>}:assertion:<task_id>``: a cached, sealed assertion (STRING)."""
    return f"{PREFIX}:{{{identity}}}:assertion:{encode_part(task_id)}"


def account_key(identity: str) -> str:
    """``cb:{<identity>}:account``: the identity's login, tokens sealed (HASH)."""
    return f"{PREFIX}:{{{identity}}}:account"


def route_key(identity: str) -> str:
    """``cb:{<identity>}:route``: the account's workspace route, JSON, no secret (STRING, PX)."""
    return f"{PREFIX}:{{{identity}}}:route"


def cooldown_key(identity: str, name: str) -> str:
    """``cb:{<identity>}:cooldown:<name>``: a fleet-wide back-off marker (STRING with PX TTL)."""
    return f"{PREFIX}:{{{identity}}}:cooldown:{name}"


def lock_key(identity: str, name: str) -> str:
    """``cb:{<identity>}:lock:<name>``: a single-flight lock holding its fencing token (STRING)."""
    return f"{PREFIX}:{{{identity}}}:lock:{name}"


def identity_pattern(identity: str) -> str:
    """``cb:{<identity>}:*``: a SCAN ``MATCH`` pattern for every key of one identity.

    Redis glob patterns give ``{`` and ``}`` no meaning, and identity names hold no glob characters.
    """
    return f"{PREFIX}:{{{identity}}}:*"


def live_threads_key(identity: str) -> str:
    """``cb:{<identity>}:threads``: the identity's live thread tasks (ZSET member -> expiry ms)."""
    return f"{PREFIX}:{{{identity}}}:threads"


def budget_key(identity: str, budget: str) -> str:
    """``cb:{<identity>}:budget:<budget>``: a thread-task token bucket's arrival time (STRING, PX).

    The budget's name (``identity``, ``caller:<caller name>``) is percent-encoded, so a caller
    name from configuration can never add a ``:`` segment to the key.
    """
    return f"{PREFIX}:{{{identity}}}:budget:{quote(budget, safe='-_.')}"


# -- reading key names back ------------------------------------------------------------------------


class KeyKind(enum.Enum):
    """What a key of the schema holds."""

    IDENTITY = "identity"
    ACCOUNT = "account"
    ROUTE = "route"
    TASK = "task"
    ASSERTION = "assertion"
    LOCK = "lock"
    COOLDOWN = "cooldown"
    THREADS = "threads"
    BUDGET = "budget"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key name read back against the schema.

    Attributes:
        kind: what the key holds.
        identity: the identity of its hash tag.
        agent_runtime_id: the runtime of a task key.
        slot: ``background`` or ``thread:<thread_id>`` (thread id decoded) for a task key.
        task_id: the task of an assertion key (decoded).
        name: the name of a lock, cooldown or budget key, as it appears in the key.
    """

    kind: KeyKind
    identity: str
    agent_runtime_id: str | None = None
    slot: str | None = None
    task_id: str | None = None
    name: str | None = None

    @property
    def thread_id(self) -> str | None:
        """The thread id of a thread-task key, else ``None``."""
        if self.slot is None or not self.slot.startswith(_THREAD_PREFIX):
            return None
        return self.slot.removeprefix(_THREAD_PREFIX)


_FIXED: Final = {
    "identity": KeyKind.IDENTITY,
    "account": KeyKind.ACCOUNT,
    "route": KeyKind.ROUTE,
    "threads": KeyKind.THREADS,
}
_NAMED: Final = {"lock": KeyKind.LOCK, "cooldown": KeyKind.COOLDOWN, "budget": KeyKind.BUDGET}


def parse_key(key: str) -> ParsedKey | None:
    """Read ``key`` against the schema above; ``None`` if it is not a key this broker writes.

    The kind comes from fixed positions after the hash tag, and encoded identifiers must be one
    canonical segment each, so no thread id, runtime id or task id can make one kind of key look
    like another. Keys an older broker wrote for ids holding ``:``, ``%``, ``{`` or ``}`` do not
    parse.
    """
    tagged = _HASH_TAG.fullmatch(key)
    if tagged is None:
        return None
    identity, rest = tagged["identity"], tagged["rest"]
    fixed = _FIXED.get(rest)
    if fixed is not None:
        return ParsedKey(fixed, identity)
    parts = rest.split(":")
    # Task keys first: a runtime id equal to a schema word is still only the first segment.
    if len(parts) in (3, 4) and parts[1] == "task":
        runtime = decode_part(parts[0])
        if runtime is not None and parts[2:] == [BACKGROUND]:
            return ParsedKey(KeyKind.TASK, identity, agent_runtime_id=runtime, slot=BACKGROUND)
        thread = decode_part(parts[3]) if len(parts) == 4 and parts[2] == "thread" else None
        if runtime is not None and thread is not None:
            slot = _THREAD_PREFIX + thread
            return ParsedKey(KeyKind.TASK, identity, agent_runtime_id=runtime, slot=slot)
        return None
    if len(parts) == 2 and parts[0] == "assertion":
        task_id = decode_part(parts[1])
        return None if task_id is None else ParsedKey(KeyKind.ASSERTION, identity, task_id=task_id)
    named = _NAMED.get(parts[0])
    name = rest.partition(":")[2]
    return None if named is None or not name else ParsedKey(named, identity, name=name)
