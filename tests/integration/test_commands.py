"""The command line as a newcomer uses it: real subprocesses on loopback, bounded in time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cb_emulator import Emulator
from tests.conftest import free_port
from tests.fixtures.broker import StartBroker

pytestmark = pytest.mark.integration

BROKER = [sys.executable, "-m", "broker"]


def run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    full_env.update(env or {})
    return subprocess.run(
        BROKER + args, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


class TestConfigErrors:
    @pytest.mark.parametrize(
        ("env", "setting"),
        [
            ({"BROKER_ASSERTION_TTL": "300"}, "BROKER_ASSERTION_TTL"),
            ({"BROKER_LISTEN": "nowhere"}, "BROKER_LISTEN"),
            ({"BROKER_REDIS_URL": "redis://127.0.0.1:1/0"}, "BROKER_KEK_FILE"),
        ],
    )
    def test_one_clear_line(self, env: dict[str, str], setting: str) -> None:
        """Invalid configuration exits 2 with one stderr line naming the setting, no traceback."""
        result = run(["serve"], env)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert setting in lines[0]
        assert "Traceback" not in result.stderr + result.stdout
        # With Redis, `serve` supervises workers by default: its own supervisor.* lines follow
        # the failed worker's config.invalid.
        events = [json.loads(line)["event"] for line in result.stdout.strip().splitlines()]
        assert events.count("config.invalid") == 1, events


class TestDevCommand:
    def test_dev_serves_and_stops(self, tmp_path: Path) -> None:
        """`dev` starts emulator and broker on the embedded store, answers, and stops on SIGINT."""
        port = free_port()
        process = subprocess.Popen(
            [*BROKER, "dev", "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            banner = ""
            for _ in range(20):
                line = process.stderr.readline()
                banner += line
                if "Stop with Ctrl-C" in line:
                    break
            assert f"127.0.0.1:{port}" in banner
            result = run(["get-authorization", "--broker", f"127.0.0.1:{port}"])
            assert result.returncode == 0, result.stderr
            authorization = json.loads(result.stdout)
            assert authorization["scheme"] == "SCHEME_AGENT_ASSERTION"
            header = authorization["header_value"]
            inspected = run(["inspect", header, "--broker", f"127.0.0.1:{port}"])
            assert inspected.returncode == 0, inspected.stderr
            assert json.loads(inspected.stdout)["verified"] is True
        finally:
            process.send_signal(signal.SIGINT)
            out, _ = process.communicate(timeout=20)
        assert process.returncode == 0
        events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
        assert "store.embedded" in events
        assert events[-1] == "broker.stopped"


class TestInspect:
    async def test_inspect_with_public_key(self, start_broker: StartBroker) -> None:
        """`inspect` verifies against a given public key and refuses a tampered header."""
        from broker._proto.credential_broker.v1 import broker_pb2 as pb

        broker = await start_broker()
        header = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        identity = (await broker.stub.GetIdentity(pb.GetIdentityRequest())).identity
        good = run(["inspect", header.header_value, "--public-key", identity.public_key_ssh])
        assert good.returncode == 0
        assert json.loads(good.stdout)["task_id"] == header.task_id
        other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs"
        bad = run(["inspect", header.header_value, "--public-key", other])
        assert bad.returncode == 1
        assert json.loads(bad.stdout)["verified"] is False

    def test_inspect_garbage(self) -> None:
        """`inspect` on something that is not an assertion says so and exits 1."""
        result = run(["inspect", "Bearer abc"])
        assert result.returncode == 1
        assert re.search("not an AgentAssertion", result.stderr)


class TestStats:
    async def test_periodic_stats(
        self, start_broker: StartBroker, emulator: Emulator, log_output: list[dict[str, object]]
    ) -> None:
        """`broker.stats` lines carry cumulative counters by cache level and RPC code."""
        import asyncio

        from broker._proto.credential_broker.v1 import broker_pb2 as pb

        broker = await start_broker(env={"BROKER_STATS_INTERVAL": "0.2"})
        for _ in range(3):
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())
        for _ in range(100):
            stats = [e for e in log_output if e["event"] == "broker.stats"]
            if stats and stats[-1]["rpcs_by_code"]:
                break
            await asyncio.sleep(0.05)
        last = stats[-1]
        assert last["rpcs_by_code"] == {"OK": 3}
        counters = last["authorizer"]
        assert isinstance(counters, dict)
        assert counters["assertion_minted"] == 1
        assert counters["l1_hit"] == 2
