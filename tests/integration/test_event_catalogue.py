"""The event catalogue: its docs page is current, and a real broker writes exactly what it says.

The scenario test configures JSON logging to a buffer at debug level, then drives real brokers (on
the embedded store and on a real ``redis-server``) and the real emulator through everything the suite
exercises: issuance, thread tasks, every Bearer fallback, rejection and replacement, a control plane
that fails until the circuit opens and closes, the authapi bootstrap cooldown, Redis going away and
coming back, corrupt stored values, bad input, caller authentication and denial, the admin service,
TLS certificate rotation, periodic stats, configuration errors and shutdown. Every line must match
the catalogue, and every catalogued event must appear at least once (bar the exemptions below).
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.store import keys
from broker.catalog import (
    BASE_FIELDS,
    CATALOGUE,
    CONTEXT_FIELDS,
    DOCS_PATH,
    problems,
    render_markdown,
)
from broker.catalog.__main__ import main as catalog_main
from broker.core.callers import hash_token
from broker.events import Event
from broker.logs import REDACTED, configure_logging, redact_secrets
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.fixtures.emulator import StartEmulator
from tests.fixtures.redis import RedisServerProcess

# Catalogued events no in-process scenario can make the broker write. Each needs a reason.
EXEMPT: frozenset[Event] = frozenset(
    {
        # Written only when a bug raises an unexpected exception inside an RPC.
        Event.RPC_INTERNAL_ERROR,
        # Written when a background job fails or ends (a bug, or an injected failure): driven, with
        # its fields checked against this catalogue, by tests/integration/test_background.py.
        Event.BACKGROUND_RESTARTED,
        # Needs Redis to come back empty under a running replica: driven, with its fields
        # checked against this catalogue, by tests/integration/test_redis_loss.py.
        Event.IDENTITY_RESTORED,
        # The account login's events are driven, and checked against this catalogue, by
        # tests/integration/test_account_login.py (they need an OAuth login, not these scenarios).
        Event.ACCOUNT_IMPORTED,
        Event.ACCOUNT_REFRESHED,
        Event.ACCOUNT_REFRESH_FAILED,
        Event.ACCOUNT_REAUTH_REQUIRED,
        # Needs a provider whose refresh names another account or user; the emulator never does.
        Event.ACCOUNT_BINDING_CHANGED,
        # Written by `kek reseal`, not by a broker: driven, and checked against this catalogue, by
        # tests/integration/test_reseal_hostile_keys.py.
        Event.STORE_RESEAL_SKIPPED,
        # Written by `serve` before the broker starts (it turns core dumps off for the whole
        # process): driven, and checked against this catalogue, by test_secret_files.py.
        Event.PROCESS_HARDENED,
        Event.FILE_EXPOSED,
        # Written by the parent of `serve --workers N`: driven, and every line its workers and it
        # wrote checked against this catalogue, by tests/integration/test_workers.py (the kill
        # after a worker overran its grace period is not driven).
        Event.SUPERVISOR_STARTED,
        Event.SUPERVISOR_WORKER_EXITED,
        Event.SUPERVISOR_WORKER_FAILED,
        Event.SUPERVISOR_WORKER_KILLED,
        Event.SUPERVISOR_STOPPING,
        Event.SUPERVISOR_STOPPED,
    }
)

_WAIT_S = 10.0
WORKER = "worker-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"


class LogBuffer(io.StringIO):
    """The broker's JSON log stream, captured in memory; waiters wake on every write."""

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._written = asyncio.Event()

    def write(self, text: str) -> int:
        """Append ``text`` and wake waiters (lines may come from worker threads too)."""
        count = super().write(text)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._written.set)
        return count

    def lines(self) -> list[dict[str, Any]]:
        """Every line written so far, decoded."""
        return [json.loads(text) for text in self.getvalue().splitlines() if text.strip()]

    def events(self) -> list[str]:
        """The event name of every line written so far."""
        return [str(line.get("event")) for line in self.lines()]

    async def wait_for(self, event: Event, count: int = 1) -> None:
        """Return once ``event`` was written ``count`` times (bounded)."""
        async with asyncio.timeout(_WAIT_S):
            while True:
                self._written.clear()
                if self.events().count(event) >= count:
                    return
                await self._written.wait()


