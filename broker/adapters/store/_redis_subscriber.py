"""The Redis store's invalidation listener: one subscription per store, fanned out to local feeds.

It subscribes to :data:`~broker.adapters.store.keys.INVALIDATION_CHANNEL` and reports ready only
once Redis has confirmed the subscription (from then on, every PUBLISH reaches it). A dropped
connection, or one that stays silent through an idle PING (a partition that sends no RST), ends the
subscription; the listener then resubscribes after a jittered exponential backoff (capped at 2 s), so
an outage never turns into a busy loop. Messages published while it is away are lost, as with any
Redis pub/sub. (The loop is endless by design, so it uses redis-py's backoff arithmetic rather than
stamina, whose retry hooks would log every attempt of a long outage.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from broker.adapters.store import keys
from broker.adapters.store._fanout import Fanout
from broker.events import Event

_log = structlog.get_logger(__name__)

FAILURES: Final = (RedisError, RedisClusterException, OSError)
_BACKOFF_BASE_S: Final = 0.05
_BACKOFF_CAP_S: Final = 2.0
# A subscription silent this long is PINGed; one whose PING stays unanswered as long is dropped.
# Read at run time, so a test can shorten it.
_IDLE_PING_S = 15.0


class InvalidationSubscriber:
    """Keeps one subscription alive and delivers each message to ``fanout``.

    Args:
        client: the store's Redis client.
        fanout: where ``(identity, slot)`` messages go.
        on_subscribed: called each time Redis confirms the subscription.
        on_failure: called with ``("invalidations", error)`` each time the subscription is lost.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        fanout: Fanout,
        *,
        on_subscribed: Callable[[], object],
        on_failure: Callable[[str, BaseException], object],
    ) -> None:
        self._client: Final = client
        self._fanout: Final = fanout
        self._on_subscribed: Final = on_subscribed
        self._on_failure: Final = on_failure
        self._ready: Final = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failures = 0
        self._backoff: Final = EqualJitterBackoff(base=_BACKOFF_BASE_S, cap=_BACKOFF_CAP_S)

    def start(self) -> None:
        """Start listening (on the running loop) unless already started or closed."""
        if self._closed or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._listen(), name="redis-store-invalidations"
        )
        self._task.add_done_callback(self._report_crash)

    async def ready(self) -> None:
        """Wait until Redis has confirmed the subscription, or the subscriber is closed."""
        await self._ready.wait()

    async def close(self) -> None:
        """Cancel the listener and wait for it to let go of its connection."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        self._ready.set()

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        """A listener that died of anything but cancellation is a bug: say so once, loudly."""
        if task.cancelled() or task.exception() is None:
            return
        self._ready.clear()
        _log.error(
            Event.STORE_DEGRADED,
            operation="invalidations",
            error=type(task.exception()).__name__,
            exc_info=task.exception(),
        )

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(keys.INVALIDATION_CHANNEL)
                await self._pump(pubsub)
            except FAILURES as exc:
                self._ready.clear()
                self._on_failure("invalidations", exc)
                self._failures += 1
                await asyncio.sleep(self._backoff.compute(self._failures))
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    async def _pump(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        ping_sent: float | None = None
        while True:
            message: Any = await pubsub.get_message(timeout=_IDLE_PING_S)
            now = loop.time()
            if message is None:
                if ping_sent is not None and now - ping_sent >= _IDLE_PING_S:
                    raise RedisConnectionError("the invalidation subscription stopped answering")
                if ping_sent is None and now - last_heard >= _IDLE_PING_S:
                    await pubsub.ping()
                    ping_sent = now
                continue
            last_heard, ping_sent = now, None
            kind = message.get("type")
            if kind == "subscribe":
                self._failures = 0
                self._ready.set()
                self._on_subscribed()
            elif kind == "message":
                self._deliver(message.get("data"))

    def _deliver(self, data: object) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        identity, _, slot = text.partition("\n")
        if not identity or not slot:
            _log.warning(
                Event.STORE_CORRUPT_VALUE,
                key=keys.INVALIDATION_CHANNEL,
                reason="invalidation message is not '<identity>\\n<slot>'",
            )
            return
        self._fanout.publish(identity, slot)
