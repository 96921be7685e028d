"""The system clock behind the :class:`broker.core.credentials.ports.Clock` port."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime


class SystemClock:
    """Real time: ``datetime.now(UTC)``, ``time.monotonic()`` and ``asyncio.sleep``."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        return datetime.now(UTC)

    monotonic = staticmethod(time.monotonic)
    """Seconds on the monotonic clock (the builtin itself: the hot path calls it on every hit)."""

    async def sleep(self, seconds: float) -> None:
        """Pause the calling task for ``seconds``."""
        await asyncio.sleep(seconds)
