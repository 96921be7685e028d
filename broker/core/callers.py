"""Who may ask for what: caller policies, authentication by token hash or certificate, rate limits.

Callers authenticate with a per-caller token (sent as ``authorization: Bearer <token>`` metadata; the
configuration holds only its SHA-256, compared in constant time) or with a client certificate whose
subject CN or a SAN names them. Each caller's policy says which identities it may use, whether it may
receive a Bearer fallback (the account's own token) or ask for Bearer-only, whether it may use the
admin service, and its rate limit (a token bucket per caller and replica).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from broker.core.credentials.ports import Clock
from broker.errors import BearerNotAllowed, CallerDenied, RateLimited


def hash_token(token: str) -> str:
    """The hex SHA-256 of a caller token, as configuration stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class CallerPolicy:
    """One caller and its rights.

    Attributes:
        name: how logs and usage counters name the caller.
        identities: identity names it may use; ``None`` means all.
        bearer_fallback: may receive the account's Bearer when the protocol falls back.
        bearer_only: may ask for ``MODE_BEARER_ONLY``.
        admin: may call the admin service.
        rate_per_second: sustained request rate; ``None`` means unlimited.
        burst: bucket size of the rate limit.
        token_sha256: hex SHA-256 of its token, if it authenticates by token.
        cert_names: certificate CN/SAN values that name it, if it authenticates by mTLS.
        share_threads: its thread ids name the same tasks as every other sharing caller's; by
            default a caller's threads are its own (another caller's same thread id is another
            task), so no caller can use, or report and replace, a thread task it did not start.
    """

    name: str
    identities: frozenset[str] | None = None
    bearer_fallback: bool = False
    bearer_only: bool = False
    admin: bool = False
    rate_per_second: float | None = None
    burst: float = 0.0
    token_sha256: str | None = None
    cert_names: tuple[str, ...] = ()
    share_threads: bool = False

    @property
    def thread_scope(self) -> str | None:
        """The namespace of this caller's thread ids (``None``: the shared one)."""
        return None if self.share_threads else self.name

    def may_use(self, identity: str) -> bool:
        """Whether the policy admits ``identity``."""
        return self.identities is None or identity in self.identities

    def check_identity(self, identity: str) -> None:
        """Raise :class:`CallerDenied` unless the caller may use ``identity``."""
        if not self.may_use(identity):
            raise CallerDenied(
                f"caller {self.name!r} may not use identity {identity!r}", rule="identity"
            )

    def check_bearer_only(self) -> None:
        """Raise :class:`CallerDenied` unless the caller may ask for Bearer-only headers."""
        if not self.bearer_only:
            raise CallerDenied(
                f"caller {self.name!r} may not ask for bearer-only headers", rule="bearer_only"
            )

    def check_bearer_fallback(self, reason: str) -> None:
        """Raise :class:`BearerNotAllowed` unless the caller may receive a Bearer fallback."""
        if not self.bearer_fallback:
            raise BearerNotAllowed(
                f"no assertion is possible ({reason}) and caller {self.name!r} may not receive "
                "the account's Bearer token",
                rule="bearer_fallback",
            )

    def check_admin(self) -> None:
        """Raise :class:`CallerDenied` unless the caller may use the admin service."""
        if not self.admin:
            raise CallerDenied(f"caller {self.name!r} may not use the admin service", rule="admin")


# With no callers configured the broker serves loopback only (checked at start) to one implicit,
# fully trusted local caller: the development set-up.
# The one caller of an open (callers-less, loopback) broker: everyone is it, so threads are shared.
LOCAL_CALLER = CallerPolicy(
    name="local", bearer_fallback=True, bearer_only=True, admin=True, share_threads=True
)


# The broker's own requests (admin operations, watch refreshes, in-process use): every right, and no
# thread-task budget or thread namespace of its own.
INTERNAL_CALLER = CallerPolicy(
    name="internal", bearer_fallback=True, bearer_only=True, admin=True, share_threads=True
)


class _Bucket:
    __slots__ = ("level", "updated")

    def __init__(self, level: float, updated: float) -> None:
        self.level = level
        self.updated = updated


class CallerRegistry:
    """Finds the caller behind a credential and meters its rate."""

    def __init__(self, policies: Iterable[CallerPolicy], clock: Clock) -> None:
        """Args:
        policies: the configured callers (empty: the implicit local caller only).
        clock: for the rate limit buckets.
        """
        self._policies = tuple(policies)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._by_cert_name: Mapping[str, CallerPolicy] = {
            name: policy for policy in self._policies for name in policy.cert_names
        }
        self._known_tokens: dict[str, CallerPolicy] = {}
        """Tokens that authenticated before, so a worker's every call costs no hash. Only a
        matching token is kept (at most one per caller): an unknown token cannot grow it, and it
        goes through the constant-time comparison every time."""

    @property
    def open(self) -> bool:
        """True when no callers are configured (loopback development mode)."""
        return not self._policies

    def by_token(self, token: str) -> CallerPolicy | None:
        """The caller whose token hash matches, compared in constant time against every caller.

        A token that matched once is found again by a dict lookup. That lookup leaks nothing an
        attacker can use: it compares the token's characters only after a full match of their
        keyed (per-process random) string hash, which a guess cannot aim at.
        """
        known = self._known_tokens.get(token)
        if known is not None:
            return known
        digest = hash_token(token)
        found: CallerPolicy | None = None
        for policy in self._policies:
            if policy.token_sha256 is not None and hmac.compare_digest(digest, policy.token_sha256):
                found = policy
        if found is not None and len(self._known_tokens) < len(self._policies):
            self._known_tokens[token] = found
        return found

    def by_certificate(self, names: Iterable[str]) -> CallerPolicy | None:
        """The caller named by any of a client certificate's CN/SAN values."""
        for name in names:
            policy = self._by_cert_name.get(name)
            if policy is not None:
                return policy
        return None

    def take(self, policy: CallerPolicy) -> None:
        """Spend one request of the caller's rate limit.

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says when one request is available.
        """
        rate = policy.rate_per_second
        if rate is None:
            return
        capacity = max(policy.burst, 1.0)
        now = self._clock.monotonic()
        bucket = self._buckets.get(policy.name)
        if bucket is None:
            bucket = self._buckets[policy.name] = _Bucket(capacity, now)
        bucket.level = min(capacity, bucket.level + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.level < 1.0:
            retry_after = (1.0 - bucket.level) / rate
            raise RateLimited(
                f"caller {policy.name!r} exceeded {rate:g} requests per second",
                rule="rate_limit",
                retry_after=retry_after,
            )
        bucket.level -= 1.0
