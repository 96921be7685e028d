"""Prometheus metrics and probes on the ops listener, against real brokers, Redis and the emulator.

Each test starts a broker with ``BROKER_OPS_LISTEN`` on a free loopback port, drives real RPCs, and
scrapes ``/metrics`` over HTTP; the text is parsed with prometheus-client's own parser and counters
are asserted exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.app import BrokerApp
from broker.config import load_settings
from broker.core.callers import hash_token
from broker.errors import ConfigError
from broker.events import Event
from broker.metrics import METRICS, BrokerMetrics
from cb_emulator import Emulator
from tests.conftest import free_port
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.fixtures.redis import RedisServerProcess

pytestmark = pytest.mark.integration

SERVICE = "credential_broker.v1.CredentialBroker"
WORKER = "worker-token-0123456789abcdef"
_WAIT_S = 15.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def start_ops(start_broker: StartBroker, **kwargs: Any) -> tuple[RunningBroker, str]:
    """A broker with the ops listener on a free loopback port, and that listener's base URL."""
    port = free_port()
    env = {"BROKER_OPS_LISTEN": f"127.0.0.1:{port}", **kwargs.pop("env", {})}
    return await start_broker(env=env, **kwargs), f"http://127.0.0.1:{port}"


async def scrape(base: str) -> Samples:
    """Every sample of ``/metrics``, keyed by (sample name, labels)."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Return once ``check`` holds, polling every 0.1 s for at most ``_WAIT_S`` seconds."""
    for _ in range(int(_WAIT_S / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)  # an HTTP probe has no change to await: poll it
    pytest.fail(f"not within {_WAIT_S:g} s: {what}")


async def get(base: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"{base}{path}")


class TestCounters:
    async def test_issuance_fallback_and_bad_request(self, start_broker: StartBroker) -> None:
        """Counters match exactly the RPCs driven, and agree with the broker.stats counters."""
        broker, base = await start_ops(start_broker)
        stub = broker.stub
        await stub.GetAuthorization(pb.GetAuthorizationRequest())  # minted, background task
        await stub.GetAuthorization(pb.GetAuthorizationRequest())  # L1 hit
        await stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))  # thread task
        await stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="bad id"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        samples = await scrape(base)
        rpcs = "broker_rpcs_total"
        method = {"service": SERVICE, "method": "GetAuthorization"}
        assert value(samples, rpcs, **method, code="OK") == 4
        assert value(samples, rpcs, **method, code="INVALID_ARGUMENT") == 1
        assert value(samples, "broker_rpc_duration_seconds_count", **method) == 5
        auth = "broker_authorizations_total"
        assert value(samples, auth, scheme="agent_assertion", fallback_reason="none") == 3
        assert value(samples, auth, scheme="bearer", fallback_reason="requested") == 1
        assert value(samples, auth, scheme="bearer", fallback_reason="disabled") == 0
        assert value(samples, "broker_cache_hits_total", level="l1") == 1
        assert value(samples, "broker_cache_misses_total", level="l1") == 2
        assert value(samples, "broker_cache_hits_total", level="l2") == 0
        assert value(samples, "broker_assertions_minted_total") == 2
        assert value(samples, "broker_task_registrations_total", identity="default") == 2
        requests = "broker_controlplane_requests_total"
        ok = {"identity": "default", "status": "200"}
        assert value(samples, requests, **ok, operation="register_identity") == 1
        assert value(samples, requests, **ok, operation="register_task") == 2
        assert value(samples, requests, **ok, operation="mint_biscuit") == 3
        latency = "broker_controlplane_request_duration_seconds_count"
        assert value(samples, latency, identity="default", operation="register_task") == 2
        assert value(samples, "broker_serving") == 1
        assert value(samples, "broker_store_up") == 1
        assert value(samples, "broker_controlplane_circuit_open", identity="default") == 0
        stats = broker.app.stats()
        assert stats["rpcs_by_code"] == {"OK": 4, "INVALID_ARGUMENT": 1}
        assert stats["authorizer"] == {
            "assertion_minted": 2,
            "l1_miss": 2,
            "l1_hit": 1,
            "bearer.requested": 1,
        }

    async def test_configured_fallback(self, start_broker: StartBroker) -> None:
        """A host outside the supported list counts one Bearer with reason unsupported_host."""
        broker, base = await start_ops(start_broker, supported_hosts="")
        answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert answer.fallback_reason == pb.FALLBACK_REASON_UNSUPPORTED_HOST
        samples = await scrape(base)
        auth = "broker_authorizations_total"
        assert value(samples, auth, scheme="bearer", fallback_reason="unsupported_host") == 1
        assert value(samples, auth, scheme="agent_assertion", fallback_reason="none") == 0
        assert value(samples, "broker_task_registrations_total", identity="default") == 0

    async def test_control_plane_down(self, start_broker: StartBroker, emulator: Emulator) -> None:
        """Failed exchanges count by HTTP status, the circuit gauge opens, nothing is registered."""
        emulator.inject_fault("register_task", status=503, count=50)
        broker, base = await start_ops(
            start_broker, env={"BROKER_CIRCUIT_FAILURES": "1", "BROKER_CIRCUIT_COOLDOWN": "60"}
        )
        answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert answer.fallback_reason == pb.FALLBACK_REASON_TASK_REGISTRATION_UNAVAILABLE
        samples = await scrape(base)
        failed = {"identity": "default", "operation": "register_task", "status": "503"}
        assert value(samples, "broker_controlplane_requests_total", **failed) >= 1
        assert value(samples, "broker_controlplane_circuit_open", identity="default") == 1
        assert value(samples, "broker_task_registrations_total", identity="default") == 0
        reason = "task_registration_unavailable"
        auth = "broker_authorizations_total"
        assert value(samples, auth, scheme="bearer", fallback_reason=reason) == 1

    async def test_denials_by_rule(self, start_broker: StartBroker, tmp_path: Path) -> None:
        """An unauthenticated call and a non-admin caller on the admin service count by rule."""
        config = tmp_path / "callers.toml"
        config.write_text(f'[callers.worker]\ntoken_sha256 = "{hash_token(WORKER)}"\n')
        broker, base = await start_ops(start_broker, env={"BROKER_CONFIG": str(config)})
        with pytest.raises(grpc.aio.AioRpcError):
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        admin = apb_grpc.CredentialBrokerAdminStub(broker.channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await admin.ListIdentities(
                apb.ListIdentitiesRequest(), metadata=(("authorization", f"Bearer {WORKER}"),)
            )
        samples = await scrape(base)
        assert value(samples, "broker_callers_denied_total", rule="authentication") == 1
        assert value(samples, "broker_callers_denied_total", rule="admin") == 1
        assert value(samples, "broker_callers_denied_total", rule="rate_limit") == 0
        code = {"service": SERVICE, "method": "GetAuthorization", "code": "UNAUTHENTICATED"}
        assert value(samples, "broker_rpcs_total", **code) == 1

    async def test_watch_gauges(self, start_broker: StartBroker) -> None:
        """An open watch stream shows in the gauges and leaves them when it ends."""
        broker, base = await start_ops(start_broker)
        watch = broker.stub.WatchAuthorization(pb.GetAuthorizationRequest(thread_id="w1"))
        async with asyncio.timeout(_WAIT_S):
            await anext(aiter(watch))
        samples = await scrape(base)
        assert value(samples, "broker_watch_streams") == 1
        assert value(samples, "broker_watch_topics") == 1
        watch.cancel()

        async def closed() -> bool:
            return value(await scrape(base), "broker_watch_streams") == 0

        await eventually(closed, "the watch stream leaves the gauge")
        samples = await scrape(base)
        stream = {"service": SERVICE, "method": "WatchAuthorization"}
        assert value(samples, "broker_rpcs_total", **stream, code="CANCELLED") == 1
        assert value(samples, "broker_rpc_duration_seconds_count", **stream) == 0

    async def test_registries_are_per_broker(self, start_broker: StartBroker) -> None:
        """Two brokers in one process count only their own RPCs."""
        first, first_base = await start_ops(start_broker)
        _, second_base = await start_ops(start_broker)
        await first.stub.GetAuthorization(pb.GetAuthorizationRequest())
        method = {"service": SERVICE, "method": "GetAuthorization", "code": "OK"}
        assert value(await scrape(first_base), "broker_rpcs_total", **method) == 1
        assert value(await scrape(second_base), "broker_rpcs_total", **method) == 0


class TestLabels:
    async def test_no_identifiers_in_label_values(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """No thread, task or runtime id and no caller token appears in any label value."""
        broker, base = await start_ops(start_broker)
        secrets: set[str] = {WORKER, broker.app.address}
        for _ in range(3):
            thread = f"thread-{uuid.uuid4().hex}"
            answer = await broker.stub.GetAuthorization(
                pb.GetAuthorizationRequest(thread_id=thread)
            )
            authorization = answer.authorization
            secrets |= {thread, authorization.task_id, authorization.agent_runtime_id}
            secrets.add(authorization.header_value)
        background = (
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        ).authorization
        emulator.revoke_task(background.task_id)
        await broker.stub.ReportRejection(
            pb.ReportRejectionRequest(header_value=background.header_value, http_status=401)
        )
        secrets |= {background.task_id, background.agent_runtime_id}
        samples = await scrape(base)
        labels = {(name, label) for (name, pairs) in samples for label, _ in pairs}
        values = {v for (_, pairs) in samples for _, v in pairs}
        leaked = {v for v in values if any(s and s in v for s in secrets)}
        assert not leaked
        declared = {label for spec in METRICS for label in spec.labels} | {"le"}
        broker_labels = {label for name, label in labels if name.startswith("broker_")}
        assert broker_labels <= declared


class TestProbes:
    async def test_healthz(self, start_broker: StartBroker) -> None:
        """/healthz answers 200 while the process runs."""
        _, base = await start_ops(start_broker)
        response = await get(base, "/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})

    async def test_readyz_follows_the_store(
        self, start_broker: StartBroker, redis_process: RedisServerProcess
    ) -> None:
        """/readyz is 200 with Redis up, 503 with a reason once it stops, 200 again once back."""
        _, base = await start_ops(start_broker, redis_url=redis_process.url)
        response = await get(base, "/readyz")
        assert (response.status_code, response.json()) == (200, {"ready": True})
        redis_process.stop()

        async def unready() -> bool:
            return (await get(base, "/readyz")).status_code == 503

        await eventually(unready, "/readyz turns 503 with Redis down")
        body = (await get(base, "/readyz")).json()
        assert body["ready"] is False
        assert body["reason"].startswith("store_unreachable")
        assert value(await scrape(base), "broker_store_up") == 0
        assert (await get(base, "/healthz")).status_code == 200
        redis_process.start()

        async def ready() -> bool:
            return (await get(base, "/readyz")).status_code == 200

        await eventually(ready, "/readyz turns 200 with Redis back")
        assert value(await scrape(base), "broker_store_up") == 1

    async def test_stops_with_the_broker(self, start_broker: StartBroker) -> None:
        """Once the broker stopped, nothing listens on the ops port any more."""
        broker, base = await start_ops(start_broker)
        assert (await get(base, "/healthz")).status_code == 200
        await broker.close()
        with pytest.raises(httpx.ConnectError):
            await get(base, "/healthz")

    async def test_openmetrics_on_request(self, start_broker: StartBroker) -> None:
        """A scraper that asks for OpenMetrics gets it."""
        _, base = await start_ops(start_broker)
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(
                f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}
            )
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")


class TestListener:
    async def test_off_unless_configured(
        self, start_broker: StartBroker, log_output: list[dict[str, Any]]
    ) -> None:
        """broker.started names the ops listener only when one is configured."""
        await start_broker()
        _, base = await start_ops(start_broker)
        started = [e for e in log_output if e["event"] == Event.BROKER_STARTED]
        assert "ops_listen" not in started[0]
        assert f"http://{started[1]['ops_listen']}" == base

    @pytest.mark.parametrize("listen", ["nohost:", ":9090", "host:port", "h:70000", "70000"])
    def test_invalid_address(self, listen: str) -> None:
        """A malformed BROKER_OPS_LISTEN stops start-up with an error naming it."""
        with pytest.raises(ConfigError, match="BROKER_OPS_LISTEN"):
            load_settings({"BROKER_OPS_LISTEN": listen})

    async def test_address_in_use(self, start_broker: StartBroker) -> None:
        """An ops address that cannot be bound stops start-up with an error naming it."""
        broker, base = await start_ops(start_broker)
        app = BrokerApp(load_settings({**broker.env, "BROKER_LISTEN": "127.0.0.1:0"}))
        try:
            with pytest.raises(ConfigError, match="BROKER_OPS_LISTEN: cannot bind"):
                await app.start()
        finally:
            await app.stop(grace=0)
        assert base.endswith(broker.env["BROKER_OPS_LISTEN"])


class TestRegistry:
    def test_every_family_is_exported(self) -> None:
        """A fresh BrokerMetrics exposes every declared family's series."""
        exported = BrokerMetrics().series_names()
        for spec in METRICS:
            assert set(spec.series) <= exported, spec.name
