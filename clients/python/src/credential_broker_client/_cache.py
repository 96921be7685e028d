"""The in-memory header cache and the ``WatchAuthorization`` streams that feed it.

Theory of operation
-------------------
A cache key is ``(identity, thread_id, bearer_only)``. The first request for a key opens one
``WatchAuthorization`` stream for it (a :class:`Watch`). The broker sends the current header at once,
then a fresh one before each ``expires_at`` and at once after the task is replaced, so while the
stream is up the newest message *is* the answer: it is published in :attr:`AuthorizationCache.live`
and served from memory (a dict lookup and a clock read) until its ``expires_at``.

When the stream breaks, the key's live entry is withdrawn at once: without the stream the client
would not hear of a replacement, so requests go to the broker with a unary ``GetAuthorization``
until the stream is back. The watch reconnects by itself with exponential backoff and jitter, reset
after every message. A watch that ends with a status retrying cannot fix (INVALID_ARGUMENT,
NOT_FOUND, FAILED_PRECONDITION, ...) stops; the key is served by unary calls, which surface the
error to the caller, and a new watch may be tried after ``Backoff.maximum``.

:attr:`AuthorizationCache.last` keeps the last value seen per key (from a stream or a unary call).
It is served only when the broker cannot be reached and the value is still before its
``expires_at`` (stale-if-error). A header reported as rejected is dropped from both maps and never
published again.

Everything here runs on the client's event loop. Other threads (``SyncBrokerClient``) only read
``live``; replacing a dict value is atomic, so a reader sees either the old or the new entry.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import grpc

from credential_broker_client._convert import authorization_from_proto
from credential_broker_client._proto.credential_broker.v1 import broker_pb2 as pb
from credential_broker_client._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from credential_broker_client.authorization import Authorization
from credential_broker_client.errors import BrokerClientError, from_rpc_error

_log = logging.getLogger("credential_broker_client")

Key = tuple[str, str, bool]
"""``(identity, thread_id, bearer_only)``; ``""`` is the broker's default identity / no thread."""

# Statuses after which reconnecting the same stream cannot help: the request itself is refused.
_WATCH_FATAL: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
_REJECTED_REMEMBERED: Final = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Reconnect delays for the watch streams: ``initial * multiplier**n``, capped, with jitter.

    Raises:
        ValueError: a non-positive delay, a multiplier below 1 or a jitter outside [0, 1).
    """

    initial: float = 0.2
    """Seconds before the first reconnect."""
    maximum: float = 10.0
    """Upper bound of one delay."""
    multiplier: float = 2.0
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or not math.isfinite(self.maximum):
            raise ValueError("Backoff: need 0 < initial <= maximum, both finite")
        if self.multiplier < 1:
            raise ValueError("Backoff: multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("Backoff: jitter must be in [0, 1)")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect number ``attempt`` (0 for the first)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 (jitter, not crypto)
        return base * spread


@dataclass(slots=True)
class Counters:
    """What the client did since it was created (read through ``BrokerClient.stats``)."""

    cache_hits: int = 0
    unary_calls: int = 0
    stream_updates: int = 0
    stream_failures: int = 0
    rejections_reported: int = 0
    stale_served: int = 0


class CacheEntry:
    """One cached header: its value, expiry (epoch seconds, ``inf`` for none), last use and source.

    ``source`` is the watch that published a live entry, so that a watch being retired can never
    withdraw the entry of the watch that replaced it.
    """

    __slots__ = ("authorization", "expires", "last_used", "source")

    def __init__(
        self, authorization: Authorization, expires: float, last_used: float, source: object
    ) -> None:
        self.authorization = authorization
        self.expires = expires
        self.last_used = last_used
        self.source = source


class AuthorizationCache:
    """Live entries (fed by watch streams) and last-known values (stale-if-error)."""

    def __init__(self) -> None:
        self.live: dict[Key, CacheEntry] = {}
        self.last: dict[Key, CacheEntry] = {}
        self._rejected: collections.deque[str] = collections.deque(maxlen=_REJECTED_REMEMBERED)

    def publish(
        self, key: Key, authorization: Authorization, expires: float, source: object
    ) -> None:
        """Serve ``authorization`` from memory for ``key`` (ignored if it was rejected)."""
        if authorization.header_value in self._rejected:
            return
        previous = self.live.get(key)
        now = time.time()
        last_used = previous.last_used if previous else now
        entry = CacheEntry(authorization, expires, last_used, source)
        self.live[key] = entry
        self.last[key] = entry

    def remember(self, key: Key, authorization: Authorization, expires: float) -> None:
        """Keep a unary answer as the key's last-known value (not served while the broker answers)."""
        if authorization.header_value not in self._rejected:
            self.last[key] = CacheEntry(authorization, expires, time.time(), None)

    def withdraw(self, key: Key, source: object) -> None:
        """Stop serving ``key`` from memory if ``source`` published its entry (its stream is down)."""
        entry = self.live.get(key)
        if entry is not None and entry.source is source:
            del self.live[key]

    def reject(self, header_value: str) -> None:
        """Forget every entry carrying ``header_value`` and never publish it again."""
        self._rejected.append(header_value)
        for table in (self.live, self.last):
            for key in [
                k for k, e in table.items() if e.authorization.header_value == header_value
            ]:
                del table[key]

    def stale(self, key: Key, min_remaining: float) -> Authorization | None:
        """The last-known value for ``key`` if it stays valid ``min_remaining`` seconds more."""
        entry = self.last.get(key)
        if entry is not None and entry.expires - min_remaining > time.time():
            return entry.authorization
        return None

    def clear(self) -> None:
        """Forget everything (on close)."""
        self.live.clear()
        self.last.clear()


