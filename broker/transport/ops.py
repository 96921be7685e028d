"""The ops HTTP listener (``BROKER_OPS_LISTEN``): ``/metrics``, ``/healthz`` and ``/readyz``.

:class:`OpsServer` serves the broker's Prometheus registry (:mod:`broker.metrics`) over aiohttp on
the broker's event loop: ``/metrics`` (Prometheus text, or OpenMetrics when asked), ``/healthz``
(200 while the process runs) and ``/readyz`` (200 while the broker serves and the store answers,
else 503 with a JSON reason).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from broker.errors import ConfigError
from broker.metrics import BrokerMetrics

_READY_STORE_TIMEOUT_S: Final = 2.0
"""How long ``/readyz`` waits for the store's PING."""


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP on the broker's event loop.

    Args:
        metrics: the registry to expose, and whether the broker serves.
        listen: ``HOST:PORT`` (port 0 picks a free one).
        check_store: pings the store; ``True`` when it answers.
    """

    def __init__(
        self,
        metrics: BrokerMetrics,
        listen: str,
        *,
        check_store: Callable[[], Awaitable[bool]],
    ) -> None:
        self._metrics = metrics
        self._listen = listen
        self._check_store = check_store
        self._runner: web.AppRunner | None = None
        self.address: str | None = None
        """``host:port`` actually bound, once started."""

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            ConfigError: the address cannot be bound (names ``BROKER_OPS_LISTEN``).
        """
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, _, port = self._listen.rpartition(":")
        try:
            await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"BROKER_OPS_LISTEN: cannot bind {self._listen}: {exc}") from exc
        self._runner = runner
        self.address = f"{host}:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(
            body=encode(self._metrics.registry), headers={"Content-Type": content_type}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        reason = await self._not_ready()
        if reason is None:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": reason}, status=503)

    async def _not_ready(self) -> str | None:
        if not self._metrics.serving:
            return "not_serving: the broker is starting or draining"
        try:
            async with asyncio.timeout(_READY_STORE_TIMEOUT_S):
                reachable = await self._check_store()
        except TimeoutError:
            reachable = False
        return None if reachable else "store_unreachable: the store does not answer PING"
