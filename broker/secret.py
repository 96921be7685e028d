"""A string wrapper that never shows its value by accident.

``repr``, ``str``, ``format`` and pickling-style introspection all print ``Secret('***')``; the value
is reachable only through :meth:`Secret.reveal`, so every place that uses a secret is greppable.
Two secrets are compared in constant time (:func:`hmac.compare_digest`), so a caller who submits a
guess (a Bearer in a rejection report, say) learns nothing from how long the comparison took.
"""

from __future__ import annotations

import hmac
from typing import Final

_MASK: Final = "Secret('***')"


def _bytes(value: str) -> bytes:
    # compare_digest takes ASCII-only str; bytes take anything (lone surrogates included).
    return value.encode("utf-8", "surrogatepass")


class Secret:
    """An opaque secret string (bearer token, assertion header, biscuit)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value. Call only where the value leaves on purpose."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(_bytes(self._value), _bytes(other._value))

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")
