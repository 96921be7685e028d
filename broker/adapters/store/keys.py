"""The store's key schema (DESIGN §4), one function per key.

Every key of one identity carries the hash tag ``{<identity>}``, so all of them live on one Redis
Cluster slot and multi-key scripts stay legal on a cluster. Task keys also carry the agent runtime id,
so a rotated identity can never be served a task of its predecessor::

    cb:{<identity>}:identity                              HASH
    cb:{<identity>}:<runtime_id>:task:background          HASH
    cb:{<identity>}:<runtime_id>:task:thread:<thread_id>  HASH (TTL)
    cb:{<identity>}:assertion:<task_id>                   STRING (PX TTL)
    cb:{<identity>}:lock:<name>                           STRING (PX TTL)

Identity names are validated (``[A-Za-z0-9_.-]{1,64}``) before they reach the store, so they never
contain ``{``, ``}`` or a newline; the hash tag is therefore always exactly the identity.
"""

from __future__ import annotations

from typing import Final

from broker.core.credentials.model import BACKGROUND

__all__ = [
    "INVALIDATION_CHANNEL",
    "assertion_key",
    "identity_key",
    "identity_pattern",
    "lock_key",
    "task_key",
    "validate_slot",
]

PREFIX: Final = "cb"
INVALIDATION_CHANNEL: Final = "cb:invalidations"
"""The pub/sub channel every replica listens on; a message is ``<identity>\\n<slot>``."""

_THREAD_PREFIX: Final = "thread:"


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
    return f"{PREFIX}:{{{identity}}}:{agent_runtime_id}:task:{validate_slot(slot)}"


def assertion_key(identity: str, task_id: str) -> str:
    """``cb:{<identity>}:assertion:<task_id>``: a cached, sealed assertion (STRING)."""
    return f"{PREFIX}:{{{identity}}}:assertion:{task_id}"


def account_key(identity: str) -> str:
    """``cb:{<identity>}:account``: the identity's login, tokens sealed (HASH)."""
    return f"{PREFIX}:{{{identity}}}:account"


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
