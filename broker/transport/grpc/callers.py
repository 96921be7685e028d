"""Caller authentication at the gRPC edge: metadata tokens and client certificates.

The interceptor calls :meth:`CallerGate.admit` for every RPC before the handler runs; the admitted
policy is put in :data:`CURRENT_CALLER` (a contextvar, visible to the servicer running in the same
task), and per-caller usage is counted for the admin service.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import structlog

from broker.core.callers import (
    LOCAL_CALLER,
    CallerDenied,
    CallerPolicy,
    CallerRegistry,
    Unauthenticated,
)
from broker.events import Event

log = structlog.get_logger("broker.callers")

CURRENT_CALLER: contextvars.ContextVar[CallerPolicy | None] = contextvars.ContextVar(
    "current_caller", default=None
)
OPEN_METHODS: Final = ("/grpc.health.v1.Health/",)
ADMIN_PREFIX: Final = "/credential_broker.v1.CredentialBrokerAdmin/"
_MAX_TOKEN_LEN: Final = 4096


@dataclass(slots=True)
class CallerUsage:
    """Counters of one caller on this replica."""

    by_code: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    denied: int = 0
    rate_limited: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    """Denials by the policy rule that refused them (``caller.denied``'s ``rule``)."""


def _token_from(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and 0 < len(token.strip()) <= _MAX_TOKEN_LEN:
            return token.strip()
        return None
    return None


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """CN and SAN values of the peer certificate, from a gRPC auth context."""
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for raw in auth_context.get(key, ()):
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                continue
    return names


class CallerGate:
    """Authenticates callers, applies method-level rules and rate limits, counts usage."""

    def __init__(self, registry: CallerRegistry) -> None:
        self._registry = registry
        self.usage: dict[str, CallerUsage] = {}

    def admit(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]],
        auth_context: Mapping[str, Iterable[bytes]],
    ) -> CallerPolicy | None:
        """The caller behind this RPC, or ``None`` for an open method (health).

        Raises:
            Unauthenticated: no credential, or an unknown one.
            CallerDenied: an admin method for a non-admin caller.
            RateLimited: the caller's bucket is empty.
        """
        if method.startswith(OPEN_METHODS):
            return None
        if self._registry.open:
            policy: CallerPolicy | None = LOCAL_CALLER
        else:
            token = _token_from(metadata)
            policy = self._registry.by_token(token) if token is not None else None
            if policy is None:
                policy = self._registry.by_certificate(certificate_names(auth_context))
            if policy is None:
                self._denied("unknown", method, "authentication")
                raise Unauthenticated(
                    "no valid caller credential: send 'authorization: Bearer <caller token>' "
                    "metadata or a client certificate of a configured caller",
                    rule="authentication",
                )
        assert policy is not None  # noqa: S101  (both branches set it)
        try:
            if method.startswith(ADMIN_PREFIX):
                policy.check_admin()
            self._registry.take(policy)
        except CallerDenied as exc:
            self.denied(policy.name, method, exc)
            raise
        return policy

    def denied(self, caller: str, method: str, exc: CallerDenied) -> None:
        """Record and log a denial raised anywhere while serving ``caller``."""
        usage = self.usage.setdefault(caller, CallerUsage())
        if exc.rule == "rate_limit":
            usage.rate_limited += 1
        self._denied(caller, method, exc.rule)

    def _denied(self, caller: str, method: str, rule: str) -> None:
        usage = self.usage.setdefault(caller, CallerUsage())
        usage.denied += 1
        usage.by_rule[rule] += 1
        log.warning(Event.CALLER_DENIED, caller=caller, rpc_method=method, rule=rule)

    def completed(self, caller: str, method: str, code: str) -> None:
        """Count a finished RPC for ``caller``."""
        usage = self.usage.setdefault(caller, CallerUsage())
        usage.by_code[code] += 1
        usage.by_method[method.rsplit("/", 1)[-1]] += 1
