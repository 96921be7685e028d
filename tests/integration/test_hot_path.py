"""The per-RPC work on a real broker: what each RPC logs, how it is counted, what it answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.callers import hash_token
from broker.events import Event
from broker.transport.grpc import convert
from tests.fixtures.broker import StartBroker

pytestmark = pytest.mark.integration

SERVICE = "/credential_broker.v1.CredentialBroker/"
GET = SERVICE + "GetAuthorization"
NARROW = "narrow-token-0123456789abcdef"
_WAIT_S = 10.0

Entries = list[dict[str, Any]]


def completed(entries: Entries) -> Entries:
    """The ``rpc.completed`` lines."""
    return [entry for entry in entries if entry["event"] == Event.RPC_COMPLETED]


async def refused(call: Any, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code


@pytest.fixture(name="broker_channel")
async def fixture_broker_channel(start_broker: StartBroker) -> grpc.aio.Channel:
    """A channel to a started broker, for calls that bypass the typed stub."""
    return (await start_broker()).channel


async def stats_line(entries: Entries, check: Any) -> dict[str, Any]:
    """The first ``broker.stats`` line for which ``check`` holds (waits for it, bounded)."""
    async with asyncio.timeout(_WAIT_S):
        while True:
            for entry in entries:
                if entry["event"] == Event.BROKER_STATS and check(entry):
                    return entry
            await asyncio.sleep(0.05)  # the stats task writes on its own schedule: poll the capture


class TestAccessLog:
    async def test_success_writes_no_line(
        self, start_broker: StartBroker, log_output: Entries
    ) -> None:
        """By default a successful RPC is counted without a line; a failed one writes its line."""
        broker = await start_broker()
        for _ in range(3):
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        await refused(
            broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id="bad id")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert [(e["rpc_method"], e["grpc_code"]) for e in completed(log_output)] == [
            (GET, "INVALID_ARGUMENT")
        ]
        assert broker.app.stats()["rpcs_by_code"] == {"OK": 3, "INVALID_ARGUMENT": 1}

    async def test_one_in_n_is_sampled(
        self, start_broker: StartBroker, log_output: Entries
    ) -> None:
        """With ``BROKER_ACCESS_LOG_SAMPLE=2`` every second successful RPC writes its line."""
        broker = await start_broker(env={"BROKER_ACCESS_LOG_SAMPLE": "2"})
        for _ in range(5):
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        lines = completed(log_output)
        assert [(e["grpc_code"], e["sampled_1_in"]) for e in lines] == [("OK", 2), ("OK", 2)]
        assert all(e["duration_ms"] >= 0 and e["caller"] == "local" for e in lines)
        assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in lines)

    async def test_started_says_which_loop_and_sampling(
        self, start_broker: StartBroker, log_output: Entries
    ) -> None:
        """``broker.started`` names the event loop that runs the broker and the access log's rate."""
        await start_broker(env={"BROKER_ACCESS_LOG_SAMPLE": "100"})
        started = next(e for e in log_output if e["event"] == Event.BROKER_STARTED)
        loop_name = (
            "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
        )
        assert started["event_loop"] == loop_name
        assert started["access_log_sample"] == 100


