"""The composition root: build adapters, core and transport from Settings; run; drain; close.

Nothing here is created at import time. ``BrokerApp`` owns every lifetime it creates: the HTTP
client, the store (unless one was injected), the gRPC server and the background tasks (invalidation
follower, health monitor, stats). Injected objects belong to the caller.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import stamina.instrumentation
import structlog
from grpc_health.v1 import health, health_pb2

from broker import __version__
from broker.adapters.bearer import StaticBearer, TokenFileBearer
from broker.adapters.clock import SystemClock
from broker.adapters.controlplane import ControlPlaneClient, build_http_client
from broker.adapters.identity_sources import ImportIdentitySource, JwksCache, JwtIdentitySource
from broker.adapters.oauth import OAuthTokenEndpoint
from broker.adapters.sealing import PlaintextSealer, Sealer, load_kek_file
from broker.adapters.store.embedded import EmbeddedStore
from broker.adapters.store.redis import RedisStore
from broker.background import Background
from broker.config import (
    IdentitySettings,
    ImportSource,
    JwtFileSource,
    OAuthAccount,
    Settings,
    TokenFileAccount,
)
from broker.core.callers import CallerRegistry
from broker.core.credentials.account import AccountLogin, import_login
from broker.core.credentials.admin import AdminOperations
from broker.core.credentials.authorizer import Authorizer
from broker.core.credentials.circuit import CircuitBreaker, CircuitState
from broker.core.credentials.identity import IdentityManager
from broker.core.credentials.ports import BearerSource, Clock, IdentitySource, Store
from broker.core.credentials.routing import WorkspaceRouter
from broker.core.credentials.spec import IdentityRuntime, IdentitySpec
from broker.core.credentials.tasks import TaskRegistry
from broker.core.protocol import agent_jwt
from broker.core.protocol.login import parse_auth_json
from broker.errors import BrokerError, ConfigError
from broker.events import Event
from broker.metrics import RPC_BUCKETS, BrokerMetrics
from broker.transport.grpc.admin import AdminServicer
from broker.transport.grpc.callers import CallerGate
from broker.transport.grpc.prebuilt import PrebuiltGetAuthorization
from broker.transport.grpc.server import (
    BROKER_SERVICE,
    CONTROLPLANE_HEALTH,
    STORE_HEALTH,
    build_server,
)
from broker.transport.grpc.servicer import BrokerServicer
from broker.transport.grpc.tally import RpcTally
from broker.transport.grpc.tls import ReloadingTls
from broker.transport.ops import OpsServer

log = structlog.get_logger("broker.app")

_HEALTH_INTERVAL_SECONDS = 5.0


T = TypeVar("T")

GetAuthorizationFactory = Callable[[Authorizer, CallerGate], PrebuiltGetAuthorization]
"""Builds the ``GetAuthorization`` handler (see ``BrokerApp``)."""


@dataclass(slots=True)
class RpcStats:
    """Cumulative RPC counters for ``broker.stats``, read from the interceptor's tally."""

    by_code: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    total_seconds: float = 0.0

    @classmethod
    def of(cls, rpcs: RpcTally) -> RpcStats:
        """The counters of ``rpcs`` right now."""
        return cls(rpcs.by_code(), rpcs.by_method(), rpcs.seconds_total())


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: which event loop runs the caller (for ``broker.started``)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed (not on Windows), else on asyncio's loop.

    uvloop's loop does the same work as asyncio's with less Python per event, which grpc.aio's
    per-call callbacks feel directly. ``broker.started`` says which loop runs.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def build_store(settings: Settings, clock: Clock) -> Store:
    """Redis when a URL is configured (sealed at rest), else the embedded in-process store.

    Raises:
        ConfigError: Redis without a key-encryption key and without ``allow_unsealed_store``.
    """
    if not settings.redis_url:
        log.warning(
            Event.STORE_EMBEDDED,
            detail="no BROKER_REDIS_URL: state is kept in this process only; it is neither shared "
            "with other replicas nor persistent across restarts",
        )
        return EmbeddedStore(clock)
    sealer: Sealer
    if settings.kek_file is not None:
        sealer = load_kek_file(settings.kek_file)
    elif settings.allow_unsealed_store:
        log.warning(
            Event.STORE_UNSEALED,
            setting="BROKER_ALLOW_UNSEALED_STORE",
            detail="no BROKER_KEK_FILE: private keys, tokens and cached assertions are stored in "
            "Redis unsealed; anyone who can read Redis can act as the identity",
        )
        sealer = PlaintextSealer()
    else:
        raise ConfigError(
            "BROKER_KEK_FILE: Redis state must be sealed at rest; set BROKER_KEK_FILE "
            "(see 'credential-broker kek generate'), or for development only "
            "BROKER_ALLOW_UNSEALED_STORE=true (--allow-unsealed-store)"
        )
    return RedisStore.from_url(settings.redis_url, sealer)


