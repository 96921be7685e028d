"""Human biscuits: single-use credentials bound to one method and URL (protocol §4.1, G1).

The emulator's policy (§12, §14.3): a biscuit is valid for a fixed lifetime from minting, authorises
exactly the ``X-Original-Method`` + ``X-Original-Url`` it was minted for, and is spent by its first
use, successful or not.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.core.credentials.ports import Clock
from cb_emulator.model import EmulatorAccount, Rejection


@dataclass(frozen=True, slots=True)
class _Biscuit:
    method: str
    url: str
    account: EmulatorAccount
    expires_at: datetime


class BiscuitBook:
    """The live biscuits of one emulator.

    Args:
        clock: time source for expiry.
        ttl_seconds: how long a minted biscuit stays usable.
    """

    def __init__(self, clock: Clock, ttl_seconds: float) -> None:
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)
        self._biscuits: dict[str, _Biscuit] = {}

    def mint(self, account: EmulatorAccount, method: str, url: str) -> str:
        """A new biscuit for ``account``'s one ``method`` + ``url`` call (§4.1 step 1)."""
        now = self._clock.now()
        self._biscuits = {k: b for k, b in self._biscuits.items() if b.expires_at > now}
        value = "bsct_" + secrets.token_urlsafe(32)
        self._biscuits[value] = _Biscuit(method.upper(), url, account, now + self._ttl)
        return value

    def consume(self, value: str, method: str, url: str) -> EmulatorAccount:
        """Spend a biscuit on ``method`` + ``url``; it is gone afterwards whatever the outcome.

        Raises:
            Rejection: 401 ``unknown_biscuit``, ``biscuit_expired`` or ``biscuit_mismatch``.
        """
        biscuit = self._biscuits.pop(value.strip(), None)
        if biscuit is None:
            raise Rejection(401, "unknown_biscuit", "the biscuit is unknown or already used")
        if biscuit.expires_at <= self._clock.now():
            raise Rejection(401, "biscuit_expired", "the biscuit has expired")
        if biscuit.method != method.upper() or biscuit.url != url:
            raise Rejection(
                401, "biscuit_mismatch", "the biscuit was minted for another method or URL"
            )
        return biscuit.account

    def clear(self) -> None:
        """Forget every biscuit."""
        self._biscuits.clear()
