"""The control-plane client: identity and task registration over HTTP (protocol §4, §5, §11).

Theory of operation. :class:`ControlPlaneClient` implements the core's ``ControlPlane`` port for one
protocol profile:

- ``chatgpt-backend`` (G1, §4.1, §5.1): every registration call is preceded by a fresh biscuit minted
  at ``GET {chatgpt}/authenticate_app_v2`` with the account's Bearer and bound to the exact
  registration URL; the registration then carries ``X-OpenAI-Authorization`` and no ``Authorization``.
- ``authapi`` (G4, §4.3, §5.1): identity registration carries ``Authorization: Bearer``; task
  registration carries no credential at all (the signature is the proof).

One *call* (``register_identity`` or ``register_task``) is made of attempts; one attempt is the HTTP
exchanges above (one or two). Each exchange has explicit connect/read/write/pool timeouts and a
per-exchange deadline (§11.1). Attempts are retried by stamina, with jittered exponential backoff and a
bounded number of attempts, only after HTTP 429, 5xx or a transport failure (timeout, connect error,
connection reset or protocol error; §11.2); the whole call is bounded by the retry deadline. Everything
else fails at once with :class:`ControlPlaneError`; retryable failures that outlast the policy become
:class:`ControlPlaneUnavailable`.

Secrets (the Bearer, biscuits) appear only in request headers. Response bodies are read up to a cap,
and the excerpt kept on errors has every known secret and anything secret-shaped masked before it is
cut to 512 characters. Log events carry the operation, method, path, status or error class, duration
and attempt number; never headers or bodies.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Final, TypeVar
from urllib.parse import urlsplit

import httpx
import stamina
import structlog

from broker.adapters.body_limit import BodyTooLargeError, read_limited
from broker.core.credentials.spec import Profile
from broker.core.protocol import routing, urls
from broker.errors import ControlPlaneError, ControlPlaneUnavailable, NoBearerToken
from broker.events import Event
from broker.logs import REDACTED, redact_secrets
from broker.secret import Secret

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "ControlPlaneClient",
    "ControlPlaneTimeouts",
    "Profile",
    "RetryPolicy",
    "build_http_client",
]

MAX_RESPONSE_BYTES: Final = 1024 * 1024
"""Largest successful response body read; a larger one is refused as malformed."""
EXCERPT_CHARS: Final = 512
"""Error bodies are cut to this many characters plus ``...`` (§5.2)."""
BISCUIT_HEADER: Final = "X-OpenAI-Authorization"
_ERROR_BODY_BYTES: Final = 16 * 1024
_REQUEST_ID_PREFIX: Final = "codex-agent-identity-"
# Bearer tokens and biscuits are visible ASCII (RFC 6750 b64token is a subset); anything else could
# split a header, and httpx would echo the offending value in its exception.
_HEADER_TOKEN: Final = re.compile(r"[\x21-\x7e]+")
_HEADER_TEXT: Final = re.compile(r"[\x20-\x7e]+")
# Retryable transport failures (§11.2): timeouts, connect/read/write/close errors, a peer that hung up
# or broke the protocol, and proxy failures. UnsupportedProtocol, LocalProtocolError, DecodingError
# and TooManyRedirects are our or the server's mistakes and are final.
_RETRYABLE_TRANSPORT: Final = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)

_log = structlog.get_logger()

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class ControlPlaneTimeouts:
    """Timeouts of control-plane HTTP exchanges, in seconds (§11.1).

    The per-exchange deadlines bound one HTTP exchange from sending to the last body byte; the
    transport timeouts bound each phase inside it.

    Raises:
        ValueError: a value is not a finite positive number.
    """

    connect: float = 5.0
    """Establishing a TCP/TLS connection."""
    read: float = 15.0
    """Waiting for each chunk of the response."""
    write: float = 15.0
    """Sending each chunk of the request."""
    pool: float = 5.0
    """Waiting for a free connection in the client's pool."""
    mint_biscuit: float = 15.0
    """Deadline of one ``authenticate_app_v2`` exchange (G1)."""
    register_identity: float = 15.0
    """Deadline of one identity-registration exchange (G1 and G4)."""
    register_task_chatgpt_backend: float = 15.0
    """Deadline of one task-registration exchange on the ChatGPT backend (G1)."""
    register_task_authapi: float = 30.0
    """Deadline of one task-registration exchange at the AuthAPI (G4)."""
    accounts_check: float = 5.0
    """Deadline of one workspace-route discovery exchange (§16)."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{item.name}: must be a finite number of seconds above 0")

    def register_task(self, profile: Profile) -> float:
        """The task-registration deadline for ``profile``."""
        if profile.rules.at_authapi:
            return self.register_task_authapi
        return self.register_task_chatgpt_backend

    def transport(self) -> httpx.Timeout:
        """The connect/read/write/pool timeouts as an ``httpx.Timeout``."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How retryable failures are retried (§11.2): bounded, jittered, exponential, with a deadline.

    The wait before retry ``n`` is ``min(wait_max, wait_initial * wait_exp_base ** (n - 1) +
    uniform(0, wait_jitter))`` (stamina's backoff).

    Raises:
        ValueError: ``attempts`` is below 1 or a duration is negative or not finite.
    """

    attempts: int = 3
    """Attempts in total, the first included (the reference makes 3)."""
    deadline: float = 60.0
    """Upper bound on a whole call, waits and every attempt included, in seconds."""
    wait_initial: float = 0.2
    """Base wait before the first retry, in seconds."""
    wait_max: float = 2.0
    """Cap on any single wait, in seconds."""
    wait_jitter: float = 0.3
    """Random extra wait added to each backoff, up to this many seconds."""
    wait_exp_base: float = 2.0
    """Growth factor of the wait from one retry to the next."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts: must be at least 1")
        if not math.isfinite(self.deadline) or self.deadline <= 0:
            raise ValueError("deadline: must be a finite number of seconds above 0")
        for name in ("wait_initial", "wait_max", "wait_jitter"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number of seconds, 0 or more")
        if not math.isfinite(self.wait_exp_base) or self.wait_exp_base < 1:
            raise ValueError("wait_exp_base: must be a finite number, 1 or more")


DEFAULT_TIMEOUTS: Final = ControlPlaneTimeouts()
DEFAULT_RETRY: Final = RetryPolicy()


def build_http_client(
    timeouts: ControlPlaneTimeouts = DEFAULT_TIMEOUTS, *, max_connections: int = 20
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` suited to :class:`ControlPlaneClient`, for the composition root.

    The caller owns it and closes it (``await client.aclose()``). Redirects are not followed: a
    registration answered with a redirect is an error, not something to replay elsewhere.

    Args:
        timeouts: connect/read/write/pool defaults of the client (each request also sets them).
        max_connections: the pool size.
    """
    return httpx.AsyncClient(
        timeout=timeouts.transport(),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        follow_redirects=False,
    )


class _Credential(enum.Enum):
    BISCUIT = "biscuit"
    BEARER = "bearer"
    NONE = "none"


class _Retryable(Exception):
    """One attempt failed in a way worth another (§11.2); internal to this module."""

    def __init__(
        self, operation: str, *, status: int | None, error: str, body_excerpt: str = ""
    ) -> None:
        super().__init__(f"{operation}: {error}")
        self.operation = operation
        self.status = status
        self.error = error
        self.body_excerpt = body_excerpt


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes


class _Redactor:
    """Masks the secrets of one call, and anything secret-shaped, in response text."""

    def __init__(self, *known: Secret) -> None:
        self._known = [s for s in known if s]

    def add(self, value: str) -> None:
        self._known.append(Secret(value))

    def excerpt(self, content: bytes) -> str:
        # Mask before cutting so a secret can never be split at the cut and escape the match.
        text = content[:_ERROR_BODY_BYTES].decode("utf-8", errors="replace")
        for secret in self._known:
            text = text.replace(secret.reveal(), REDACTED)
        text = str(redact_secrets(None, "excerpt", {"event": text})["event"])
        return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def _bearer_header(bearer: Secret, operation: str) -> str:
    value = bearer.reveal()
    if not value.strip():
        raise NoBearerToken(f"{operation}: the bearer token is empty")
    if not _HEADER_TOKEN.fullmatch(value):
        raise ControlPlaneError(
            f"{operation}: the bearer token contains characters not allowed in an HTTP header",
            operation=operation,
        )
    return f"Bearer {value}"


def _request_id() -> str:
    """``codex-agent-identity-`` + base64url (no padding) of 16 random bytes: 22 characters (§4.1)."""
    return _REQUEST_ID_PREFIX + secrets.token_urlsafe(16)


def _json_object(operation: str, reply: _Reply, redactor: _Redactor) -> dict[str, object]:
    try:
        data = json.loads(reply.content)
    except (ValueError, RecursionError) as exc:
        raise ControlPlaneError(
            f"{operation}: response body is not valid JSON",
            operation=operation,
            status=reply.status,
            body_excerpt=redactor.excerpt(reply.content),
        ) from exc
    if not isinstance(data, dict):
        raise ControlPlaneError(
            f"{operation}: response body is a JSON {type(data).__name__}, not an object",
            operation=operation,
            status=reply.status,
            body_excerpt=redactor.excerpt(reply.content),
        )
    return data


class ControlPlaneClient:
    """Registers agent identities and tasks with the control plane (the ``ControlPlane`` port).

    Args:
        http: the HTTP client; the caller owns it and closes it (see :func:`build_http_client`).
        base_url: the configured ChatGPT base URL (normalised per §3.1 for ``chatgpt-backend``).
        profile: the protocol generation to speak (§0.1, §15).
        authapi_base_url: the AuthAPI base for ``authapi``; by default derived from ``base_url``
            for production and staging (§3.4). Ignored by ``chatgpt-backend``.
        timeouts: transport timeouts and per-exchange deadlines (§11.1).
        retry: the retry policy (§11.2).
        user_agent: the ``User-Agent`` of every request (§3.5).
        originator: the ``originator`` header of every request (§3.5).
        fedramp: send ``X-OpenAI-Fedramp: true`` on ``authapi`` identity registration (§4.3).
        on_request: called after each exchange with (operation, HTTP status or the error when no
            answer came, seconds), where ``controlplane.request`` is logged (the metrics).

    Raises:
        UrlError: a base URL is not absolute http(s), or no AuthAPI is known for ``base_url``.
        ValueError: ``user_agent`` or ``originator`` is empty or not printable ASCII.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        profile: Profile,
        authapi_base_url: str | None = None,
        timeouts: ControlPlaneTimeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        user_agent: str,
        originator: str = "credential_broker",
        fedramp: bool = False,
        on_request: Callable[[str, str, float], None] | None = None,
    ) -> None:
        for name, value in (("user_agent", user_agent), ("originator", originator)):
            if not _HEADER_TEXT.fullmatch(value):
                raise ValueError(f"{name}: must be non-empty printable ASCII")
        self._http = http
        self._profile = profile
        self._timeouts = timeouts
        self._retry = retry
        self._fedramp = fedramp
        self._on_request = on_request
        self._headers: Final = {
            "originator": originator,
            "User-Agent": user_agent,
            "Accept": "application/json",
        }
        self._rules = profile.rules
        if self._rules.at_authapi:
            self._root = urls.authapi_base_for(base_url, authapi_base_url)
        else:
            self._root = urls.normalize_chatgpt_base_url(base_url)
        urls.host_of(self._root)
        self._biscuit_url = urls.authenticate_app_url(self._root)
        # Route discovery is a ChatGPT-backend call in both profiles (§16).
        self._accounts_check_url = (
            urls.normalize_chatgpt_base_url(base_url) + routing.ACCOUNTS_CHECK_PATH
        )
        self._identity_url = urls.register_identity_url(self._root, normalise=False)

    @property
    def profile(self) -> Profile:
        """The protocol profile this client speaks."""
        return self._profile

    async def register_identity(
        self, *, bearer: Secret, agent_public_key: str, abom: Mapping[str, str]
    ) -> str:
        """Register an agent public key and return its ``agent_runtime_id`` (§4.1 G1, §4.3 G4).

        Args:
            bearer: the account's access token (mints the G1 biscuit; the G4 ``Authorization``).
            agent_public_key: the ``ssh-ed25519 …`` public key (§2.3).
            abom: the agent bill of materials (§4.4).

        Returns:
            The ``agent_runtime_id`` the control plane chose.

        Raises:
            NoBearerToken: ``bearer`` is empty.
            ControlPlaneUnavailable: 429, 5xx or transport failures outlasted the retry policy.
            ControlPlaneError: any other failure, a malformed response, or no usable
                ``agent_runtime_id`` in it.
        """
        operation = "register_identity"
        body: dict[str, object] = {
            "abom": dict(abom),
            "agent_public_key": agent_public_key,
            "capabilities": list(self._rules.capabilities),
        }
        if self._rules.ttl_field:
            body["ttl"] = None
        extra: dict[str, str] = {}
        credential = _Credential.BISCUIT if self._rules.biscuits else _Credential.BEARER
        if self._rules.at_authapi and self._fedramp:
            extra["X-OpenAI-Fedramp"] = "true"
        data = await self._register(
            operation,
            self._identity_url,
            body,
            bearer=bearer,
            credential=credential,
            deadline=self._timeouts.register_identity,
            extra_headers=extra,
        )
        runtime_id = data.get("agent_runtime_id")
        if not isinstance(runtime_id, str) or not runtime_id.strip():
            raise ControlPlaneError(
                f"{operation}: response is missing agent_runtime_id (a non-empty string)",
                operation=operation,
                status=200,
            )
        if (
            not _HEADER_TOKEN.fullmatch(runtime_id)
            or any(ch in runtime_id for ch in "/?#%")
            or runtime_id in (".", "..")
        ):
            raise ControlPlaneError(
                f"{operation}: agent_runtime_id is not a usable path segment",
                operation=operation,
                status=200,
            )
        return runtime_id

    async def register_task(
        self, *, bearer: Secret, agent_runtime_id: str, body: Mapping[str, str]
    ) -> Mapping[str, object]:
        """Post a signed task registration and return the decoded JSON object (§5.1, §5.2).

        Args:
            bearer: the account's access token; mints the G1 biscuit, unused by G4 (which sends no
                credential).
            agent_runtime_id: the identity's runtime id (inserted into the path unencoded, §3.3).
            body: ``{"timestamp", "signature"}`` from ``task_registration_body`` (§5.1).

        Returns:
            The response object (``encrypted_task_id`` or ``task_id``; see ``task_id_from_response``).

        Raises:
            UrlError: ``agent_runtime_id`` is empty or contains a URL delimiter.
            NoBearerToken: ``bearer`` is empty (G1 only).
            ControlPlaneUnavailable: 429, 5xx or transport failures outlasted the retry policy.
            ControlPlaneError: any other failure, or a response that is not a JSON object.
        """
        url = urls.register_task_url(self._root, agent_runtime_id, normalise=False)
        return await self._register(
            "register_task",
            url,
            dict(body),
            bearer=bearer,
            credential=_Credential.BISCUIT if self._rules.biscuits else _Credential.NONE,
            deadline=self._timeouts.register_task(self._profile),
            extra_headers={},
        )

    async def accounts_check(self, *, bearer: Secret, account_id: str) -> Mapping[str, object]:
        """``GET {chatgpt base}/wham/accounts/check`` with the account's Bearer (§16).

        Args:
            bearer: the account's access token.
            account_id: the selected account, sent as ``ChatGPT-Account-ID``.

        Returns:
            The decoded answer (read by :func:`broker.core.protocol.routing.parse_accounts_check`).

        Raises:
            NoBearerToken: ``bearer`` is empty.
            ControlPlaneUnavailable: 429, 5xx or transport failures outlasted the retry policy.
            ControlPlaneError: any other failure (a 401 carries ``status`` 401), an account id that
                is not a header value, or a response that is not a JSON object.
        """
        operation = "accounts_check"
        if not _HEADER_TOKEN.fullmatch(account_id):
            raise ControlPlaneError(
                f"{operation}: the account id is not a header value", operation=operation
            )
        redactor = _Redactor(bearer)
        headers = {
            **self._headers,
            "Authorization": _bearer_header(bearer, operation),
            "ChatGPT-Account-ID": account_id,
        }
        if self._fedramp:
            headers["X-OpenAI-Fedramp"] = "true"

        async def attempt(number: int) -> dict[str, object]:
            reply = await self._exchange(
                operation,
                "GET",
                self._accounts_check_url,
                headers,
                None,
                number,
                self._timeouts.accounts_check,
                redactor,
            )
            return _json_object(operation, reply, redactor)

        return await self._with_retries(operation, attempt)

    # -- one call: attempts under the retry policy ---------------------------------------------

    async def _register(
        self,
        operation: str,
        url: str,
        body: Mapping[str, object],
        *,
        bearer: Secret,
        credential: _Credential,
        deadline: float,
        extra_headers: Mapping[str, str],
    ) -> dict[str, object]:
        # The bearer is masked even where it is not sent: a server may echo what it saw before.
        redactor = _Redactor(bearer)

        async def attempt(number: int) -> dict[str, object]:
            headers = {**self._headers, **extra_headers}
            if credential is _Credential.BISCUIT:
                headers[BISCUIT_HEADER] = await self._mint_biscuit(bearer, url, number, redactor)
            elif credential is _Credential.BEARER:
                headers["Authorization"] = _bearer_header(bearer, operation)
            reply = await self._exchange(
                operation, "POST", url, headers, body, number, deadline, redactor
            )
            return _json_object(operation, reply, redactor)

        return await self._with_retries(operation, attempt)

    async def _with_retries(self, operation: str, attempt: Callable[[int], Awaitable[T]]) -> T:
        policy = self._retry
        last: _Retryable | None = None
        attempts = 0
        try:
            async with asyncio.timeout(policy.deadline):
                async for retrying in stamina.retry_context(
                    on=_Retryable,
                    attempts=policy.attempts,
                    timeout=policy.deadline,
                    wait_initial=policy.wait_initial,
                    wait_max=policy.wait_max,
                    wait_jitter=policy.wait_jitter,
                    wait_exp_base=policy.wait_exp_base,
                ):
                    with retrying:
                        attempts = retrying.num
                        if last is not None:
                            _log.info(
                                Event.CONTROLPLANE_RETRY,
                                operation=operation,
                                attempt=attempts,
                                previous_operation=last.operation,
                                previous_status=last.status,
                                previous_error=last.error,
                            )
                        try:
                            return await attempt(attempts)
                        except _Retryable as exc:
                            last = exc
                            raise
        except _Retryable as exc:
            raise ControlPlaneUnavailable(
                f"{operation}: control plane unavailable after {attempts} attempt(s); "
                f"last failure: {exc.operation}: {exc.error}",
                operation=exc.operation,
                status=exc.status,
                body_excerpt=exc.body_excerpt,
            ) from exc
        except TimeoutError as exc:
            raise ControlPlaneUnavailable(
                f"{operation}: no success within the {policy.deadline:g} s retry deadline "
                f"({attempts} attempt(s))",
                operation=last.operation if last else operation,
                status=last.status if last else None,
                body_excerpt=last.body_excerpt if last else "",
            ) from exc
        raise AssertionError("stamina ended a retry loop without an outcome")  # pragma: no cover

    # -- one attempt's exchanges ---------------------------------------------------------------

    async def _mint_biscuit(
        self, bearer: Secret, target_url: str, attempt: int, redactor: _Redactor
    ) -> str:
        """Mint a biscuit for ``POST target_url`` (§4.1 step 1)."""
        operation = "mint_biscuit"
        headers = {
            **self._headers,
            "Authorization": _bearer_header(bearer, operation),
            "X-Request-Id": _request_id(),
            "X-Original-Method": "POST",
            "X-Original-Url": target_url,
        }
        reply = await self._exchange(
            operation,
            "GET",
            self._biscuit_url,
            headers,
            None,
            attempt,
            self._timeouts.mint_biscuit,
            redactor,
        )
        raw = [value for name, value in reply.headers if name.lower() == b"x-openai-authorization"]
        if not raw:
            raise ControlPlaneError(
                f"{operation}: response has no x-openai-authorization header",
                operation=operation,
                status=reply.status,
            )
        try:
            biscuit = raw[0].decode("utf-8").strip()
        except UnicodeDecodeError:
            biscuit = ""
        if not _HEADER_TOKEN.fullmatch(biscuit):
            raise ControlPlaneError(
                f"{operation}: x-openai-authorization is empty, not UTF-8 or not a header value",
                operation=operation,
                status=reply.status,
            )
        redactor.add(biscuit)
        return biscuit

    async def _exchange(
        self,
        operation: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Mapping[str, object] | None,
        attempt: int,
        deadline: float,
        redactor: _Redactor,
    ) -> _Reply:
        """One HTTP exchange: send, read a capped body, classify the outcome."""
        path = urlsplit(url).path
        started = time.perf_counter()

        def log(*, status: int | None = None, error: str | None = None) -> None:
            seconds = time.perf_counter() - started
            if self._on_request is not None:
                self._on_request(
                    operation, str(status) if status is not None else error or "", seconds
                )
            level = _log.info if status is not None and 200 <= status < 300 else _log.warning
            level(
                Event.CONTROLPLANE_REQUEST,
                operation=operation,
                method=method,
                path=path,
                status=status,
                error=error,
                duration_ms=round(seconds * 1000, 3),
                attempt=attempt,
            )

        try:
            async with asyncio.timeout(deadline):
                reply = await self._send(method, url, headers, body)
        except TimeoutError as exc:
            log(error="DeadlineExceeded")
            raise _Retryable(
                operation, status=None, error=f"no answer within {deadline:g} s"
            ) from exc
        except _RETRYABLE_TRANSPORT as exc:
            log(error=type(exc).__name__)
            raise _Retryable(operation, status=None, error=type(exc).__name__) from exc
        except BodyTooLargeError as exc:
            log(error="ResponseTooLarge")
            raise ControlPlaneError(
                f"{operation}: response body exceeds {MAX_RESPONSE_BYTES} bytes",
                operation=operation,
            ) from exc
        except httpx.HTTPError as exc:
            log(error=type(exc).__name__)
            raise ControlPlaneError(
                f"{operation}: {method} {path} failed: {type(exc).__name__}", operation=operation
            ) from exc
        log(status=reply.status)
        if 200 <= reply.status < 300:
            return reply
        excerpt = redactor.excerpt(reply.content)
        if reply.status == 429 or reply.status >= 500:
            raise _Retryable(
                operation, status=reply.status, error=f"HTTP {reply.status}", body_excerpt=excerpt
            )
        raise ControlPlaneError(
            f"{operation}: control plane answered HTTP {reply.status} to {method} {path}",
            operation=operation,
            status=reply.status,
            body_excerpt=excerpt,
        )

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Mapping[str, object] | None,
    ) -> _Reply:
        request = self._http.build_request(
            method, url, headers=headers, json=body, timeout=self._timeouts.transport()
        )
        if "Authorization" not in headers:
            # A default header of an injected client must not add a credential the profile forbids.
            request.headers.pop("Authorization", None)
        response = await self._http.send(request, stream=True, auth=None, follow_redirects=False)
        try:
            success = 200 <= response.status_code < 300
            content = await read_limited(
                response,
                limit=MAX_RESPONSE_BYTES if success else _ERROR_BODY_BYTES,
                strict=success,
            )
        finally:
            await response.aclose()
        return _Reply(response.status_code, response.headers.raw, content)