def identity_spec(settings: Settings, identity: IdentitySettings) -> IdentitySpec:
    """The core's view of one configured identity: the identity settings it reads (each marked
    ``core`` where declared) and the broker-wide assertion and thread-task settings."""
    return IdentitySpec(
        name=identity.name,
        **identity.core_fields(),
        assertion_ttl=settings.assertion_ttl,
        refresh_margin=settings.refresh_margin,
        thread_task_ttl=settings.thread_task_ttl,
        thread_limits=settings.thread_limits,
        abom={
            "agent_version": settings.agent_version,
            "agent_harness_id": "credential-broker",
            "running_location": "broker-linux",
        },
    )


class BrokerApp:
    """One running broker process."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        bearer_sources: dict[str, BearerSource] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        worker: int | None = None,
        get_authorization: GetAuthorizationFactory = PrebuiltGetAuthorization,
    ) -> None:
        """Args:
        settings: validated settings.
        clock: injected time (default: the system clock).
        store: an injected store (owned by the caller); default built from settings.
        bearer_sources: per-identity token sources overriding the token files (tests, dev).
        random_bytes: CSPRNG for new keys.
        worker: this process's index among a supervisor's workers (``broker/supervisor.py``),
            which share the listen port; ``None`` for a broker on its own.
        get_authorization: builds the ``GetAuthorization`` handler from the authorizer and the
            caller gate (the benchmark's echo server passes one that answers fixed bytes).
        """
        self.settings = settings
        self.worker = worker
        self._get_authorization = get_authorization
        # The control-plane client logs its own controlplane.retry events (in the catalogue);
        # stamina's default hook would add an uncatalogued duplicate line per retry.
        stamina.instrumentation.set_on_retry_hooks([])
        self.clock: Clock = clock or SystemClock()
        self._owns_store = store is None
        self.store: Store = store if store is not None else build_store(settings, self.clock)
        self._http: httpx.AsyncClient = build_http_client()
        self.metrics = BrokerMetrics()
        runtimes: dict[str, IdentityRuntime] = {}
        self.logins: dict[str, AccountLogin] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        for identity in settings.identities:
            spec = identity_spec(settings, identity)
            login = self._login_for(identity)
            bearer = (
                (bearer_sources or {}).get(identity.name) or login or self._bearer_for(identity)
            )
            client = ControlPlaneClient(
                self._http,
                base_url=identity.controlplane_url,
                profile=identity.profile,
                authapi_base_url=identity.authapi_url,
                fedramp=identity.fedramp,
                user_agent=f"credential-broker/{__version__}",
                on_request=self.metrics.controlplane_observer(identity.name),
            )
            breaker = CircuitBreaker(
                client,
                clock=self.clock,
                identity=identity.name,
                failure_threshold=settings.circuit_failure_threshold,
                cooldown=settings.circuit_cooldown,
            )
            self.breakers[identity.name] = breaker
            runtimes[identity.name] = IdentityRuntime(
                spec, breaker, bearer, self._source_for(identity), login
            )
        lock_ttl = settings.registration_deadline + 5.0
        wait_deadline = lock_ttl + 5.0
        self.authorizer = Authorizer(
            identities=runtimes,
            default_identity=settings.default_identity,
            store=self.store,
            clock=self.clock,
            identity_manager=IdentityManager(
                store=self.store,
                clock=self.clock,
                random_bytes=random_bytes,
                lock_ttl=lock_ttl,
                wait_deadline=wait_deadline,
            ),
            tasks=TaskRegistry(
                store=self.store, clock=self.clock, lock_ttl=lock_ttl, wait_deadline=wait_deadline
            ),
            rejection_min_interval=settings.rejection_min_interval,
            router=WorkspaceRouter(
                store=self.store, clock=self.clock, lock_ttl=lock_ttl, wait_deadline=wait_deadline
            ),
        )
        self.callers = CallerRegistry(settings.callers, self.clock)
        self.rpcs = RpcTally(RPC_BUCKETS)
        self.gate = CallerGate(self.callers, self.rpcs)
        self.admin = AdminOperations(self.authorizer, self.store)
        self.metrics.bind(
            authorizer=self.authorizer, gate=self.gate, breakers=self.breakers, rpcs=self.rpcs
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._ops: OpsServer | None = None
        self.background = Background()
        self.port: int | None = None

    def _login_for(self, identity: IdentitySettings) -> AccountLogin | None:
        account = identity.account
        if not isinstance(account, OAuthAccount):
            return None
        login = AccountLogin(
            identity=identity.name,
            store=self.store,
            endpoint=OAuthTokenEndpoint(
                self._http, issuer=account.oauth_issuer, client_id=account.oauth_client_id
            ),
            clock=self.clock,
            refresh_margin=account.account_refresh_margin,
            lock_ttl=self.settings.registration_deadline + 5.0,
            wait_deadline=self.settings.registration_deadline + 10.0,
            on_binding_change=self._binding_changed,
        )
        self.logins[identity.name] = login
        return login

    async def _binding_changed(self, name: str) -> None:
        """A refreshed login names another account or user: the old identity is discarded (§9.3)."""
        await self.authorizer.discard_identity(name, delete_record=True)

    def _source_for(self, identity: IdentitySettings) -> IdentitySource | None:
        source = identity.source
        if isinstance(source, ImportSource):
            return ImportIdentitySource(identity.name, source.import_file, self.clock)
        if isinstance(source, JwtFileSource):
            jwks = JwksCache(
                self._http,
                source.jwks_url or agent_jwt.jwks_url(identity.controlplane_url),
                self.clock,
            )
            return JwtIdentitySource(
                identity.name,
                jwks,
                self.clock,
                path=source.jwt_file,
                issuer=source.jwt_issuer,
                audience=source.jwt_audience,
            )
        return None

    def _bearer_for(self, identity: IdentitySettings) -> BearerSource:
        account = identity.account
        if isinstance(account, TokenFileAccount) and account.bearer_token_file is not None:
            return TokenFileBearer(account.bearer_token_file, self.clock)
        return StaticBearer(None)

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind, start serving, and start the background tasks.

        Raises:
            ConfigError: the listen address cannot be bound.
        """
        for identity in self.settings.identities:
            account = identity.account
            if isinstance(account, OAuthAccount) and account.account_file is not None:
                await self._import_account_file(identity.name, account.account_file)
        for name in self.authorizer.identity_names:
            runtime = self.authorizer.runtime(name)
            if isinstance(runtime.source, ImportIdentitySource):
                try:
                    await runtime.source.load()
                except BrokerError as exc:
                    raise ConfigError(f"identities.{name}.import_file: {exc.message}") from exc
        server = build_server(
            BrokerServicer(self.authorizer, self.gate),
            AdminServicer(self.admin, self.gate),
            self.health,
            self.gate,
            rpcs=self.rpcs,
            get_authorization=self._get_authorization(self.authorizer, self.gate),
            access_log_sample=self.settings.access_log_sample,
            reuse_port=self.worker is not None,
        )
        if self.callers.open and self.settings.allow_anonymous_callers:
            log.warning(
                Event.CALLER_ANONYMOUS_ALLOWED,
                listen=self.settings.listen,
                setting="BROKER_ALLOW_ANONYMOUS_CALLERS",
                detail="no [callers] configured and anonymous callers allowed beyond loopback: "
                "every process that can reach this address is trusted fully, admin included",
            )
        elif self.callers.open:
            log.warning(
                Event.CALLER_AUTH_DISABLED,
                listen=self.settings.listen,
                detail="no [callers] configured: every connecting process is trusted fully",
            )
        if self.settings.allow_cleartext_upstream:
            log.warning(
                Event.UPSTREAM_CLEARTEXT_ALLOWED,
                setting="BROKER_ALLOW_CLEARTEXT_UPSTREAM",
                url_settings=list(self.settings.cleartext_upstreams),
                detail="http:// is allowed to hosts beyond loopback: tokens, assertions and the "
                "keys that verify JWTs can be read or altered by anyone on the path",
            )
        try:
            if self.settings.tls is not None:
                port = server.add_secure_port(
                    self.settings.listen, ReloadingTls(self.settings.tls).credentials()
                )
            else:
                port = server.add_insecure_port(self.settings.listen)
        except (RuntimeError, OSError) as exc:
            raise ConfigError(f"BROKER_LISTEN: cannot bind {self.settings.listen}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"BROKER_LISTEN: cannot bind {self.settings.listen}")
        self.port = port
        self._server = server
        if self.settings.ops_listen is not None:
            self._ops = OpsServer(
                self.metrics, self.settings.ops_listen, check_store=self._check_store
            )
            await self._ops.start()
        await server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(BROKER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.serving = True
        await self._check_store()
        await self._check_control_plane()
        self.background.start(
            {
                "invalidations": self.authorizer.follow_invalidations,
                "health": self._monitor_health,
                "stats": self._report_stats,
            }
        )
        log.info(
            Event.BROKER_STARTED,
            listen=self.address,
            version=__version__,
            store="redis" if self.store.shared else "embedded",
            identities=self.authorizer.identity_names,
            event_loop=event_loop_name(),
            access_log_sample=self.settings.access_log_sample,
            **self._process_fields(),
            **({"ops_listen": self._ops.address} if self._ops is not None else {}),
        )

    def _process_fields(self) -> dict[str, int]:
        """``pid``: which process wrote the line (a supervised worker's every line also names its
        ``worker``, added by its logging configuration)."""
        return {"pid": os.getpid()}

    async def _import_account_file(self, name: str, path: Path) -> None:
        """Seed the store with a login file once; a login already stored (maybe refreshed since)
        wins over the file."""
        try:
            document = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
            tokens = parse_auth_json(document if isinstance(document, dict) else {})
        except (OSError, ValueError, BrokerError) as exc:
            detail = exc.message if isinstance(exc, BrokerError) else str(exc)
            raise ConfigError(f"identities.{name}.account_file: {detail}") from exc
        await import_login(self.store, name, tokens, self.clock, replace=False)

    async def _check_store(self) -> bool:
        try:
            await self.store.ping()
        except BrokerError:
            reachable = False
        else:
            reachable = True
        self.metrics.store_checked(reachable)
        status = health_pb2.HealthCheckResponse
        await self.health.set(STORE_HEALTH, status.SERVING if reachable else status.NOT_SERVING)
        return reachable

    async def _check_control_plane(self) -> None:
        down = any(b.state is CircuitState.OPEN for b in self.breakers.values())
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if down
            else health_pb2.HealthCheckResponse.SERVING
        )
        await self.health.set(CONTROLPLANE_HEALTH, status)

    async def _monitor_health(self) -> None:
        while True:
            await asyncio.sleep(_HEALTH_INTERVAL_SECONDS)
            await self._check_store()
            await self._check_control_plane()

    @property
    def rpc_stats(self) -> RpcStats:
        """RPCs finished since start, by code and method."""
        return RpcStats.of(self.rpcs)

    def stats(self) -> dict[str, object]:
        """The counters ``broker.stats`` reports (cumulative since start)."""
        return {
            "rpcs_by_code": dict(self.rpcs.by_code()),
            "rpcs_by_method": dict(self.rpcs.by_method()),
            "rpc_seconds_total": round(self.rpcs.seconds_total(), 6),
            "authorizer": self.authorizer.counters.snapshot(),
            "watch_streams": self.authorizer.watch_hub.watchers,
            "watch_topics": self.authorizer.watch_hub.topics,
            "callers": {
                name: {"rpcs": sum(u.by_code.values()), "denied": u.denied}
                for name, u in self.gate.usage.items()
            },
            "circuits_open": sorted(
                name for name, b in self.breakers.items() if b.state is CircuitState.OPEN
            ),
        }

    async def _report_stats(self) -> None:
        loop = asyncio.get_running_loop()
        reported, since = 0, loop.time()
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            total, now = self.rpcs.total(), loop.time()
            log.info(
                Event.BROKER_STATS,
                **self.stats(),
                rpcs_interval=total - reported,
                interval_s=round(now - since, 3),
            )
            reported, since = total, now

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, finish in-flight RPCs within ``grace``, close everything."""
        grace = self.settings.grace_period if grace is None else grace
        log.info(Event.BROKER_STOPPING, grace_seconds=grace)
        self.metrics.serving = False
        await self.health.enter_graceful_shutdown()
        # Watch streams end cleanly first; unary calls in flight get the grace period.
        await self.authorizer.close()
        for login in self.logins.values():
            await login.close()
        if self._server is not None:
            await self._server.stop(grace)
        await self.background.stop()
        if self._ops is not None:
            await self._ops.stop()
        await self._http.aclose()
        if self._owns_store:
            await self.store.close()
        log.info(Event.BROKER_STOPPED, **self.stats(), **self._process_fields())


async def serve(
    settings: Settings,
    *,
    ready: Callable[[BrokerApp], None] | None = None,
    worker: int | None = None,
) -> None:
    """Run a broker until SIGTERM or SIGINT, then drain within the grace period.

    ``worker`` is the index of a supervised worker (its port is shared with the others).
    """
    app = BrokerApp(settings, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await app.start()
        if ready is not None:
            ready(app)
        await stop.wait()
    finally:
        await app.stop()
