"""An account's workspace route: discovered once for the fleet, handed out with every header (§16).

Theory of operation
-------------------
A worker that gets its Bearer and ``ChatGPT-Account-ID`` from the broker cannot know where its
account's calls must go, so the broker tells it: every ``Authorization`` of an identity that
discovers routes (``IdentitySpec.discovers_route``) carries the account's backend origin and, for
``us``/``us_cr``, the ``x-openai-account-routing-override`` header.

* The route is keyed by (account id, token fingerprint): a new account or a new access token means a
  new discovery, as the reference client discovers again after a login or a refresh. It is shared in
  the store for an hour (``cb:{identity}:route``, no secret in it) and kept in process until then.
* One discovery per fleet: the store lock ``route-discovery`` (:func:`fleet_once`); other replicas
  wait for its result.
* Fail closed. A call that needs the route and cannot have it fails (``WORKSPACE_ROUTING_*``); it is
  never sent to a guessed origin and never answered with a Bearer in its place, since a
  data-residency account's requests must not reach another region. A failure is remembered for a
  few seconds, in process and fleet-wide (a cooldown marker), so a flood of calls on a cold or
  broken route makes one discovery request, not one per call.
* A 401 from the discovery is answered by re-reading the account's token once (another replica may
  have refreshed it); a second 401 is final for that token (``WORKSPACE_ROUTING_UNAUTHORIZED``).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from broker.core.credentials.account import fingerprint
from broker.core.credentials.model import WorkspaceRouteRecord
from broker.core.credentials.ports import Clock, Store
from broker.core.credentials.singleflight import SingleFlight, fleet_once
from broker.core.credentials.spec import IdentityRuntime, WorkspaceRouting
from broker.core.protocol.routing import (
    NO_CONSTRAINT,
    ROUTING_HEADER,
    origin_of,
    parse_accounts_check,
)
from broker.core.protocol.urls import normalize_chatgpt_base_url
from broker.errors import (
    BrokerError,
    ControlPlaneError,
    ControlPlaneUnavailable,
    NoBearerToken,
    ProtocolError,
    SingleFlightTimeout,
    WorkspaceRoutingInvalid,
    WorkspaceRoutingUnauthorized,
    WorkspaceRoutingUnavailable,
)
from broker.events import Event
from broker.secret import Secret

log = structlog.get_logger("broker.routing")

ROUTE_TTL = 3600.0
"""Seconds a discovered route is used before it is discovered again."""
FAILURE_HOLD = 5.0
"""Seconds a failed discovery is answered from memory (and the fleet waits) before the next try."""
LOCK = "route-discovery"
FAILED = "route-discovery-failed"


_ROUTING_ERRORS = (
    WorkspaceRoutingUnavailable,
    WorkspaceRoutingInvalid,
    WorkspaceRoutingUnauthorized,
)


def token_fingerprint(token: Secret) -> str:
    """The first 32 hex digits of the token's SHA-256: tells tokens apart, reveals nothing."""
    return fingerprint(token)[:32]


@dataclass(slots=True)
class _Known:
    """This process's latest answer for an identity, until ``until`` (monotonic)."""

    account_id: str
    fingerprint: str
    route: WorkspaceRouteRecord | None
    error: BrokerError | None
    until: float


