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

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Pause the calling task for ``seconds``."""
        await asyncio.sleep(seconds)
