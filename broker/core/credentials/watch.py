"""Streaming refresh: one refresher per watched key fans the latest header out to every watcher.

Theory of operation
-------------------
Watchers of the same (identity, thread, mode, min_remaining) share one :class:`_Topic`. The topic's
refresher task asks the authorizer for the header, publishes it, and sleeps until the header leaves
its serve window (minus the watchers' ``min_remaining``) or until the key is invalidated (rejection,
rotation, another replica's broadcast), then repeats. Publishing only bumps a version number and
wakes waiters: there is no per-watcher queue, so a slow or dead watcher cannot block the refresher
or the other watchers; it simply sees the latest value when it next looks (latest value wins).

The refresher starts with the first watcher and stops when the last one leaves. A failure is
published too (watchers end their stream with that error) and the refresher retries with backoff,
so a transient outage costs watchers nothing but a reconnect. ``close()`` ends every stream cleanly
(shutdown drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from broker.core.credentials.model import Authorization
from broker.core.credentials.ports import Clock
from broker.errors import BrokerError

WatchKey = tuple[str, str, str, float]
"""(identity, slot, mode, min_remaining)"""

_BEARER_RECHECK_SECONDS = 30.0
_MIN_PAUSE_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 10.0


@dataclass(slots=True)
class _Topic:
    version: int = 0
    value: Authorization | None = None
    error: BrokerError | None = None
    watchers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    invalidated: asyncio.Event = field(default_factory=asyncio.Event)
    refresher: asyncio.Task[None] | None = None

    def publish(self, value: Authorization | None, error: BrokerError | None) -> None:
        self.version += 1
        self.value, self.error = value, error
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class WatchHub:
    """Fans out refreshed headers to watchers; one per process, owned by the authorizer."""

    def __init__(
        self,
        *,
        clock: Clock,
        authorize: Callable[[WatchKey], Awaitable[Authorization]],
        serve_until: Callable[[Authorization], datetime | None],
    ) -> None:
        """Args:
        clock: injected time.
        authorize: produces the current header for a key.
        serve_until: when a header stops being handed out (``None`` for Bearer).
        """
        self._clock = clock
        self._authorize = authorize
        self._serve_until = serve_until
        self._topics: dict[WatchKey, _Topic] = {}
        self._closed = asyncio.Event()

    @property
    def topics(self) -> int:
        """How many keys have a running refresher."""
        return len(self._topics)

    @property
    def watchers(self) -> int:
        """How many watch streams are open."""
        return sum(topic.watchers for topic in self._topics.values())

    def watchers_of(self, identity: str) -> int:
        """How many watch streams of ``identity`` are open."""
        return sum(t.watchers for key, t in self._topics.items() if key[0] == identity)

    def invalidate(self, identity: str, slot: str) -> None:
        """Wake the refreshers of (identity, slot) at once (any mode or min_remaining)."""
        for key, topic in self._topics.items():
            if key[0] == identity and key[1] == slot:
                topic.invalidated.set()

    def invalidate_identity(self, identity: str) -> None:
        """Wake every refresher of an identity (rotation)."""
        for key, topic in self._topics.items():
            if key[0] == identity:
                topic.invalidated.set()

    async def close(self) -> None:
        """End every watch stream and stop the refreshers."""
        self._closed.set()
        for topic in list(self._topics.values()):
            topic.changed.set()
            if topic.refresher is not None:
                topic.refresher.cancel()
        for topic in list(self._topics.values()):
            if topic.refresher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await topic.refresher

    async def watch(self, key: WatchKey) -> AsyncIterator[Authorization]:
        """Yield the current header at once, then every newer one, until closed or cancelled.

        Raises:
            BrokerError: the header cannot be produced (the stream ends with that error).
        """
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = _Topic()
            topic.refresher = asyncio.get_running_loop().create_task(self._refresh(key, topic))
        topic.watchers += 1
        seen = 0
        try:
            while not self._closed.is_set():
                if topic.version == seen:
                    await topic.changed.wait()
                    continue
                seen = topic.version
                if topic.error is not None:
                    raise topic.error
                if topic.value is not None:
                    yield topic.value
        finally:
            topic.watchers -= 1
            if topic.watchers == 0 and self._topics.get(key) is topic:
                del self._topics[key]
                if topic.refresher is not None:
                    topic.refresher.cancel()

    async def _refresh(self, key: WatchKey, topic: _Topic) -> None:
        failures = 0
        while True:
            topic.invalidated.clear()
            try:
                value = await self._authorize(key)
            except BrokerError as exc:
                topic.publish(None, exc)
                failures += 1
                pause = min(_MAX_BACKOFF_SECONDS, 0.5 * 2**failures) * (0.5 + random.random())  # noqa: S311
                await self._sleep(topic, pause)
                continue
            failures = 0
            if topic.value is not value:
                topic.publish(value, None)
            until = self._serve_until(value)
            if until is None:
                pause = _BEARER_RECHECK_SECONDS
            else:
                pause = (until - self._clock.now()).total_seconds() - key[3]
            await self._sleep(topic, max(pause, _MIN_PAUSE_SECONDS))

    @staticmethod
    async def _sleep(topic: _Topic, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(topic.invalidated.wait(), timeout=seconds)
