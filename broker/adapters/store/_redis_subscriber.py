"""The Redis store's invalidation listener: one subscription per store, fanned out to local feeds.

It subscribes to :data:`~broker.adapters.store.keys.INVALIDATION_CHANNEL` and reports ready only
once Redis has confirmed the subscription (from then on, every PUBLISH reaches it). A dropped
connection, or one that stays silent through an idle PING (a partition that sends no RST), ends the
subscription; the listener then resubscribes after a jittered exponential backoff (capped at 2 s), so
an outage never turns into a busy loop. Messages published while it is away are lost, as with any
Redis pub/sub. (The loop is endless by design, so it uses redis-py's backoff arithmetic rather than
stamina, whose retry hooks would log every attempt of a long outage.)

On a Redis Cluster it uses sharded pub/sub (``SSUBSCRIBE``, Redis 7+): redis-py's ``ClusterPubSub``
keeps one connection to the node owning the channel's slot, and its confirmations and messages are
``ssubscribe``/``smessage``. Plain ``SUBSCRIBE`` would also work on a cluster, but every ``PUBLISH``
is then broadcast to every node over the cluster bus; ``SPUBLISH`` stays within one shard. When that
node goes away the subscription fails like any other, and the loop subscribes again on whichever node
owns the slot by then (the cluster client refreshes its slot map first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
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
# Message types of plain and sharded pub/sub.
_SUBSCRIBED: Final = frozenset({"subscribe", "ssubscribe"})
_MESSAGE: Final = frozenset({"message", "smessage"})


class InvalidationSubscriber:
    """Keeps one subscription alive and delivers each message to ``fanout``.

    Args:
        client: the store's Redis client.
        fanout: where ``(identity, slot)`` messages go.
        on_subscribed: called each time Redis confirms the subscription.
        on_failure: called with ``("invalidations", error)`` each time the subscription is lost.
        where: describes the server for log events (never a URL with credentials).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        fanout: Fanout,
        *,
        on_subscribed: Callable[[], object],
        on_failure: Callable[[str, BaseException], object],
        where: Callable[[], str] = lambda: "redis",
    ) -> None:
        self._client: Final = client
        self._where: Final = where
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
            redis=self._where(),
            operation="invalidations",
            error=type(task.exception()).__name__,
            exc_info=task.exception(),
        )

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                if isinstance(pubsub, ClusterPubSub):
                    await self._sharded_subscribe(pubsub)
                else:
                    await pubsub.subscribe(keys.INVALIDATION_CHANNEL)
                await self._pump(pubsub)
            except FAILURES as exc:
                self._ready.clear()
                self._on_failure("invalidations", exc)
                self._failures += 1
                await asyncio.sleep(self._backoff.compute(self._failures))
            finally:
                # redis-py annotates aclose() only from 8.2 on: a typed name serves every release
                close: Callable[[], Awaitable[None]] = pubsub.aclose
                await close()

    async def _sharded_subscribe(self, pubsub: ClusterPubSub) -> None:
        cluster = self._client
        assert isinstance(cluster, RedisCluster)  # noqa: S101  (only a cluster makes ClusterPubSub)
        # The slot map must be known to find the channel's shard; initialize() is a no-op once
        # done, and after a failure the cluster client has marked itself for a refresh.
        await cluster.initialize()
        await pubsub.ssubscribe(keys.INVALIDATION_CHANNEL)
        if not pubsub.node_pubsub_mapping:
            raise RedisConnectionError("no node owns the invalidation channel's slot")

    async def _pump(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        ping_sent: float | None = None
        while True:
            message: Any = await (
                pubsub.get_sharded_message(timeout=_IDLE_PING_S)
                if isinstance(pubsub, ClusterPubSub)
                else pubsub.get_message(timeout=_IDLE_PING_S)
            )
            now = loop.time()
            if message is None:
                if ping_sent is not None and now - ping_sent >= _IDLE_PING_S:
                    raise RedisConnectionError("the invalidation subscription stopped answering")
                if ping_sent is None and now - last_heard >= _IDLE_PING_S:
                    await self._ping(pubsub)
                    ping_sent = now
                continue
            last_heard, ping_sent = now, None
            kind = message.get("type")
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind in _SUBSCRIBED:
                self._failures = 0
                self._ready.set()
                self._on_subscribed()
            elif kind in _MESSAGE:
                self._deliver(message.get("data"))

    @staticmethod
    async def _ping(pubsub: PubSub) -> None:
        """PING the subscription's connection(s); the PONG comes back as a message."""
        if isinstance(pubsub, ClusterPubSub):
            for node in list(pubsub.node_pubsub_mapping.values()):
                await node.ping()
        else:
            await pubsub.ping()

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
