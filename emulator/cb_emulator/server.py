"""The emulator's HTTP server: an aiohttp application around :class:`EmulatorState` (protocol §12).

The application serves the ChatGPT-backend endpoints (:mod:`cb_emulator.routes`), the AuthAPI and
the JWKS (:mod:`cb_emulator.authapi`), the OAuth token endpoint (:mod:`cb_emulator.oauth`) and
the ``/_emulator/`` test controls, on two listeners: the main origin and a regional origin that
workspace routes send accounts to (:mod:`cb_emulator.routing`). One middleware
(:mod:`cb_emulator.middleware`) counts, injects faults, renders refusals as JSON and logs one
``emulator.request`` event per request. Headers, tokens, biscuits, assertions and JWTs are never logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Final

import structlog
from aiohttp import web

from broker.adapters.clock import SystemClock
from broker.core.credentials.ports import Clock
from broker.events import Event
from cb_emulator.authapi import AUTHAPI_PREFIX, JWKS_PATH, AuthApiRoutes
from cb_emulator.faults import Fault
from cb_emulator.jwt import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    JwtSpec,
    SigningKeySet,
    mint_agent_identity_jwt,
)
from cb_emulator.middleware import MAX_REQUEST_BODY, Middleware
from cb_emulator.model import (
    DEFAULT_TOKENS,
    EmulatorAccount,
    EmulatorIdentity,
    EmulatorStats,
    EmulatorTask,
)
from cb_emulator.oauth import DEFAULT_CLIENT_ID
from cb_emulator.oauth_controls import OAuthControls
from cb_emulator.oauth_routes import OAuthRoutes
from cb_emulator.routes import PREFIX, ControlRoutes, ProtocolRoutes
from cb_emulator.routing_controls import RoutingControls
from cb_emulator.routing_routes import RoutingControlRoutes
from cb_emulator.state import EmulatorState

_SHUTDOWN_GRACE_SECONDS: Final = 1.0

_log = structlog.get_logger()


class Emulator(OAuthControls, RoutingControls):
    """A faithful, checking emulator of the agent-identity control plane (protocol §12, §15).

    It speaks both shapes: the ChatGPT backend under ``/backend-api`` (G1: biscuits, §4.1) and the
    AuthAPI under ``/api/accounts`` (G4: Bearer registration, signature-only tasks, §4.3, §5.1), and
    it publishes a JWKS and mints Agent Identity JWTs for tests (§10). It is also the OAuth provider
    of ChatGPT logins: :meth:`create_login` makes an ``auth.json`` whose access token is a Bearer
    here and whose refresh token rotates at ``POST {issuer_url}/oauth/token`` (see
    :mod:`cb_emulator.oauth`). It answers workspace-route discovery and enforces the routes a test
    gives accounts with :meth:`set_route`, on a second listener, :attr:`regional_origin` (see
    :mod:`cb_emulator.routing`).

    Call :meth:`start` and :meth:`stop`, or scope it with ``async with``, which stops it on exit::

        async with Emulator() as emulator:
            base_url = await emulator.start()

    The ``/_emulator/`` HTTP controls and the methods below act on the same state.

    Args:
        tokens: bearer token → account it logs in as; defaults to ``dev-access-token`` →
            ``acct-dev``/``user-dev``.
        clock: time for biscuit expiry and the skew window (default: the system clock).
        skew_seconds: accepted distance of signed timestamps from the clock (§12.2, §12.3).
        plaintext_task_ids: answer ``task_id`` instead of ``encrypted_task_id`` (§5.2).
        require_biscuit: whether task registration needs a G1 biscuit (G2-G4 send none, §5.1).
        biscuit_ttl_seconds: lifetime of a minted biscuit (§4.1).
        oauth_client_id: the only ``client_id`` the OAuth token endpoint accepts.
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, EmulatorAccount] | None = None,
        clock: Clock | None = None,
        skew_seconds: float = 300,
        plaintext_task_ids: bool = False,
        require_biscuit: bool = True,
        biscuit_ttl_seconds: float = 60,
        oauth_client_id: str = DEFAULT_CLIENT_ID,
    ) -> None:
        self._state = EmulatorState(
            tokens=DEFAULT_TOKENS if tokens is None else tokens,
            clock=clock or SystemClock(),
            skew_seconds=skew_seconds,
            biscuit_ttl_seconds=biscuit_ttl_seconds,
            plaintext_task_ids=plaintext_task_ids,
            require_biscuit=require_biscuit,
        )
        self._biscuit_ttl_seconds = biscuit_ttl_seconds
        self._keys = SigningKeySet()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._root_url: str | None = None
        self._state.logins.configure(
            sign=self._keys.sign, client_id=oauth_client_id, issuer=lambda: self.root_url
        )

    # -- life cycle ----------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application (for embedding in another aiohttp server or runner)."""
        app = web.Application(
            middlewares=[Middleware(self._state, self._stopping).__call__],
            client_max_size=MAX_REQUEST_BODY,
        )
        ProtocolRoutes(self._state, biscuit_ttl_seconds=self._biscuit_ttl_seconds).install(app)
        ControlRoutes(self._state).install(app)
        AuthApiRoutes(self._state, self._keys).install(app)
        OAuthRoutes(self._state.logins).install(app)
        RoutingControlRoutes(self._state.routes).install(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, regional_port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port) and return the base URL.

        The same application also listens on ``host:regional_port`` (0 picks a free port), the
        :attr:`regional_origin` that workspace routes send accounts to; both stop together.

        Returns:
            ``http://<host>:<port>/backend-api``, the ChatGPT base URL clients are configured with.

        Raises:
            RuntimeError: the emulator is already running.
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_GRACE_SECONDS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            main_sockets = len(runner.addresses)
            await web.TCPSite(runner, host, regional_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port = int(runner.addresses[0][1])
        regional_bound = int(runner.addresses[main_sockets][1])
        url_host = f"[{host}]" if ":" in host else host
        self._runner = runner
        self._root_url = f"http://{url_host}:{bound_port}"
        self._state.routes.bind(self._root_url, f"http://{url_host}:{regional_bound}")
        _log.info(Event.EMULATOR_STARTED, url=self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and end in-flight requests (pending fault delays end at once)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        self._state.routes.unbind()
        await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        """``http://<host>:<port>``, where ``/_emulator/`` controls live.

        Raises:
            RuntimeError: the emulator is not running.
        """
        if self._root_url is None or self._runner is None:
            raise RuntimeError("the emulator is not running")
        return self._root_url

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/backend-api`` (§3.1).

        Raises:
            RuntimeError: the emulator is not running.
        """
        return self.root_url + PREFIX

    @property
    def authapi_url(self) -> str:
        """``http://<host>:<port>/api/accounts``, the AuthAPI base (§3.4 override for custom bases).

        Raises:
            RuntimeError: the emulator is not running.
        """
        return self.root_url + AUTHAPI_PREFIX

    @property
    def jwks_url(self) -> str:
        """``http://<host>:<port>/backend-api/wham/agent-identities/jwks`` (§10.3, G4 rule).

        It is what the JWKS path rule gives for :attr:`base_url` as the JWKS base.

        Raises:
            RuntimeError: the emulator is not running.
        """
        return self.root_url + JWKS_PATH

    # -- test controls (the /_emulator/ endpoints, in process) ---------------------------------

    def stats(self) -> EmulatorStats:
        """Counters since start or the last :meth:`reset`."""
        return self._state.stats()

    def inject_fault(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        count: int = 1,
        delay_seconds: float = 0.0,
        drop_connection: bool = False,
        reset_connection: bool = False,
        body: str | None = None,
        content_type: str = "application/json",
        after_handler: bool = False,
        location: str | None = None,
    ) -> None:
        """Make the next ``count`` requests of ``endpoint`` misbehave (see :class:`Fault`).

        Args:
            endpoint: ``authenticate``, ``register_identity``, ``register_task``, ``protected``
                (ChatGPT backend), ``authapi_register_identity``, ``authapi_register_task``
                (AuthAPI), ``jwks``, ``oauth_token``, ``accounts_check`` (workspace-route
                discovery), or ``*`` for any of them.
            status: answer with this status (default 200 when only ``body`` is set).
            count: how many matching requests the fault applies to.
            delay_seconds: wait before answering, or before passing the request on.
            drop_connection: close the connection without a response.
            reset_connection: reset (RST) the connection without a response.
            body: a raw response body instead of the default JSON error.
            content_type: the ``Content-Type`` of ``body``.
            after_handler: let the real handler run first (its effects stay), then delay, drop
                or replace its answer (see also :meth:`fail_after_consuming`).
            location: a ``Location`` header for the answer; with ``status=307`` a redirect.

        Raises:
            ValueError: the fault is malformed or would do nothing.
        """
        self._state.faults.add(
            Fault(
                endpoint=endpoint,
                status=status,
                count=count,
                delay_seconds=delay_seconds,
                drop_connection=drop_connection,
                reset_connection=reset_connection,
                body=body,
                content_type=content_type,
                after_handler=after_handler,
                location=location,
            )
        )

    def revoke_task(self, task_id: str) -> None:
        """Revoke a task; later assertions naming it are refused with ``task_revoked`` (§12.3).

        Raises:
            KeyError: no such task.
        """
        if not self._state.revoke_task(task_id):
            raise KeyError(task_id)

    def reset(self, *, state: bool = False) -> None:
        """Clear faults, counters and queued discovery answers; with ``state`` also the state.

        ``state`` also forgets identities, tasks, biscuits, logins and workspace routes.
        """
        self._state.reset(state=state)

    def tasks(self) -> list[EmulatorTask]:
        """Every registered task, in registration order."""
        return self._state.tasks()

    def identities(self) -> list[EmulatorIdentity]:
        """Every registered identity, in registration order."""
        return self._state.identities()

    # -- Agent Identity JWTs and the JWKS (§10) -----------------------------------------------

    def mint_agent_identity_jwt(
        self,
        account_id: str,
        *,
        user_id: str,
        email: str = "",
        plan_type: str = "pro",
        fedramp: bool = False,
        lifetime_seconds: int = 3600,
        iss: str = DEFAULT_ISSUER,
        aud: str = DEFAULT_AUDIENCE,
        kid: str | None = None,
        extra_claims: Mapping[str, object] | None = None,
        omit_claims: tuple[str, ...] = (),
        sign_with_unknown_key: bool = False,
        alg: str = "RS256",
    ) -> str:
        """Register a fresh identity for ``account_id`` and return its Agent Identity JWT (§10.1).

        The token is RS256-signed by the current JWKS key and carries ``iss``, ``aud``, ``iat``,
        ``exp``, ``agent_runtime_id``, ``agent_private_key`` (base64 PKCS#8 v2), ``account_id``,
        ``chatgpt_user_id``, ``email``, ``plan_type`` and ``chatgpt_account_is_fedramp``. The
        identity is live at once: assertions signed with the token's key verify at ``/protected``
        and tasks can be registered for it at the AuthAPI. The token is a secret.

        Args:
            account_id: the account the identity is bound to.
            user_id: ``chatgpt_user_id``.
            email: ``email``.
            plan_type: ``plan_type``.
            fedramp: a FedRAMP account: protected calls then need ``X-OpenAI-Fedramp: true``.
            lifetime_seconds: ``exp - iat`` (``iat`` is the emulator clock); negative: expired.
            iss: ``iss``; anything but the default is an untrusted issuer (§10.2).
            aud: ``aud``; anything but the default is a wrong audience (§10.2).
            kid: the header's ``kid``: a retired key's makes a token whose ``kid`` is no longer
                published, any unknown value an unknown ``kid``. Default: the signing key.
            extra_claims: claims added last, replacing standard ones of the same name.
            omit_claims: claims left out (to test required claims).
            sign_with_unknown_key: sign with a key never published (a bad signature).
            alg: the header's ``alg`` (the signature stays RS256).

        Raises:
            ValueError: an empty ``account_id``, ``kid`` or ``alg``, or claims that are not JSON.
        """
        spec = JwtSpec(
            account_id=account_id,
            user_id=user_id,
            email=email,
            plan_type=plan_type,
            fedramp=fedramp,
            lifetime_seconds=lifetime_seconds,
            iss=iss,
            aud=aud,
            kid=kid,
            extra_claims=dict(extra_claims or {}),
            omit_claims=tuple(omit_claims),
            sign_with_unknown_key=sign_with_unknown_key,
            alg=alg,
        )
        return mint_agent_identity_jwt(self._state, self._keys, spec).jwt

    def jwks(self) -> dict[str, object]:
        """The published JWK Set, as ``GET`` :attr:`jwks_url` serves it (§10.3)."""
        return self._keys.jwks()

    @property
    def jwks_signing_kid(self) -> str:
        """The ``kid`` of the key that signs newly minted JWTs."""
        return self._keys.current_kid

    def rotate_jwks_key(self, *, retire_old: bool = False) -> str:
        """Add a JWKS key and make it the signing key; return its ``kid``.

        Args:
            retire_old: also take the previous signing key out of the JWK Set, so tokens it
                signed then carry an unknown ``kid``.
        """
        return self._keys.rotate(retire_old=retire_old)

    def retire_jwks_key(self, kid: str) -> None:
        """Take a key out of the JWK Set.

        Raises:
            KeyError: no published key has this ``kid``.
            ValueError: it is the current signing key (rotate first).
        """
        self._keys.retire(kid)