async def _expect_error(call: Awaitable[object], code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()


async def _issuance(broker: RunningBroker, emulator: Emulator) -> None:
    """Background and thread tasks, warm hits, prewarm, identity, watch, health, rejection."""
    stub = broker.stub
    background = (await stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    assert background.scheme == pb.SCHEME_AGENT_ASSERTION
    await stub.GetAuthorization(pb.GetAuthorizationRequest())
    await stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))
    await stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY))
    await stub.EnsureTask(pb.EnsureTaskRequest(thread_id="t2"))
    await stub.GetIdentity(pb.GetIdentityRequest())
    watch = stub.WatchAuthorization(pb.GetAuthorizationRequest(thread_id="t1"))
    async with asyncio.timeout(_WAIT_S):
        await anext(aiter(watch))
    watch.cancel()
    health = health_pb2_grpc.HealthStub(broker.channel)
    await health.Check(health_pb2.HealthCheckRequest(service=""))
    # Rejection: the control plane revoked the task; the report replaces it, and a report of the
    # replacement right after is throttled.
    emulator.revoke_task(background.task_id)
    replaced = await stub.ReportRejection(
        pb.ReportRejectionRequest(header_value=background.header_value, http_status=401)
    )
    assert replaced.replaced
    await stub.ReportRejection(
        pb.ReportRejectionRequest(header_value=replaced.authorization.header_value, http_status=401)
    )


async def _bad_input(broker: RunningBroker) -> None:
    """Malformed fields, an unknown identity, a garbled header."""
    stub = broker.stub
    await _expect_error(
        stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="bad id")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _expect_error(
        stub.GetAuthorization(pb.GetAuthorizationRequest(identity="nobody")),
        grpc.StatusCode.NOT_FOUND,
    )
    await _expect_error(
        stub.ReportRejection(
            pb.ReportRejectionRequest(header_value="AgentAssertion !!!!", http_status=401)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def _fallbacks(start_broker: StartBroker, emulator: Emulator) -> None:
    """DISABLED, UNSUPPORTED_HOST, IDENTITY_UNAVAILABLE, TASK_REGISTRATION_UNAVAILABLE, no token."""
    request = pb.GetAuthorizationRequest()
    cases: list[tuple[dict[str, Any], int]] = [
        ({"env": {"BROKER_USE_AGENT_IDENTITY": "false"}}, pb.FALLBACK_REASON_DISABLED),
        ({"supported_hosts": ""}, pb.FALLBACK_REASON_UNSUPPORTED_HOST),
        ({"account_id": None}, pb.FALLBACK_REASON_IDENTITY_UNAVAILABLE),
    ]
    for kwargs, reason in cases:
        broker = await start_broker(**kwargs)
        answer = (await broker.stub.GetAuthorization(request)).authorization
        assert (answer.scheme, answer.fallback_reason) == (pb.SCHEME_BEARER, reason)
        await broker.close()
    emulator.inject_fault("register_task", status=503, count=50)
    broker = await start_broker()
    answer = (await broker.stub.GetAuthorization(request)).authorization
    assert answer.fallback_reason == pb.FALLBACK_REASON_TASK_REGISTRATION_UNAVAILABLE
    await _expect_error(
        broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="t9")),
        grpc.StatusCode.UNAVAILABLE,
    )
    emulator.reset()
    await broker.close()
    # The token file disappears: a Bearer that is due cannot be given.
    broker = await start_broker()
    broker.token_file.unlink()
    await _expect_error(
        broker.stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await broker.close()


async def _control_plane_down(start_broker: StartBroker, emulator: Emulator) -> None:
    """Every control-plane call fails: the circuit opens; once it answers again, it closes."""
    emulator.inject_fault("*", status=503, count=50)
    broker = await start_broker(
        env={"BROKER_CIRCUIT_FAILURES": "1", "BROKER_CIRCUIT_COOLDOWN": "0.3"}
    )
    answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    assert answer.fallback_reason == pb.FALLBACK_REASON_IDENTITY_UNAVAILABLE
    emulator.reset()
    await asyncio.sleep(0.4)  # the circuit's cooldown runs on the real monotonic clock
    answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    assert answer.scheme == pb.SCHEME_AGENT_ASSERTION
    await broker.close()


async def _routing(start_broker: StartBroker, emulator: Emulator) -> None:
    """A workspace route discovered, then a discovery that fails (fail closed)."""
    broker = await start_broker(env={"BROKER_WORKSPACE_ROUTING": "on"})
    answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    assert answer.backend_origin
    await broker.close()
    emulator.inject_fault("accounts_check", status=503, count=10)
    broker = await start_broker(identity="routed", env={"BROKER_WORKSPACE_ROUTING": "on"})
    await _expect_error(
        broker.stub.GetAuthorization(pb.GetAuthorizationRequest()), grpc.StatusCode.UNAVAILABLE
    )
    emulator.reset()
    await broker.close()


async def _redis(start_broker: StartBroker, process: RedisServerProcess) -> None:
    """Shared state: load, discard and corrupt values; Redis down and back."""
    url = process.url
    first = await start_broker(redis_url=url, identity="shared")
    await first.stub.GetAuthorization(pb.GetAuthorizationRequest())
    await first.close()
    # A second replica loads the identity; one bound to another account discards it.
    second = await start_broker(redis_url=url, identity="shared")
    await second.stub.GetAuthorization(pb.GetAuthorizationRequest())
    await second.close()
    other = await start_broker(redis_url=url, identity="shared", account_id="acct-other")
    await other.stub.GetAuthorization(pb.GetAuthorizationRequest())
    await other.close()
    # A foreign value where the identity belongs.
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.set(keys.identity_key("corrupt"), b"not a hash")
    finally:
        await client.aclose()
    corrupt = await start_broker(redis_url=url, identity="corrupt")
    await corrupt.stub.GetAuthorization(pb.GetAuthorizationRequest())
    await corrupt.close()
    # Redis goes away and comes back.
    broker = await start_broker(redis_url=url, identity="outage")
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
    process.stop()
    await _expect_error(
        broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="during-outage")),
        grpc.StatusCode.UNAVAILABLE,
    )
    process.start()
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="after-outage"))
    await broker.close()


