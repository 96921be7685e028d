"""In-process fan-out of invalidations to every local consumer (both stores use it).

Each call of ``Store.invalidations()`` gets its own :class:`InvalidationFeed`, registered at once (not
at its first ``__anext__``), so nothing published after the call is missed. Feeds are held weakly: a
consumer that drops its feed without closing it unregisters it by being garbage-collected. Queues are
unbounded because invalidations are rare and a slow consumer must never make another one miss one.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Final

Invalidation = tuple[str, str]


class InvalidationFeed:
    """One consumer's stream of ``(identity, slot)`` invalidations; ends when the store closes."""

    __slots__ = ("__weakref__", "_done", "_owner", "_queue")

    def __init__(self, owner: Fanout | None) -> None:
        self._queue: Final[asyncio.Queue[Invalidation | None]] = asyncio.Queue()
        self._owner = owner
        self._done = owner is None

    def __aiter__(self) -> InvalidationFeed:
        return self

    async def __anext__(self) -> Invalidation:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._done = True
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving; a consumer waiting in ``__anext__`` finishes its iteration."""
        self._end()

    def _deliver(self, item: Invalidation) -> None:
        if not self._done:
            self._queue.put_nowait(item)

    def _end(self) -> None:
        if self._owner is not None:
            self._owner.discard(self)
            self._owner = None
        self._queue.put_nowait(None)


class Fanout:
    """Delivers each published invalidation to every open feed."""

    __slots__ = ("_closed", "_feeds")

    def __init__(self) -> None:
        self._feeds: Final[weakref.WeakSet[InvalidationFeed]] = weakref.WeakSet()
        self._closed = False

    def subscribe(self) -> InvalidationFeed:
        """A new feed; after :meth:`close` it is already finished."""
        if self._closed:
            return InvalidationFeed(None)
        feed = InvalidationFeed(self)
        self._feeds.add(feed)
        return feed

    def publish(self, identity: str, slot: str) -> None:
        """Queue ``(identity, slot)`` on every open feed."""
        for feed in list(self._feeds):
            feed._deliver((identity, slot))

    def discard(self, feed: InvalidationFeed) -> None:
        """Forget ``feed`` (it closed)."""
        self._feeds.discard(feed)

    def close(self) -> None:
        """Finish every feed; later subscriptions are finished at once."""
        self._closed = True
        for feed in list(self._feeds):
            feed._end()
