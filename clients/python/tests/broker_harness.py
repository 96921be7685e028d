"""A real broker wired to the real control-plane emulator, for the client's tests.

Both run on their own event loop in a background thread (:class:`BrokerHarness`), so the clients
under test talk to them over loopback exactly as a worker would: the asyncio client from the test's
loop, the blocking client and the ``requests``/``httpx.Client`` plug-ins from the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Final, TypeVar

from broker.app import BrokerApp
from broker.config import load_settings
from cb_emulator import Emulator, EmulatorTask

DEV_TOKEN: Final = "dev-access-token"
ACCOUNT_ID: Final = "acct-dev"
# Every wait on the harness is bounded; a broker that needs longer than this is broken.
HARNESS_SECONDS: Final = 20.0

_T = TypeVar("_T")


class BrokerHarness:
    """The emulator and one broker on a private event loop thread; every method blocks until done."""

    def __init__(self, workdir: Path, *, config: str | None = None) -> None:
        self._workdir = workdir
        self._config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="broker-harness")
        self._emulator: Emulator | None = None
        self._app: BrokerApp | None = None
        self._port = 0
        self.base_url = ""
        """The emulator's ``http://127.0.0.1:<port>/backend-api``."""

    def _run(self, work: Callable[[], Awaitable[_T]]) -> _T:
        async def call() -> _T:
            return await work()

        future: Future[_T] = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return future.result(HARNESS_SECONDS)

    def start(self) -> None:
        """Start the loop thread, the emulator and the broker."""
        self._thread.start()

        async def start() -> None:
            self._emulator = Emulator()
            self.base_url = await self._emulator.start("127.0.0.1", 0)

        self._run(start)
        self.start_broker()

    @property
    def address(self) -> str:
        """The broker's ``127.0.0.1:<port>``."""
        assert self._app is not None
        return self._app.address

    @property
    def emulator(self) -> Emulator:
        assert self._emulator is not None
        return self._emulator

    def start_broker(self) -> None:
        """Start a broker; after :meth:`stop_broker` it comes back on the same port (a restart).

        With ``config`` (TOML, e.g. ``[callers.*]`` tables) it is the broker's ``BROKER_CONFIG``.
        """
        token_file = self._workdir / "access-token"
        token_file.write_text(DEV_TOKEN + "\n")
        env: dict[str, str] = {}
        if self._config is not None:
            config_file = self._workdir / "broker.toml"
            config_file.write_text(self._config)
            env["BROKER_CONFIG"] = str(config_file)

        async def start() -> None:
            settings = load_settings(
                env
                | {
                    "BROKER_LISTEN": f"127.0.0.1:{self._port}",
                    "BROKER_CONTROLPLANE_URL": self.base_url,
                    "BROKER_SUPPORTED_HOSTS": "127.0.0.1",
                    "BROKER_BEARER_TOKEN_FILE": str(token_file),
                    "BROKER_ACCOUNT_ID": ACCOUNT_ID,
                    "BROKER_STATS_INTERVAL": "3600",
                    "BROKER_LOG_LEVEL": "warning",
                }
            )
            app = BrokerApp(settings)
            await app.start()
            self._app = app
            self._port = app.port or 0

        self._run(start)

    def stop_broker(self) -> None:
        """Stop the broker (its watch streams end); the emulator keeps running."""
        app, self._app = self._app, None
        if app is not None:
            self._run(lambda: app.stop(grace=0.5))

    def rpc_count(self, method: str) -> int:
        """How many ``method`` RPCs (e.g. ``GetAuthorization``) the current broker has completed."""
        assert self._app is not None
        app = self._app

        async def count() -> int:
            return app.rpc_stats.by_method.get(method, 0)

        return self._run(count)

    def revoke_task(self, task_id: str) -> None:
        """Revoke a task at the emulator: assertions naming it are refused with 401 from now on."""

        async def revoke() -> None:
            self.emulator.revoke_task(task_id)

        self._run(revoke)

    def inject_fault(self, endpoint: str, *, status: int, count: int = 1) -> None:
        """Make the emulator answer the next ``count`` requests of ``endpoint`` with ``status``."""

        async def inject() -> None:
            self.emulator.inject_fault(endpoint, status=status, count=count)

        self._run(inject)

    def tasks(self) -> list[EmulatorTask]:
        """Every task the emulator registered."""

        async def tasks() -> list[EmulatorTask]:
            return self.emulator.tasks()

        return self._run(tasks)

    def close(self) -> None:
        """Stop the broker, the emulator and the loop thread."""
        try:
            if self._thread.is_alive():
                self.stop_broker()
                if self._emulator is not None:
                    self._run(self._emulator.stop)
                # let grpc.aio's poller deliver the last completions before the loop closes
                self._run(lambda: asyncio.sleep(0.1))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(HARNESS_SECONDS)
            if not self._thread.is_alive():
                self._loop.close()


@contextlib.contextmanager
def running_harness(workdir: Path, *, config: str | None = None) -> Iterator[BrokerHarness]:
    """A started :class:`BrokerHarness`, closed on exit."""
    harness = BrokerHarness(workdir, config=config)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


async def eventually(
    condition: Callable[[], bool], *, seconds: float = 5.0, what: str = "condition"
) -> None:
    """Wait (bounded) until ``condition()`` holds, checking every 10 ms."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (the condition is another process's state)
            await asyncio.sleep(0.01)
    assert condition(), what
