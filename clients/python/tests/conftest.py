"""Fixtures: a real broker and emulator per test (see broker_harness.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from broker_harness import BrokerHarness, running_harness


@pytest.fixture(autouse=True)
def _quiet_broker_logs() -> Iterator[None]:
    """The in-process broker logs warnings and errors only (its info lines drown a failure)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
async def _drain_grpc_completions() -> AsyncIterator[None]:
    """After a test, let grpc.aio deliver the completions of the calls its clients just closed.

    grpc.aio hands completions to each call's event loop from one process-wide poller. These tests
    run several loops (the test's, the broker's, blocking clients'); a completion that arrives after
    pytest-asyncio has closed the test's loop would be logged as an error by another loop.
    """
    yield
    await asyncio.sleep(0.1)


@pytest.fixture(name="harness")
def fixture_harness(tmp_path: Path) -> Iterator[BrokerHarness]:
    """A running emulator + broker, stopped after the test."""
    with running_harness(tmp_path) as harness:
        yield harness
