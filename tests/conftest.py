"""Shared test fixtures: structlog reset and capture, a manual clock, free loopback ports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

pytest_plugins = [
    "tests.skip_guard",
    "tests.fixtures.redis",
    "tests.fixtures.emulator",
    "tests.fixtures.broker",
    "tests.fixtures.fleet",
]


class ManualClock:
    """A clock that moves only when told to, or when a task sleeps on it (the Clock port).

    ``sleep`` takes no real time: it yields to the event loop once, then moves the clock to the
    sleeper's wake-up time unless another sleeper already moved it further. The pauses asked for
    are kept in ``slept``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 4, 13, 12, 0, 0, tzinfo=UTC)
        self._mono = 1000.0
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set(self, moment: datetime) -> None:
        delta = (moment - self._now).total_seconds()
        self._now = moment
        self._mono += max(delta, 0.0)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        wake = self._mono + max(seconds, 0.0)
        await asyncio.sleep(0)
        if wake > self._mono:
            self.advance(wake - self._mono)


@pytest.fixture(name="clock")
def fixture_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Every test starts and ends with structlog's defaults (no cached loggers)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(name="log_output")
def fixture_log_output() -> Iterator[list[dict[str, Any]]]:
    """Capture structured log entries (after our processors, before rendering)."""
    from broker.logs import shared_processors

    capture = structlog.testing.LogCapture()
    structlog.configure(
        processors=[*shared_processors(), capture],
        cache_logger_on_first_use=False,
    )
    return capture.entries


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
