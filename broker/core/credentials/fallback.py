"""Where the protocol answers with a Bearer instead of an assertion, and where it must not (§8).

The authorizer decides *whether* an assertion can be had; this module decides what a failure on the
way means for the caller: a Bearer with the right ``fallback_reason`` (background calls of a
token-backed identity, §8.1), UNAVAILABLE (thread calls, §8.3; JWT identities, §8.4), the ``authapi``
bootstrap rules with a fleet-wide cooldown (§8.5, §11.2), or a precise error when no Bearer exists.
"""

from __future__ import annotations

import structlog

from broker.core.credentials.counters import AuthorizerCounters
from broker.core.credentials.model import Authorization, FallbackReason, Scheme
from broker.core.credentials.ports import Store
from broker.core.credentials.routing import WorkspaceRouter, route_headers
from broker.core.credentials.spec import IdentityRuntime, Source, binding
from broker.errors import (
    BootstrapRefused,
    BrokerError,
    ControlPlaneError,
    ControlPlaneUnavailable,
    IdentityUnusable,
    NoBearerToken,
    TaskUnavailable,
)
from broker.events import Event
from broker.secret import Secret

log = structlog.get_logger("broker.authorizer")

# The fleet-wide marker that keeps an ``authapi`` identity on Bearer after a bootstrap failure.
BOOTSTRAP_COOLDOWN = "bootstrap"


class FallbackPolicy:
    """Turns failures on the way to an assertion into the protocol's answer."""

    def __init__(self, store: Store, counters: AuthorizerCounters, router: WorkspaceRouter) -> None:
        """Args:
        store: for the bootstrap cooldown marker.
        counters: the authorizer's counters (Bearer answers by reason).
        router: the accounts' workspace routes, handed out with every Bearer.
        """
        self._store = store
        self._counters = counters
        self._router = router

    @staticmethod
    def bootstraps(runtime: IdentityRuntime) -> bool:
        """Whether failures follow the ``authapi`` bootstrap rules (§8.5, §11.2)."""
        spec = runtime.spec
        return spec.profile.rules.bootstrap_rules and spec.source is Source.REGISTER

    async def identity_failure(
        self, runtime: IdentityRuntime, thread_id: str, exc: BrokerError
    ) -> Authorization:
        spec = runtime.spec
        if not spec.has_bearer:
            # No Bearer to fall back to (§8.4): the error itself is the answer; a JWKS outage
            # stays UNAVAILABLE (retryable), an untrusted JWT FAILED_PRECONDITION.
            if isinstance(exc, IdentityUnusable | ControlPlaneUnavailable):
                raise exc
            raise IdentityUnusable(f"identity {spec.name!r} is unusable: {exc.message}") from exc
        if thread_id:
            self.log_failure(spec.name, thread_id, exc)
            raise TaskUnavailable(
                f"the identity for thread {thread_id!r} could not be established ({exc.reason}); "
                "thread calls do not fall back to Bearer, retry later"
            ) from exc
        if self.bootstraps(runtime):
            return await self.bootstrap_failure(runtime, thread_id, exc)
        return await self.fallback(runtime, FallbackReason.IDENTITY_UNAVAILABLE, thread_id, exc)

    async def task_failure(
        self, runtime: IdentityRuntime, thread_id: str, exc: BrokerError
    ) -> Authorization:
        spec = runtime.spec
        if thread_id or not spec.has_bearer:
            self.log_failure(spec.name, thread_id, exc)
            what = f"the task of thread {thread_id!r}" if thread_id else "the run task"
            raise TaskUnavailable(
                f"{what} could not be registered ({exc.reason}); "
                + (
                    "thread calls do not fall back to Bearer, retry later"
                    if thread_id
                    else "a JWT identity has no Bearer to fall back to, retry later"
                )
            ) from exc
        if self.bootstraps(runtime):
            return await self.bootstrap_failure(runtime, thread_id, exc)
        return await self.fallback(
            runtime, FallbackReason.TASK_REGISTRATION_UNAVAILABLE, thread_id, exc
        )

    async def bootstrap_failure(
        self, runtime: IdentityRuntime, thread_id: str, exc: BrokerError
    ) -> Authorization:
        """§8.5: retryable -> Bearer and a fleet-wide cooldown; refused for good -> an error."""
        spec = runtime.spec
        if isinstance(exc, ControlPlaneUnavailable):
            await self._store.start_cooldown(spec.name, BOOTSTRAP_COOLDOWN, spec.bootstrap_cooldown)
            log.warning(
                Event.BOOTSTRAP_COOLDOWN,
                identity=spec.name,
                operation=exc.operation,
                cooldown_seconds=spec.bootstrap_cooldown,
                detail=exc.message,
            )
            return await self.fallback(
                runtime, FallbackReason.BOOTSTRAP_UNAVAILABLE, thread_id, exc
            )
        if isinstance(exc, ControlPlaneError):
            raise BootstrapRefused(
                f"the control plane refused to bootstrap identity {spec.name!r} "
                f"({exc.operation}, HTTP {exc.status}); it is not retried and not masked by Bearer"
            ) from exc
        return await self.fallback(runtime, FallbackReason.IDENTITY_UNAVAILABLE, thread_id, exc)

    @staticmethod
    def log_failure(name: str, thread_id: str, exc: BrokerError) -> None:
        log.warning(
            Event.AUTHORIZATION_FAILED,
            identity=name,
            thread_id=thread_id,
            reason=exc.reason,
            detail=exc.message,
        )

    async def fallback(
        self,
        runtime: IdentityRuntime,
        reason: FallbackReason,
        thread_id: str,
        exc: BrokerError,
    ) -> Authorization:
        log.warning(
            Event.FALLBACK_BEARER,
            identity=runtime.spec.name,
            fallback_reason=reason.value,
            error_reason=exc.reason,
            detail=exc.message,
        )
        return await self.bearer(runtime, reason, thread_id, warned=True)

    async def bearer(
        self,
        runtime: IdentityRuntime,
        reason: FallbackReason,
        thread_id: str,
        *,
        warned: bool = False,
    ) -> Authorization:
        spec = runtime.spec
        if not spec.has_bearer:
            raise NoBearerToken(
                f"identity {spec.name!r} is an Agent Identity JWT identity: it has no Bearer token "
                f"to hand out ({reason.value}; protocol §8.4)"
            )
        token = await runtime.bearer.token()
        if not token:
            raise NoBearerToken(
                f"identity {spec.name!r} needs a Bearer ({reason.value}) but the account's "
                "bearer token is missing or empty"
            )
        self._counters.bearer[reason] += 1
        if not warned and reason is not FallbackReason.REQUESTED:
            log.debug(Event.FALLBACK_BEARER, identity=spec.name, fallback_reason=reason.value)
        account_id, _ = await binding(runtime)
        route = await self._router.route(runtime, account_id, token)
        return Authorization(
            header_value=Secret(f"Bearer {token.reveal()}"),
            scheme=Scheme.BEARER,
            identity=spec.name,
            fallback_reason=reason,
            companion_headers=spec.companion_headers(account_id) | route_headers(route),
            thread_id=thread_id,
            backend_origin=route.origin if route is not None else "",
        )
