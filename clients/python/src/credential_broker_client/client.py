"""``BrokerClient``: the asyncio client. Headers come from memory while a watch stream is up.

See :mod:`credential_broker_client._cache` for how the cache, the watch streams and the unary
fallback fit together.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import grpc

from credential_broker_client._cache import AuthorizationCache, Backoff, Counters, Key, Watch
from credential_broker_client._convert import (
    authorization_from_proto,
    duration_to_proto,
    mode_to_proto,
)
from credential_broker_client._proto.credential_broker.v1 import broker_pb2 as pb
from credential_broker_client._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from credential_broker_client._version import __version__
from credential_broker_client.authorization import Authorization
from credential_broker_client.errors import (
    BrokerUnavailableError,
    ClientClosedError,
    from_rpc_error,
)

_SERVICE: Final = "credential_broker.v1.CredentialBroker"
# Unary calls are retried by gRPC itself on UNAVAILABLE only, within the call's deadline (the
# broker's README: only UNAVAILABLE-like errors are retryable; never INVALID_ARGUMENT or CANCELLED).
_SERVICE_CONFIG: Final = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": _SERVICE, "method": method}
                    for method in ("GetAuthorization", "ReportRejection", "EnsureTask")
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
# Keepalive finds a dead connection under an idle watch stream; 30 s stays above the broker's
# minimum ping interval (10 s), so the broker never answers our pings with GOAWAY.
_CHANNEL_OPTIONS: Final[tuple[tuple[str, str | int], ...]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.primary_user_agent", f"credential-broker-client-python/{__version__}"),
)

_now = time.time


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStats:
    """A snapshot of what a client did since it was created."""

    cache_hits: int
    """Headers served from memory."""
    unary_calls: int
    """``GetAuthorization`` calls (cache misses, stream down, larger ``min_remaining``)."""
    stream_updates: int
    """Headers received on watch streams."""
    stream_failures: int
    """Watch streams that broke (each is reconnected with backoff)."""
    rejections_reported: int
    stale_served: int
    """Last-known headers served because the broker could not be reached."""
    watches: int
    """Watch streams currently kept open (or reconnecting)."""


class BrokerClient:
    """An asyncio client for the credential broker.

    Use it as an async context manager (or call :meth:`aclose`) on one event loop::

        async with BrokerClient("127.0.0.1:50051") as broker:
            auth = await broker.get_authorization(thread_id="thread-42")
            response = await http.get(url, headers=auth.http_headers())

    Args:
        target: the broker's gRPC address (``host:port`` or any gRPC target string).
        identity: the identity to ask for when a call names none (default: the broker's default).
        timeout: seconds allowed for each call (the deadline of every RPC it makes; wrap a call in
            ``asyncio.timeout()`` for a shorter one).
        watch: keep a ``WatchAuthorization`` stream per key and serve headers from memory; with
            False every call is a unary ``GetAuthorization``.
        max_watches: streams kept open at most; the least recently used one is closed to open
            another.
        backoff: reconnect delays of the watch streams.
        caller_token: this worker's caller token, when the broker authenticates callers by token
            (sent as ``authorization: Bearer <token>`` metadata on every RPC).
        credentials: TLS channel credentials (default: plaintext, for loopback and sidecars); with
            a client certificate for brokers that authenticate callers by mTLS.
        metadata: more metadata sent with every RPC.
        channel_options: extra gRPC channel options (they override the defaults).
        channel: an existing ``grpc.aio`` channel to use instead of opening one (owned by the
            caller: :meth:`aclose` leaves it open).

    Raises:
        ValueError: a non-positive ``timeout`` or ``max_watches``.
    """

    def __init__(
        self,
        target: str,
        *,
        identity: str | None = None,
        timeout: float = 5.0,
        watch: bool = True,
        max_watches: int = 64,
        backoff: Backoff | None = None,
        caller_token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, str | int]] = (),
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout: must be positive")
        if max_watches < 1:
            raise ValueError("max_watches: must be at least 1")
        self._identity = identity or ""
        self._timeout = timeout
        self._watching = watch
        self._max_watches = max_watches
        self._backoff = backoff or Backoff()
        self._metadata = tuple(metadata)
        if caller_token is not None:
            self._metadata += (("authorization", f"Bearer {caller_token}"),)
        self._owns_channel = channel is None
        if channel is None:
            options = list({**dict(_CHANNEL_OPTIONS), **dict(channel_options)}.items())
            if credentials is None:
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._channel = channel
        self._stub = pb_grpc.CredentialBrokerStub(channel)
        self._cache = AuthorizationCache()
        self._live = self._cache.live  # the hot path reads this dict directly
        self._counters = Counters()
        self._watches: dict[Key, Watch] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the hot path ---------------------------------------------------------------------------

    def cached(
        self,
        thread_id: str | None = None,
        *,
        identity: str | None = None,
        bearer_only: bool = False,
        min_remaining: float | None = None,
    ) -> Authorization | None:
        """The header from memory, or ``None`` when it is not cached (never does I/O).

        Safe to call from any thread. Arguments as in :meth:`get_authorization`.
        """
        entry = self._live.get((identity or self._identity, thread_id or "", bearer_only))
        if entry is not None:
            now = _now()
            if entry.expires - (min_remaining or 0.0) > now:
                entry.last_used = now
                self._counters.cache_hits += 1
                return entry.authorization
        return None

    async def get_authorization(
        self,
        thread_id: str | None = None,
        *,
        identity: str | None = None,
        bearer_only: bool = False,
        min_remaining: float | None = None,
    ) -> Authorization:
        """The header for one call to the control plane.

        Served from memory while the key's watch stream is up; otherwise asked for with a unary
        ``GetAuthorization`` (and, if the broker cannot be reached, the last header seen for the key
        while it is still valid).

        Args:
            thread_id: the conversation thread (its own task); ``None`` for the background task.
            identity: the broker identity (default: the client's).
            bearer_only: always a Bearer (bootstrap, token refresh, registration-style calls).
            min_remaining: the header must stay valid at least this many seconds.

        Returns:
            The :class:`Authorization` to send.

        Raises:
            BrokerUnavailableError: the broker cannot answer now (retryable).
            InvalidRequestError: a malformed ``thread_id`` or ``identity``.
            UnknownIdentityError: the identity is not configured.
            CredentialUnavailableError: no assertion possible and no Bearer to fall back to.
            ClientClosedError: the client was closed.
        """
        hit = self.cached(
            thread_id, identity=identity, bearer_only=bearer_only, min_remaining=min_remaining
        )
        if hit is not None:
            return hit
        key = (identity or self._identity, thread_id or "", bearer_only)
        return await self._fetch(key, min_remaining)

    # -- misses ---------------------------------------------------------------------------------

    async def _fetch(self, key: Key, min_remaining: float | None) -> Authorization:
        if self._closed:
            raise ClientClosedError("the client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        watch = self._watch_for(key) if self._watching else None
        if watch is not None and not watch.ready.done():
            # The first request of a key waits for the stream's first message: from then on the
            # key is served from memory, and there is no second round trip for the same value.
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(watch.ready)
            except TimeoutError:
                pass
            entry = self._live.get(key)
            if entry is not None and entry.expires - (min_remaining or 0.0) > _now():
                return entry.authorization
        try:
            return await self._unary(key, min_remaining, deadline)
        except BrokerUnavailableError:
            stale = self._cache.stale(key, min_remaining or 0.0)
            if stale is None:
                raise
            self._counters.stale_served += 1
            return stale

    def _watch_for(self, key: Key) -> Watch | None:
        watch = self._watches.get(key)
        if watch is not None:
            if watch.finished_at is None:
                return watch
            if time.monotonic() - watch.finished_at < self._backoff.maximum:
                return None  # stopped by a fatal status; unary calls report it
        if len(self._watches) >= self._max_watches:
            self._retire_least_used()
        watch = Watch(
            key,
            stub=self._stub,
            cache=self._cache,
            counters=self._counters,
            backoff=self._backoff,
            metadata=self._metadata,
        )
        self._watches[key] = watch
        return watch

    def _retire_least_used(self) -> None:
        def last_used(item: tuple[Key, Watch]) -> float:
            entry = self._live.get(item[0])
            return entry.last_used if entry is not None else item[1].started

        key, watch = min(self._watches.items(), key=last_used)
        del self._watches[key]
        task = asyncio.ensure_future(watch.stop())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _unary(self, key: Key, min_remaining: float | None, deadline: float) -> Authorization:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise BrokerUnavailableError(
                f"DEADLINE_EXCEEDED: no header from the broker within {self._timeout:g}s",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        identity, thread_id, bearer_only = key
        request = pb.GetAuthorizationRequest(
            identity=identity,
            thread_id=thread_id,
            mode=mode_to_proto(bearer_only),
            min_remaining=duration_to_proto(min_remaining),
        )
        self._counters.unary_calls += 1
        try:
            response = await self._stub.GetAuthorization(
                request, timeout=remaining, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        authorization, expires = authorization_from_proto(response.authorization)
        self._cache.remember(key, authorization, expires)
        return authorization

    # -- rejections -----------------------------------------------------------------------------

    async def report_rejection(
        self,
        rejected: Authorization | str,
        http_status: int = 401,
        *,
        thread_id: str | None = None,
        identity: str | None = None,
    ) -> Authorization:
        """Tell the broker the control plane refused a header; get the one to use from now on.

        The rejected value is dropped from the cache at once. The broker replaces an assertion's
        task once for the whole fleet, however many workers report it.

        Args:
            rejected: the header (or its :class:`Authorization`) exactly as it was sent.
            http_status: the control plane's answer, 401 or 403.
            thread_id: the thread the header was for (default: the ``Authorization``'s, else none).
            identity: the broker identity (default: the client's).

        Returns:
            The replacement :class:`Authorization`.

        Raises:
            BrokerUnavailableError: the broker cannot answer now (retryable).
            InvalidRequestError: ``http_status`` is not 401/403, or the header is not the broker's.
            ClientClosedError: the client was closed.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        if isinstance(rejected, Authorization):
            header_value = rejected.header_value
            thread_id = rejected.thread_id if thread_id is None else thread_id
        else:
            header_value = rejected
        key: Key = (identity or self._identity, thread_id or "", False)
        self._cache.reject(header_value)
        self._counters.rejections_reported += 1
        request = pb.ReportRejectionRequest(
            identity=key[0], thread_id=key[1], header_value=header_value, http_status=http_status
        )
        try:
            response = await self._stub.ReportRejection(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        authorization, expires = authorization_from_proto(response.authorization)
        watch = self._watches.get(key)
        if watch is not None and watch.connected:
            self._cache.publish(key, authorization, expires, watch)
        else:
            self._cache.remember(key, authorization, expires)
        return authorization

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def stats(self) -> ClientStats:
        """Counters since the client was created."""
        c = self._counters
        return ClientStats(
            cache_hits=c.cache_hits,
            unary_calls=c.unary_calls,
            stream_updates=c.stream_updates,
            stream_failures=c.stream_failures,
            rejections_reported=c.rejections_reported,
            stale_served=c.stale_served,
            watches=sum(1 for w in self._watches.values() if w.finished_at is None),
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def aclose(self) -> None:
        """End every watch stream and close the channel (unless it was injected). Idempotent."""
        if self._closed:
            return
        self._closed = True
        watches = list(self._watches.values())
        self._watches.clear()
        await asyncio.gather(*(w.stop() for w in watches))
        if self._retired:
            await asyncio.wait(self._retired)
        self._cache.clear()
        if self._owns_channel:
            await self._channel.close()

    close = aclose
    """Alias of :meth:`aclose`."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