class WorkspaceRouter:
    """Finds the workspace route of each identity's account, once for the fleet."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        lock_ttl: float = 30.0,
        wait_deadline: float = 35.0,
        ttl: float = ROUTE_TTL,
        failure_hold: float = FAILURE_HOLD,
    ) -> None:
        """Args:
        store: shares the route, the discovery lock and the failure marker.
        clock: injected time.
        lock_ttl: lifetime of the discovery lock (longer than one discovery with its retries).
        wait_deadline: how long a replica waits for another replica's discovery.
        ttl: seconds a route is used before it is discovered again.
        failure_hold: seconds a failed discovery is not retried.
        """
        self._store = store
        self._clock = clock
        self._lock_ttl = lock_ttl
        self._wait_deadline = wait_deadline
        self._ttl = ttl
        self._failure_hold = failure_hold
        self._known: dict[str, _Known] = {}
        self._flights: SingleFlight[tuple[str, str, str], WorkspaceRouteRecord] = SingleFlight()

    async def route(
        self, runtime: IdentityRuntime, account_id: str | None, token: Secret | None = None
    ) -> WorkspaceRouteRecord | None:
        """The route of the identity's account, or ``None`` when the identity discovers none.

        Args:
            runtime: the identity.
            account_id: the account its headers name (the binding).
            token: the account's access token, when the caller has it already.

        Raises:
            WorkspaceRoutingUnavailable: the route cannot be discovered now; retry.
            WorkspaceRoutingInvalid: the backend's answer cannot be used.
            WorkspaceRoutingUnauthorized: the discovery refused the account's token.
            NoBearerToken: the account has no access token to discover with.
            StoreUnavailable: the shared state is unreachable.
        """
        spec = runtime.spec
        if not spec.discovers_route:
            return None
        if not account_id:
            if spec.workspace_routing is WorkspaceRouting.ON:
                raise WorkspaceRoutingInvalid(
                    f"workspace routing is on for identity {spec.name!r} but its account id is "
                    "unknown (set account_id or import a login)"
                )
            return None
        if token is None:
            token = await runtime.bearer.token()
        if not token:
            raise NoBearerToken(
                f"identity {spec.name!r} needs its account's access token to discover its "
                "workspace route, but the token is missing or empty"
            )
        fingerprint = token_fingerprint(token)
        known = self._known.get(spec.name)
        if (
            known is not None
            and known.account_id == account_id
            and known.fingerprint == fingerprint
            and self._clock.monotonic() < known.until
        ):
            if known.error is not None:
                raise type(known.error)(known.error.message)
            return known.route
        return await self._flights.do(
            (spec.name, account_id, fingerprint),
            lambda: self._for_fleet(runtime, account_id, token, fingerprint),
        )

    async def _for_fleet(
        self, runtime: IdentityRuntime, account_id: str, token: Secret, fingerprint: str
    ) -> WorkspaceRouteRecord:
        name = runtime.spec.name

        async def lookup() -> WorkspaceRouteRecord | None:
            stored = await self._store.load_route(name)
            if (
                stored is not None
                and stored.account_id == account_id
                and stored.token_fingerprint == fingerprint
            ):
                return stored
            remaining = await self._store.cooldown_remaining(name, FAILED)
            if remaining is not None:
                raise WorkspaceRoutingUnavailable(
                    f"the workspace route of identity {name!r} could not be discovered a moment "
                    f"ago; the next attempt is in {remaining:.0f} s"
                )
            return None

        try:
            route = await fleet_once(
                store=self._store,
                clock=self._clock,
                identity=name,
                lock_name=LOCK,
                lock_ttl=self._lock_ttl,
                wait_deadline=self._wait_deadline,
                lookup=lookup,
                produce=lambda: self._discover(runtime, account_id, token),
            )
        except SingleFlightTimeout:
            raise WorkspaceRoutingUnavailable(
                f"another broker is discovering the workspace route of identity {name!r} and did "
                "not finish in time; retry"
            ) from None
        except _ROUTING_ERRORS as exc:
            self._known[name] = _Known(
                account_id, fingerprint, None, exc, self._clock.monotonic() + self._failure_hold
            )
            raise
        age = (self._clock.now() - route.discovered_at).total_seconds()
        self._known[name] = _Known(
            account_id, fingerprint, route, None, self._clock.monotonic() + self._ttl - age
        )
        return route

    async def _discover(
        self, runtime: IdentityRuntime, account_id: str, token: Secret
    ) -> WorkspaceRouteRecord:
        """Ask the backend (under the fleet lock), share the answer, log what happened."""
        spec = runtime.spec
        started = self._clock.monotonic()
        try:
            answer, token = await self._ask(runtime, account_id, token)
            try:
                found = parse_accounts_check(answer, account_id)
            except ProtocolError as exc:
                raise WorkspaceRoutingInvalid(
                    f"the workspace route of identity {spec.name!r} cannot be used: {exc.message}"
                ) from None
            origin = found.origin or origin_of(normalize_chatgpt_base_url(spec.controlplane_url))
        except _ROUTING_ERRORS as exc:
            await self._store.start_cooldown(spec.name, FAILED, self._failure_hold)
            log.warning(
                Event.ROUTING_DISCOVERY_FAILED,
                identity=spec.name,
                account_id=account_id,
                reason=exc.reason,
                detail=exc.message,
                retry_after_seconds=self._failure_hold,
            )
            raise
        route = WorkspaceRouteRecord(
            account_id=account_id,
            token_fingerprint=token_fingerprint(token),
            origin=origin,
            override=found.override,
            discovered_at=self._clock.now().replace(microsecond=0),
        )
        await self._store.save_route(spec.name, route, self._ttl)
        log.info(
            Event.ROUTING_DISCOVERED,
            identity=spec.name,
            account_id=account_id,
            backend_origin=origin,
            routing_override=found.override or NO_CONSTRAINT,
            duration_ms=round((self._clock.monotonic() - started) * 1000, 1),
        )
        return route

    async def _ask(
        self, runtime: IdentityRuntime, account_id: str, token: Secret
    ) -> tuple[dict[str, object], Secret]:
        """The discovery answer and the token that obtained it (re-read once after a 401)."""
        name = runtime.spec.name
        for last in (False, True):
            try:
                answer = await runtime.control_plane.accounts_check(
                    bearer=token, account_id=account_id
                )
                return dict(answer), token
            except ControlPlaneUnavailable as exc:
                raise WorkspaceRoutingUnavailable(
                    f"the workspace route of identity {name!r} could not be discovered: "
                    f"{exc.message}"
                ) from None
            except ControlPlaneError as exc:
                if exc.status != 401:
                    raise WorkspaceRoutingInvalid(
                        f"the workspace route of identity {name!r} could not be discovered: "
                        f"{exc.message}"
                    ) from None
                fresh = None if last else await runtime.bearer.reread()
                if fresh is None or not fresh or fresh == token:
                    raise WorkspaceRoutingUnauthorized(
                        f"route discovery refused the access token of identity {name!r} (HTTP "
                        "401); the account's login must be renewed"
                    ) from None
                token = fresh
        raise AssertionError("unreachable")  # pragma: no cover


def route_headers(route: WorkspaceRouteRecord | None) -> dict[str, str]:
    """The routing header a call of ``route`` carries (none for ``NO_CONSTRAINT`` or no route)."""
    if route is None or route.override is None:
        return {}
    return {ROUTING_HEADER: route.override}