async def _opt_ins(start_broker: StartBroker, url: str) -> None:
    """The weakening settings, each allowed by name: no KEK, no callers, cleartext upstreams."""
    broker = await start_broker(
        redis_url=url,
        identity="unsealed",
        env={
            "BROKER_KEK_FILE": "",
            "BROKER_ALLOW_UNSEALED_STORE": "true",
            "BROKER_ALLOW_ANONYMOUS_CALLERS": "true",
            "BROKER_ALLOW_CLEARTEXT_UPSTREAM": "true",
        },
    )
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
    await broker.close()


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _callers_and_admin(start_broker: StartBroker, tmp_path: Path) -> None:
    """Caller tokens, denials, and the admin service's rotation and cache flush."""
    config = tmp_path / "callers.toml"
    config.write_text(
        f'[callers.worker]\ntoken_sha256 = "{hash_token(WORKER)}"\n'
        f'[callers.ops]\ntoken_sha256 = "{hash_token(OPS)}"\nadmin = true\n'
    )
    broker = await start_broker(env={"BROKER_CONFIG": str(config)})
    admin = apb_grpc.CredentialBrokerAdminStub(broker.channel)
    await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=_auth(WORKER))
    await _expect_error(
        broker.stub.GetAuthorization(pb.GetAuthorizationRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await _expect_error(
        admin.ListIdentities(apb.ListIdentitiesRequest(), metadata=_auth(WORKER)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await admin.RotateIdentity(apb.RotateIdentityRequest(), metadata=_auth(OPS))
    await admin.FlushCaches(apb.FlushCachesRequest(), metadata=_auth(OPS))
    await broker.close()


async def _tls(start_broker: StartBroker, tmp_path: Path) -> None:
    """A TLS listener rereads rotated certificate files when a client connects."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    broker = await start_broker(
        env={"BROKER_TLS_CERT_FILE": str(cert), "BROKER_TLS_KEY_FILE": str(key)}
    )
    # A rotated certificate is picked up at the next handshake.
    renewed = ca.issue_cert("localhost", "127.0.0.1")
    renewed.cert_chain_pems[0].write_to_path(str(cert))
    renewed.private_key_pem.write_to_path(str(key))
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(broker.app.address, credentials, options) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    await broker.close()


async def _bootstrap_cooldown(start_broker: StartBroker, emulator: Emulator) -> None:
    """The authapi profile: a retryable bootstrap failure starts the fleet-wide cooldown."""
    emulator.inject_fault("authapi_register_identity", status=503, count=3)
    broker = await start_broker(
        env={"BROKER_PROTOCOL": "authapi", "BROKER_AUTHAPI_URL": emulator.authapi_url}
    )
    answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    assert answer.fallback_reason == pb.FALLBACK_REASON_BOOTSTRAP_UNAVAILABLE
    emulator.reset()
    await broker.close()


async def _abuse_limits(start_broker: StartBroker) -> None:
    """A new thread task over budget is refused; a second report of the Bearer is throttled."""
    broker = await start_broker(
        env={
            "BROKER_THREAD_TASK_BURST_PER_IDENTITY": "1",
            "BROKER_THREAD_TASK_RATE_PER_IDENTITY": "0.01",
        }
    )
    await broker.stub.EnsureTask(pb.EnsureTaskRequest(thread_id="allowed"))
    await _expect_error(
        broker.stub.EnsureTask(pb.EnsureTaskRequest(thread_id="refused")),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    bearer = (
        await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY))
    ).authorization
    for _ in range(2):
        await broker.stub.ReportRejection(
            pb.ReportRejectionRequest(header_value=bearer.header_value, http_status=401)
        )
    await broker.close()


async def _config_invalid(buffer: LogBuffer) -> None:
    """``credential-broker serve`` with an invalid setting writes config.invalid on stdout."""
    env = {**os.environ, "BROKER_ASSERTION_TTL": "1000", "BROKER_LISTEN": "127.0.0.1:0"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        stdout, _ = await process.communicate()
    assert process.returncode == 2
    buffer.write(stdout.decode())


class TestDocsPage:
    def test_page_is_current(self) -> None:
        """docs/events.md is exactly what the catalogue generates (run --write when it is not)."""
        assert DOCS_PATH.read_text(encoding="utf-8") == render_markdown()

    def test_check_command_detects_a_stale_page(self, tmp_path: Path) -> None:
        """``python -m broker.catalog --check`` fails on a stale page and passes once written."""
        page = tmp_path / "events.md"
        page.write_text("stale\n")
        assert catalog_main(["--check", "--path", str(page)]) == 1
        assert catalog_main(["--write", "--path", str(page)]) == 0
        assert catalog_main(["--check", "--path", str(page)]) == 0


class TestCatalogue:
    def test_every_event_is_catalogued(self) -> None:
        """Each Event member has exactly one entry, and nothing else has one."""
        assert set(CATALOGUE) == set(Event)

    def test_no_field_name_is_secret_sounding(self) -> None:
        """No catalogued field is one the redaction processor would mask, so none holds a secret."""
        for spec in CATALOGUE.values():
            for field in (*spec.fields, *BASE_FIELDS, *CONTEXT_FIELDS):
                masked = redact_secrets(None, "info", {field.name: "value"})
                assert masked[field.name] == "value", f"{spec.event}.{field.name}"


_METHOD_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "exception": "error",
}
# structlog's own keyword: the traceback it turns into the catalogued "exception" field.
_NOT_FIELDS = frozenset({"exc_info"})


def _call_sites() -> list[tuple[str, str, str | None, set[str]]]:
    """Every ``<logger>.<method>(Event.X, field=...)`` call: where, event, level, fields.

    The calls of the broker (broker/) and of the control-plane emulator (emulator/).
    """
    root = Path(__file__).resolve().parents[2]
    sites = []
    for path in sorted([*(root / "broker").rglob("*.py"), *(root / "emulator").rglob("*.py")]):
        if "catalog" in path.relative_to(root).parts:
            continue  # the catalogue's own entries name events too
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            first = node.args[0]
            if not (
                isinstance(first, ast.Attribute)
                and isinstance(first.value, ast.Name)
                and first.value.id == "Event"
            ):
                continue
            method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            fields = {k.arg for k in node.keywords if k.arg} - _NOT_FIELDS
            where = f"{path.relative_to(root)}:{node.lineno}"
            sites.append((where, first.attr, _METHOD_LEVELS.get(method), fields))
    return sites


class TestCallSites:
    def test_call_sites_are_found(self) -> None:
        """The scan finds the broker's logging calls (so the checks below are not vacuous)."""
        assert {event for _, event, _, _ in _call_sites()} >= {"BROKER_STARTED", "RPC_COMPLETED"}

    def test_every_call_site_matches(self) -> None:
        """Each logging call, reached by a scenario or not, uses declared fields and levels."""
        frame = {f.name for f in (*BASE_FIELDS, *CONTEXT_FIELDS)}
        found = []
        for where, name, level, fields in _call_sites():
            spec = CATALOGUE.get(Event[name])
            if spec is None:
                found.append(f"{where}: Event.{name} is not in the catalogue")
                continue
            undeclared = sorted(f for f in fields if spec.field_spec(f) is None and f not in frame)
            if undeclared:
                found.append(f"{where}: {spec.event} writes undeclared {undeclared}")
            if level is not None and level not in spec.levels:
                found.append(f"{where}: {spec.event} written at {level}")
        assert not found, "\n".join(found)


class TestRedaction:
    def test_method_counters_survive_redaction(self) -> None:
        """A broker.stats counter keyed by an RPC name keeps its integer value."""
        line = {"event": "broker.stats", "rpcs_by_method": {"GetAuthorization": 3}}
        assert redact_secrets(None, "info", line)["rpcs_by_method"] == {"GetAuthorization": 3}


class TestProblems:
    def test_a_good_line(self) -> None:
        """A line with the catalogued level, fields and types has no problem."""
        line = {
            "event": "rpc.completed",
            "level": "debug",
            "timestamp": "2026-11-25T08:00:00Z",
            "grpc_code": "OK",
            "duration_ms": 1,
            "rpc_method": "/x/Y",
            "caller": None,
        }
        assert problems(line) == []

    @pytest.mark.parametrize(
        ("line", "problem"),
        [
            ({"level": "info"}, "event: missing"),
            ({"event": "no.such"}, "not in the catalogue"),
            ({"event": "broker.stopping", "level": "error"}, "level 'error'"),
            ({"event": "store.connected", "level": "info", "redis": "r"}, "'timestamp' is missing"),
            ({"event": "config.invalid", "level": "error", "error": 3}, "expected string"),
            ({"event": "bearer.reloaded", "level": "info", "has_token": 1}, "expected boolean"),
            ({"event": "task.rejected", "level": "warning", "task_id": None}, "not nullable"),
            ({"event": "cache.flushed", "level": "info", "token": "x"}, "'token' is not declared"),
            ({"event": "broker.stats", "level": "info", "authorizer": {"a": 1.5}}, "integers"),
        ],
    )
    def test_bad_lines(self, line: dict[str, Any], problem: str) -> None:
        """Unknown events, wrong levels, undeclared or missing fields and wrong types are reported."""
        assert any(problem in found for found in problems(line)), problems(line)


@pytest.mark.integration
class TestRealBroker:
    async def test_every_line_matches_and_every_event_is_seen(
        self,
        start_broker: StartBroker,
        start_emulator: StartEmulator,
        emulator: Emulator,
        redis_process: RedisServerProcess,
        tmp_path: Path,
    ) -> None:
        """Across every scenario each line matches the catalogue and each event is written."""
        buffer = LogBuffer()
        configure_logging("debug", buffer)
        await start_emulator()
        scenarios: list[Callable[[], Awaitable[None]]] = [
            lambda: _fallbacks(start_broker, emulator),
            lambda: _control_plane_down(start_broker, emulator),
            lambda: _routing(start_broker, emulator),
            lambda: _redis(start_broker, redis_process),
            lambda: _opt_ins(start_broker, redis_process.url),
            lambda: _callers_and_admin(start_broker, tmp_path),
            lambda: _tls(start_broker, tmp_path),
            lambda: _bootstrap_cooldown(start_broker, emulator),
            lambda: _abuse_limits(start_broker),
            lambda: _config_invalid(buffer),
        ]
        broker = await start_broker(env={"BROKER_STATS_INTERVAL": "0.2"})
        await _issuance(broker, emulator)
        await _bad_input(broker)
        await buffer.wait_for(Event.BROKER_STATS)
        await broker.close()
        for scenario in scenarios:
            await scenario()

        lines = buffer.lines()
        found = [f"line {n}: {p}" for n, line in enumerate(lines) for p in problems(line)]
        assert not found, "\n".join(found[:40])
        assert REDACTED not in json.dumps(lines), "a field needed redacting"
        missing = set(CATALOGUE) - EXEMPT - {Event(line["event"]) for line in lines}
        assert not missing, f"never written: {sorted(missing)}"