class TestLogContext:
    async def test_a_failed_rpc_names_itself(
        self, start_broker: StartBroker, log_output: Entries
    ) -> None:
        """The line of a failed RPC carries its method, a request id, the peer and the caller."""
        broker = await start_broker()
        for _ in range(2):
            await refused(
                broker.stub.GetAuthorization(pb.GetAuthorizationRequest(identity="nobody")),
                grpc.StatusCode.NOT_FOUND,
            )
        first, second = completed(log_output)
        assert first["rpc_method"] == GET
        assert first["peer"].startswith("ipv4:127.0.0.1:")
        assert first["caller"] == "local"
        assert len(first["request_id"]) == 16
        assert first["request_id"] != second["request_id"]

    async def test_a_denial_in_the_core_names_the_method(
        self, start_broker: StartBroker, log_output: Entries, tmp_path: Path
    ) -> None:
        """A caller refused by the core (identity rule) is logged with the RPC's method."""
        config = tmp_path / "callers.toml"
        config.write_text(
            f'[callers.narrow]\ntoken_sha256 = "{hash_token(NARROW)}"\nidentities = ["other"]\n'
        )
        broker = await start_broker(env={"BROKER_CONFIG": str(config)})
        await refused(
            broker.stub.GetAuthorization(
                pb.GetAuthorizationRequest(), metadata=(("authorization", f"Bearer {NARROW}"),)
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        denied = next(e for e in log_output if e["event"] == Event.CALLER_DENIED)
        assert (denied["rpc_method"], denied["caller"], denied["rule"]) == (
            GET,
            "narrow",
            "identity",
        )
        assert "request_id" in denied

    async def test_lines_outside_an_rpc_have_no_rpc_fields(
        self, start_broker: StartBroker, log_output: Entries
    ) -> None:
        """Lines the broker writes on its own (start, stop) carry no RPC's fields."""
        broker = await start_broker()
        await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        await broker.close()
        own = [e for e in log_output if e["event"] in (Event.BROKER_STARTED, Event.BROKER_STOPPED)]
        assert len(own) == 2
        assert not any({"rpc_method", "request_id", "peer", "caller"} & set(e) for e in own)


class TestStats:
    async def test_stats_count_every_rpc(
        self, start_broker: StartBroker, log_output: Entries
    ) -> None:
        """``broker.stats`` reports RPCs by code and method, and those of its interval."""
        broker = await start_broker(env={"BROKER_STATS_INTERVAL": "0.2"})
        for _ in range(4):
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        line = await stats_line(log_output, lambda e: e["rpcs_by_code"].get("OK") == 4)
        assert line["rpcs_by_method"] == {"GetAuthorization": 4}
        assert line["rpc_seconds_total"] > 0
        assert line["interval_s"] > 0
        total = sum(
            e["rpcs_interval"]
            for e in log_output
            if e["event"] == Event.BROKER_STATS and e["timestamp"] <= line["timestamp"]
        )
        assert total == 4

    async def test_per_caller_usage(self, start_broker: StartBroker, tmp_path: Path) -> None:
        """Per-caller usage counts a caller's RPCs by code and method, and its denials."""
        config = tmp_path / "callers.toml"
        config.write_text(f'[callers.narrow]\ntoken_sha256 = "{hash_token(NARROW)}"\n')
        broker = await start_broker(env={"BROKER_CONFIG": str(config)})
        metadata = (("authorization", f"Bearer {NARROW}"),)
        await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(), metadata=metadata)
        await refused(
            broker.stub.GetAuthorization(pb.GetAuthorizationRequest()),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        usage = broker.app.gate.usage
        assert dict(usage["narrow"].by_code) == {"OK": 1}
        assert dict(usage["narrow"].by_method) == {"GetAuthorization": 1}
        assert (usage["unknown"].denied, dict(usage["unknown"].by_rule)) == (
            1,
            {"authentication": 1},
        )


class TestPrebuiltAnswer:
    async def test_same_answer_as_the_servicer(self, start_broker: StartBroker) -> None:
        """The warm answer is the response the typed servicer builds, for the same header."""
        broker = await start_broker()
        first = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        warm = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        assert warm == first
        built = pb.GetAuthorizationResponse(
            authorization=convert.authorization_to_proto(await broker.app.authorizer.authorize())
        )
        assert warm == built

    async def test_min_remaining_and_threads(self, start_broker: StartBroker) -> None:
        """``min_remaining`` and thread ids reach the core as the typed servicer passes them."""
        broker = await start_broker()
        request = pb.GetAuthorizationRequest(thread_id="t1")
        request.min_remaining.FromSeconds(5)
        answer = (await broker.stub.GetAuthorization(request)).authorization
        assert answer.task_kind == pb.TASK_KIND_THREAD
        too_long = pb.GetAuthorizationRequest()
        too_long.min_remaining.FromSeconds(3600)
        await refused(broker.stub.GetAuthorization(too_long), grpc.StatusCode.INVALID_ARGUMENT)

    async def test_bad_fields_are_refused_every_time(self, start_broker: StartBroker) -> None:
        """An unknown mode or a negative ``min_remaining`` is INVALID_ARGUMENT, however often."""
        broker = await start_broker()
        negative = pb.GetAuthorizationRequest()
        negative.min_remaining.seconds = -1
        for request in (pb.GetAuthorizationRequest(mode=99), negative) * 2:
            await refused(broker.stub.GetAuthorization(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert broker.app.stats()["rpcs_by_code"] == {"INVALID_ARGUMENT": 4}

    async def test_undecodable_and_unknown(self, broker_channel: grpc.aio.Channel) -> None:
        """Bytes that are no request answer INVALID_ARGUMENT; an unknown method UNIMPLEMENTED."""
        garbage = broker_channel.unary_unary(GET)
        await refused(garbage(b"\xff\xff\xff"), grpc.StatusCode.INVALID_ARGUMENT)
        unknown = broker_channel.unary_unary(SERVICE + "NoSuchMethod")
        await refused(unknown(b""), grpc.StatusCode.UNIMPLEMENTED)
