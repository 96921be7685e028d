"""Caller authentication at the gRPC edge: metadata tokens and client certificates.

The interceptor calls :meth:`CallerGate.admit` for every RPC before the handler runs; the admitted
policy is put in :data:`CURRENT_CALLER` (a contextvar, visible to the servicer running in the same
task). Per-caller usage for the admin service is the interceptor's RPC tally (per caller name) plus
the denials counted here.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from broker.core.callers import LOCAL_CALLER, CallerPolicy, CallerRegistry
from broker.errors import CallerDenied, Unauthenticated
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
_MAX_KNOWN_HEADERS: Final = 1024
"""Kept ``authorization`` values of known callers (a few per caller; dropped whole when full)."""


class CallerCall(Protocol):
    """What the gate reads of a call (a ``grpc.aio.ServicerContext`` is one), only if needed."""

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None: ...

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


Admission = Callable[[CallerCall], CallerPolicy | None]
"""Admits the caller of one call of a method (see :meth:`CallerGate.admission`)."""


@dataclass(slots=True)
class CallerUsage:
    """Counters of one caller on this replica."""

    by_code: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    denied: int = 0
    rate_limited: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    """Denials by the policy rule that refused them (``caller.denied``'s ``rule``)."""


def _token_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            return _bearer_token(value)
    return None


def _bearer_token(value: str | bytes) -> str | None:
    """The token of an ``authorization`` value ``Bearer <token>``; ``None`` for anything else."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and 0 < len(token.strip()) <= _MAX_TOKEN_LEN:
        return token.strip()
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


def _open(_call: CallerCall) -> None:
    return None


def _local(_call: CallerCall) -> CallerPolicy:
    return LOCAL_CALLER


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
        self._by_header: dict[str | bytes, CallerPolicy] = {}
        """Callers by the exact ``authorization`` value that named them (:meth:`token_caller`)."""

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

    def admission(self, method: str) -> Admission:
        """How each call of ``method`` is admitted, decided once per method.

        The admission returns the caller behind a call, or ``None`` for an open method (health).
        On an open (callers-less, loopback) broker every other call is :data:`LOCAL_CALLER`, which
        has no rate limit and may use the admin service, so nothing of the call is read.

        The admission raises:
            Unauthenticated: no credential, or an unknown one.
            CallerDenied: an admin method for a non-admin caller.
            RateLimited: the caller's bucket is empty.
        """
        if method.startswith(OPEN_METHODS):
            return _open
        if self._registry.open:
            return _local
        admin = method.startswith(ADMIN_PREFIX)

        def admit(call: CallerCall) -> CallerPolicy:
            policy = self._authenticate(method, call)
            self._admit(method, policy, admin=admin)
            return policy

        return admit

    @property
    def authenticates(self) -> bool:
        """Whether calls carry a caller credential (callers are configured)."""
        return not self._registry.open

    def token_caller(
        self, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> CallerPolicy | None:
        """The configured caller whose token ``metadata`` carries, if any (nothing is counted).

        The interceptor asks this while grpc looks the call's method up, from the metadata grpc
        has already decoded for that lookup, so an admitted token caller's call never reads its
        metadata again. ``None`` (no token, an unknown one, an open broker) leaves the call to
        :meth:`admission`, which authenticates it again and denies it with its reason.
        """
        for key, value in metadata or ():
            if key != "authorization":  # grpc refuses a header name that is not lowercase
                continue
            known = self._by_header.get(value)
            if known is not None:
                return known
            token = _bearer_token(value)
            policy = self._registry.by_token(token) if token is not None else None
            if policy is not None:
                if len(self._by_header) >= _MAX_KNOWN_HEADERS:
                    self._by_header.clear()
                self._by_header[value] = policy
            return policy
        return None

    def fixed_caller(self, method: str, policy: CallerPolicy | None = None) -> CallerPolicy | None:
        """The caller of every call of ``method`` when admitting one needs nothing per call.

        That is :data:`LOCAL_CALLER` on an open broker, or ``policy`` (a caller already
        authenticated, see :meth:`token_caller`) when it has no rate limit and may call
        ``method``. ``None``: each call must go through :meth:`admission` (or
        :meth:`admission_of`), which may refuse it.
        """
        if method.startswith(OPEN_METHODS):
            return None
        if self._registry.open:
            return LOCAL_CALLER
        if policy is None or policy.rate_per_second is not None:
            return None
        if method.startswith(ADMIN_PREFIX) and not policy.admin:
            return None
        return policy

    def admission_of(self, method: str, policy: CallerPolicy) -> Admission:
        """How each call of ``method`` by ``policy``, already authenticated, is admitted.

        As :meth:`admission` without reading the call: the admin rule and the rate limit apply
        (and raise :class:`CallerDenied`, counted and logged) on every call.
        """
        admin = method.startswith(ADMIN_PREFIX)

        def admit(_call: CallerCall) -> CallerPolicy:
            self._admit(method, policy, admin=admin)
            return policy

        return admit

    def _admit(self, method: str, policy: CallerPolicy, *, admin: bool) -> None:
        try:
            if admin:
                policy.check_admin()
            self._registry.take(policy)
        except CallerDenied as exc:
            self.denied(policy.name, method, exc)
            raise

    def _authenticate(self, method: str, call: CallerCall) -> CallerPolicy:
        token = _token_from(call.invocation_metadata())
        policy = self._registry.by_token(token) if token is not None else None
        if policy is None:
            policy = self._registry.by_certificate(certificate_names(call.auth_context() or {}))
        if policy is None:
            self._denied("unknown", method, "authentication")
            raise Unauthenticated(
                "no valid caller credential: send 'authorization: Bearer <caller token>' "
                "metadata or a client certificate of a configured caller",
                rule="authentication",
            )
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
