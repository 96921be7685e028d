"""Caller authentication at the gRPC edge: metadata tokens and client certificates.

The interceptor calls :meth:`CallerGate.admit` for every RPC before the handler runs; the admitted
policy is put in :data:`CURRENT_CALLER` (a contextvar, visible to the servicer running in the same
task). Per-caller usage for the admin service is the interceptor's RPC tally (per caller name) plus
the denials counted here.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import structlog

from broker.core.callers import (
    LOCAL_CALLER,
    CallerDenied,
    CallerPolicy,
    CallerRegistry,
    Unauthenticated,
)
from broker.events import Event

if TYPE_CHECKING:
    from broker.transport.grpc.tally import RpcTally

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
    """Authenticates callers, applies method-level rules and rate limits, counts usage.

    Args:
        registry: the configured callers.
        rpcs: the interceptor's RPC tally, whose per-caller counts :attr:`usage` reports.
    """

    def __init__(self, registry: CallerRegistry, rpcs: RpcTally | None = None) -> None:
        self._registry = registry
        self._rpcs = rpcs
        self._denials: dict[str, CallerUsage] = {}

    @property
    def usage(self) -> dict[str, CallerUsage]:
        """Per caller on this replica: finished RPCs by code and method, and denials.

        Built when read (``broker.stats``, ``/metrics``, ``GetUsage``): the RPCs come from the
        tally, so nothing is counted per call here.
        """
        usage = {
            name: CallerUsage(
                denied=denials.denied,
                rate_limited=denials.rate_limited,
                by_rule=Counter(denials.by_rule),
            )
            for name, denials in self._denials.items()
        }
        for name, rpcs in (self._rpcs.by_caller() if self._rpcs is not None else {}).items():
            caller = usage.setdefault(name, CallerUsage())
            caller.by_code.update(rpcs.by_code)
            caller.by_method.update(rpcs.by_method)
        return usage

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
        usage = self._denials.setdefault(caller, CallerUsage())
        if exc.rule == "rate_limit":
            usage.rate_limited += 1
        self._denied(caller, method, exc.rule)

    def _denied(self, caller: str, method: str, rule: str) -> None:
        usage = self._denials.setdefault(caller, CallerUsage())
        usage.denied += 1
        usage.by_rule[rule] += 1
        # Without a method, the line takes the one of the RPC being served (broker.logs).
        where = {"rpc_method": method} if method else {}
        log.warning(Event.CALLER_DENIED, caller=caller, rule=rule, **where)
