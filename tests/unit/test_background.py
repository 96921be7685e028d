"""Background jobs: restarted when they fail or end, with a doubling, capped delay; stopped cleanly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.background import Background
from broker.errors import StoreUnavailable


class _Sleeps:
    """Records each delay instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def _until(condition: Any, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(what)


async def test_a_job_that_ends_starts_again_with_a_doubling_capped_delay(
    log_output: list[dict[str, Any]],
) -> None:
    sleeps = _Sleeps()
    runs = 0

    async def ends_at_once() -> None:
        nonlocal runs
        runs += 1

    background = Background(restart_delay=0.5, max_restart_delay=3.0, sleep=sleeps)
    background.start({"feed": ends_at_once})
    await _until(lambda: runs >= 6, "six runs")
    await background.stop()
    assert sleeps.delays[:5] == [0.5, 1.0, 2.0, 3.0, 3.0]
    lines = [e for e in log_output if e["event"] == "background.restarted"]
    assert {(e["job"], e["outcome"], e["error_type"], e["log_level"]) for e in lines} == {
        ("feed", "ended", None, "warning")
    }


async def test_a_broker_error_is_a_warning_and_a_bug_an_error_with_its_traceback(
    log_output: list[dict[str, Any]],
) -> None:
    failures: list[Exception] = [StoreUnavailable("redis is down"), KeyError("oops")]

    async def fails() -> None:
        if failures:
            raise failures.pop(0)
        await asyncio.Event().wait()

    background = Background(sleep=_Sleeps())
    background.start({"health": fails})
    await _until(lambda: background.restarts["health"] == 2, "two restarts")
    await background.stop()
    first, second = (e for e in log_output if e["event"] == "background.restarted")
    assert (first["log_level"], first["error_type"], "exception" in first) == (
        "warning",
        "StoreUnavailable",
        False,
    )
    assert (second["log_level"], second["error_type"]) == ("error", "KeyError")
    assert "KeyError: 'oops'" in second["exception"]


async def test_stop_cancels_every_job_and_the_others_keep_running_meanwhile() -> None:
    cancelled: list[str] = []
    ticks = 0

    async def forever(name: str) -> None:
        nonlocal ticks
        try:
            while True:
                ticks += 1
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def broken() -> None:
        raise RuntimeError("always")

    background = Background(sleep=_Sleeps())
    background.start({"a": lambda: forever("a"), "b": lambda: forever("b"), "c": broken})
    await _until(lambda: background.restarts["c"] >= 3 and ticks > 10, "work on every job")
    await background.stop()
    assert sorted(cancelled) == ["a", "b"]
    await background.stop()  # a second stop is a no-op


def test_delays_must_make_sense() -> None:
    with pytest.raises(ValueError, match="restart_delay"):
        Background(restart_delay=0)
    with pytest.raises(ValueError, match="restart_delay"):
        Background(restart_delay=5, max_restart_delay=1)


async def test_jobs_start_once() -> None:
    background = Background(sleep=_Sleeps())

    async def idle() -> None:
        await asyncio.Event().wait()

    background.start({"a": idle})
    with pytest.raises(RuntimeError, match="already started"):
        background.start({"a": idle})
    await background.stop()