class Watch:
    """One ``WatchAuthorization`` stream for one key, reconnected with backoff, feeding the cache.

    Create it on the client's event loop; it runs until :meth:`stop` or a fatal status.
    """

    def __init__(
        self,
        key: Key,
        *,
        stub: pb_grpc.CredentialBrokerAsyncStub,
        cache: AuthorizationCache,
        counters: Counters,
        backoff: Backoff,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        self.key = key
        self.started = time.time()
        self.connected = False
        """Whether the stream has delivered a message and not failed since."""
        self.error: BrokerClientError | None = None
        """The fatal status that stopped the watch, if one did."""
        self.finished_at: float | None = None
        """``time.monotonic()`` when the watch stopped for good."""
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[bool] = loop.create_future()
        """Resolves once: True at the first message, False if the first attempt failed."""
        self._stub = stub
        self._cache = cache
        self._counters = counters
        self._backoff = backoff
        self._metadata = tuple(metadata)
        identity, thread_id, bearer_only = key
        self._request = pb.WatchAuthorizationRequest(
            identity=identity,
            thread_id=thread_id,
            mode=pb.MODE_BEARER_ONLY if bearer_only else pb.MODE_DEFAULT,
        )
        self.task = asyncio.create_task(self._run(), name=f"credential-broker-watch{key!r}")
        self.task.add_done_callback(self._done)

    def _resolve(self, value: bool) -> None:
        if not self.ready.done():
            self.ready.set_result(value)

    def _down(self) -> None:
        self.connected = False
        self._cache.withdraw(self.key, self)
        self._resolve(False)

    async def _run(self) -> None:
        attempt = 0
        while True:
            call = self._stub.WatchAuthorization(self._request, metadata=self._metadata)
            try:
                async for response in call:
                    authorization, expires = authorization_from_proto(response.authorization)
                    self._cache.publish(self.key, authorization, expires, self)
                    self._counters.stream_updates += 1
                    self.connected = True
                    attempt = 0
                    self._resolve(True)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _WATCH_FATAL:
                    self.error = from_rpc_error(exc)
                    _log.warning("watch stopped: %s", self.error.message)
                    return
                _log.debug("watch stream failed: %s", exc.code().name)
            finally:
                # A no-op after the stream ended; ends the RPC when this task is being cancelled.
                call.cancel()
                self._down()
            self._counters.stream_failures += 1
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    def _done(self, task: asyncio.Task[None]) -> None:
        self._down()
        self.finished_at = time.monotonic()
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("watch ended by an unexpected error", exc_info=exc)

    async def stop(self) -> None:
        """End the stream and wait for it."""
        self.task.cancel()
        # wait() rather than awaiting the task: a cancellation of *our caller* must still propagate.
        await asyncio.wait([self.task])
