"""The background work of one broker process, kept running: a job that fails or ends is restarted.

Each job is an endless coroutine (follow the invalidation feed, check health, report stats). They
run as tasks of one ``asyncio.TaskGroup`` owned by :class:`Background`; each is wrapped so that it
never ends the group:

* an exception is logged (``background.restarted``: the job, the error type, the delay) and the job
  starts again after a delay that doubles from ``restart_delay`` up to ``max_restart_delay``;
  a job that ran longer than ``max_restart_delay`` before failing starts again from the shortest
  delay. An unexpected exception (not a :class:`BrokerError`) is logged at error, with its
  traceback: it is a bug;
* a job that returns is logged and restarted the same way, so a feed that ends is followed again,
  not silently dropped, and a job that keeps ending at once never becomes a busy loop.

:meth:`Background.stop` cancels the group and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import structlog

from broker.errors import BrokerError
from broker.events import Event

log = structlog.get_logger("broker.background")

Job = Callable[[], Awaitable[None]]

RESTART_DELAY_S: Final = 0.5
MAX_RESTART_DELAY_S: Final = 30.0


class Background:
    """Runs named jobs until :meth:`stop`, restarting any that fails or ends.

    Args:
        restart_delay: the first delay before a job starts again.
        max_restart_delay: the longest delay.
        sleep: waits between restarts (``asyncio.sleep``; tests pass a faster one).
    """

    def __init__(
        self,
        *,
        restart_delay: float = RESTART_DELAY_S,
        max_restart_delay: float = MAX_RESTART_DELAY_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < restart_delay <= max_restart_delay:
            raise ValueError("need 0 < restart_delay <= max_restart_delay")
        self._first = restart_delay
        self._longest = max_restart_delay
        self._sleep = sleep
        self._runner: asyncio.Task[None] | None = None
        self.restarts: dict[str, int] = {}
        """Restarts by job since :meth:`start`."""

    def start(self, jobs: Mapping[str, Job]) -> None:
        """Start every job (once; a second call is an error)."""
        if self._runner is not None:
            raise RuntimeError("background jobs already started")
        self.restarts = dict.fromkeys(jobs, 0)
        self._runner = asyncio.create_task(self._run(dict(jobs)), name="background")

    async def stop(self) -> None:
        """Cancel every job and wait for them to end."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    async def _run(self, jobs: dict[str, Job]) -> None:
        async with asyncio.TaskGroup() as group:
            for name, job in jobs.items():
                group.create_task(self._keep(name, job), name=name)

    async def _keep(self, name: str, job: Job) -> None:
        loop = asyncio.get_running_loop()
        delay = self._first
        while True:
            started = loop.time()
            failure: Exception | None = None
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (logged, then the job starts again)
                failure = exc
            if loop.time() - started > self._longest:
                delay = self._first
            self.restarts[name] += 1
            # Anything but a BrokerError (a store outage, say) is a bug: an error, with traceback.
            bug = failure is not None and not isinstance(failure, BrokerError)
            (log.error if bug else log.warning)(
                Event.BACKGROUND_RESTARTED,
                job=name,
                outcome="ended" if failure is None else "failed",
                error_type=None if failure is None else type(failure).__name__,
                delay_s=round(delay, 3),
                exc_info=failure if bug else False,
            )
            await self._sleep(delay)
            delay = min(delay * 2, self._longest)
