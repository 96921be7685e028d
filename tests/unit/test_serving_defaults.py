"""Serving defaults of the hot path: the access log, the stats interval, the event loop."""

from __future__ import annotations

import asyncio
import sys

import pytest

from broker.app import event_loop_name, run_event_loop
from broker.config import load_settings
from broker.errors import ConfigError

BASE = {"BROKER_ACCOUNT_ID": "acct"}


class TestSettings:
    def test_defaults(self) -> None:
        """By default no successful RPC is logged and broker.stats comes every 10 s."""
        settings = load_settings(BASE)
        assert settings.access_log_sample == 0
        assert settings.stats_interval == 10.0

    def test_access_log_sample(self) -> None:
        """``BROKER_ACCESS_LOG_SAMPLE`` sets the sampling interval."""
        assert load_settings({**BASE, "BROKER_ACCESS_LOG_SAMPLE": "100"}).access_log_sample == 100

    @pytest.mark.parametrize("value", ["-1", "often", "0.5"])
    def test_bad_access_log_sample(self, value: str) -> None:
        """A negative or non-integer sampling interval is refused, naming the variable."""
        with pytest.raises(ConfigError, match="BROKER_ACCESS_LOG_SAMPLE"):
            load_settings({**BASE, "BROKER_ACCESS_LOG_SAMPLE": value})


async def _loop_name() -> str:
    return event_loop_name()


class TestEventLoop:
    def test_uvloop_where_installed(self) -> None:
        """The broker runs on uvloop when it is installed."""
        pytest.importorskip("uvloop")
        assert run_event_loop(_loop_name()) == "uvloop"

    def test_asyncio_without_uvloop(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without uvloop the broker runs on asyncio's own loop."""
        monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
        assert run_event_loop(_loop_name()) == "asyncio"
        assert not asyncio.get_event_loop_policy().__class__.__module__.startswith("uvloop")
