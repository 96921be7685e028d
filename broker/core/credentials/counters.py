"""What the authorizer counts: one typed field per counter, so a misspelt name fails the type check.

``broker.stats`` reports :meth:`AuthorizerCounters.snapshot` under ``authorizer`` (the dashboard reads
it), ``/metrics`` reads the fields. Counts are cumulative since the process started.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from broker.core.credentials.model import FallbackReason

BEARER_PREFIX = "bearer."
"""``snapshot`` names Bearer answers ``bearer.<fallback reason>``."""


def _by_reason() -> dict[FallbackReason, int]:
    return {reason: 0 for reason in FallbackReason if reason is not FallbackReason.NONE}


@dataclass(slots=True)
class AuthorizerCounters:
    """The authorizer's cumulative counts on this replica."""

    l1_hit: int = 0
    """Assertions served from this process's cache."""
    l1_miss: int = 0
    """Requests that looked past this process's cache."""
    l2_hit: int = 0
    """Assertions taken from the shared store (another replica's, or an earlier process's)."""
    assertion_minted: int = 0
    """Assertions signed here."""
    rejection_stale: int = 0
    """Rejection reports about a header that was already replaced."""
    rejection_refused: int = 0
    """Rejection reports naming a header this broker did not issue."""
    rejection_throttled: int = 0
    """Rejection reports answered without a replacement (one per slot per interval)."""
    bearer: dict[FallbackReason, int] = field(default_factory=_by_reason)
    """Bearer answers by fallback reason."""

    @property
    def assertions(self) -> int:
        """Assertion answers, from any cache level or freshly minted."""
        return self.l1_hit + self.l2_hit + self.assertion_minted

    def snapshot(self) -> dict[str, int]:
        """The counters that counted anything, by name (``bearer.<reason>`` for the Bearer ones),
        as ``broker.stats`` reports them."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "bearer"}
        counts.update({BEARER_PREFIX + r.value: n for r, n in self.bearer.items()})
        return {name: count for name, count in counts.items() if count}
