"""The client commands against a production-shaped broker: caller tokens, TLS and mutual TLS.

Each test starts a real broker (wired to the real emulator) on loopback with a TLS certificate from
``trustme`` and runs ``credential-broker`` as an operator would, in a subprocess bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from broker.core.callers import hash_token
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker

pytestmark = pytest.mark.integration

WORKER = "worker-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"
_DEADLINE_S = 30


@dataclass(frozen=True)
class Pki:
    """A CA, the broker's certificate and key, and an admin client's certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(name="pki")
def fixture_pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("ops.example")
    pki = Pki(
        ca=tmp_path / "ca.pem",
        server_cert=tmp_path / "server.pem",
        server_key=tmp_path / "server.key",
        client_cert=tmp_path / "client.pem",
        client_key=tmp_path / "client.key",
    )
    ca.cert_pem.write_to_path(str(pki.ca))
    server.cert_chain_pems[0].write_to_path(str(pki.server_cert))
    server.private_key_pem.write_to_path(str(pki.server_key))
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    client.private_key_pem.write_to_path(str(pki.client_key))
    return pki


@pytest.fixture(name="token_files")
def fixture_token_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, token in (("worker", WORKER), ("ops", OPS), ("wrong", "not-a-caller-token-000")):
        path = tmp_path / f"{name}.token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        files[name] = path
    return files


def callers_config(tmp_path: Path) -> Path:
    path = tmp_path / "callers.toml"
    path.write_text(
        f"""
[callers.worker]
token_sha256 = "{hash_token(WORKER)}"

[callers.ops]
token_sha256 = "{hash_token(OPS)}"
admin = true

[callers.ops-cert]
cert_names = ["ops.example"]
admin = true
"""
    )
    return path


@pytest.fixture(name="tls_broker")
async def fixture_tls_broker(start_broker: StartBroker, tmp_path: Path, pki: Pki) -> RunningBroker:
    """Token callers over server-authenticated TLS (no client certificate asked)."""
    toml = callers_config(tmp_path)
    toml.write_text(toml.read_text().split("[callers.ops-cert]")[0])
    return await start_broker(
        env={
            "BROKER_CONFIG": str(toml),
            "BROKER_TLS_CERT_FILE": str(pki.server_cert),
            "BROKER_TLS_KEY_FILE": str(pki.server_key),
        }
    )


@pytest.fixture(name="mtls_broker")
async def fixture_mtls_broker(start_broker: StartBroker, tmp_path: Path, pki: Pki) -> RunningBroker:
    """Mutual TLS: every client shows a certificate from the CA; callers by token or certificate."""
    return await start_broker(
        env={
            "BROKER_CONFIG": str(callers_config(tmp_path)),
            "BROKER_TLS_CERT_FILE": str(pki.server_cert),
            "BROKER_TLS_KEY_FILE": str(pki.server_key),
            "BROKER_TLS_CLIENT_CA_FILE": str(pki.ca),
        }
    )


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``credential-broker ARGS`` in a subprocess without blocking the broker's event loop."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    full_env |= env or {}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        *args,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), _DEADLINE_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def tls_flags(broker: RunningBroker, pki: Pki) -> list[str]:
    return ["--broker", broker.app.address, "--ca-file", str(pki.ca), "--server-name", "localhost"]


def mtls_flags(broker: RunningBroker, pki: Pki) -> list[str]:
    return [
        *tls_flags(broker, pki),
        *("--cert-file", str(pki.client_cert)),
        *("--key-file", str(pki.client_key)),
    ]


def one_clear_line(result: Result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and one stderr line holding every needle; no traceback."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


class TestCallerToken:
    async def test_get_authorization_with_token_file(
        self, tls_broker: RunningBroker, pki: Pki, token_files: dict[str, Path], emulator: Emulator
    ) -> None:
        """A token file and the broker's CA: an assertion for a thread, as JSON."""
        result = await cli(
            "get-authorization",
            *tls_flags(tls_broker, pki),
            *("--token-file", str(token_files["worker"])),
            *("--thread", "thread-42"),
        )
        assert result.returncode == 0, result.stderr
        authorization = json.loads(result.stdout)
        assert authorization["scheme"] == "SCHEME_AGENT_ASSERTION"
        assert authorization["thread_id"] == "thread-42"

    async def test_token_from_the_environment(self, tls_broker: RunningBroker, pki: Pki) -> None:
        """BROKER_CALLER_TOKEN works too; --header-only prints just the header."""
        result = await cli(
            "get-authorization",
            *tls_flags(tls_broker, pki),
            "--header-only",
            env={"BROKER_CALLER_TOKEN": WORKER},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("AgentAssertion ")

    async def test_inspect_fetches_the_key_from_a_secured_broker(
        self, tls_broker: RunningBroker, pki: Pki, token_files: dict[str, Path]
    ) -> None:
        """`inspect --broker` authenticates like any caller and verifies the header."""
        header = await cli(
            "get-authorization",
            *tls_flags(tls_broker, pki),
            "--header-only",
            *("--token-file", str(token_files["worker"])),
        )
        assert header.returncode == 0, header.stderr
        result = await cli(
            "inspect",
            header.stdout.strip(),
            *tls_flags(tls_broker, pki),
            *("--token-file", str(token_files["worker"])),
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["verified"] is True

    async def test_admin_commands(
        self, tls_broker: RunningBroker, pki: Pki, token_files: dict[str, Path]
    ) -> None:
        """An admin caller lists, revokes, flushes, rotates and reads usage; a worker may not."""
        ops = [*tls_flags(tls_broker, pki), "--token-file", str(token_files["ops"])]
        first = await cli(
            "get-authorization",
            *tls_flags(tls_broker, pki),
            *("--token-file", str(token_files["worker"])),
        )
        assert first.returncode == 0, first.stderr
        task_id = json.loads(first.stdout)["task_id"]
        listed = await cli("admin", "list-identities", *ops)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["identities"][0]["identity"]["name"] == "default"
        revoked = await cli("admin", "revoke-task", *ops)
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["task_id"] == task_id
        flushed = await cli("admin", "flush-caches", *ops, "--identity", "default")
        assert json.loads(flushed.stdout)["identities"] == ["default"]
        rotated = await cli("admin", "rotate-identity", *ops)
        assert rotated.returncode == 0, rotated.stderr
        assert json.loads(rotated.stdout)["previous_agent_runtime_id"]
        usage = await cli("admin", "usage", *ops)
        callers = {c["caller"] for c in json.loads(usage.stdout)["callers"]}
        assert {"worker", "ops"} <= callers
        denied = await cli(
            "admin",
            "usage",
            *tls_flags(tls_broker, pki),
            *("--token-file", str(token_files["worker"])),
        )
        one_clear_line(denied, 1, "PERMISSION_DENIED")

    async def test_wrong_or_missing_token(
        self, tls_broker: RunningBroker, pki: Pki, token_files: dict[str, Path]
    ) -> None:
        """A wrong token, or none, is one clear UNAUTHENTICATED line; the token is never echoed."""
        wrong = await cli(
            "get-authorization",
            *tls_flags(tls_broker, pki),
            *("--token-file", str(token_files["wrong"])),
        )
        line = one_clear_line(wrong, 1, "UNAUTHENTICATED", "--token-file")
        assert "not-a-caller-token" not in line
        missing = await cli("admin", "list-identities", *tls_flags(tls_broker, pki))
        one_clear_line(missing, 1, "UNAUTHENTICATED")

    async def test_token_never_on_the_command_line(
        self, tls_broker: RunningBroker, pki: Pki
    ) -> None:
        """There is no flag for the token itself, not even by abbreviating --token-file."""
        result = await cli("get-authorization", *tls_flags(tls_broker, pki), "--token", WORKER)
        assert result.returncode == 2
        assert "unrecognized arguments" in result.stderr

    async def test_unreadable_token_file(self, tls_broker: RunningBroker, pki: Pki) -> None:
        """A missing token file is a usage error naming the flag, not its path (it may be a token)."""
        result = await cli(
            "get-authorization",
            *tls_flags(tls_broker, pki),
            *("--token-file", "/nonexistent/" + WORKER),
        )
        line = one_clear_line(result, 2, "--token-file")
        assert WORKER not in line


class TestTlsErrors:
    async def test_missing_ca_file(self, tls_broker: RunningBroker, pki: Pki) -> None:
        """A CA file that is not there is named, before any connection."""
        result = await cli(
            "get-authorization",
            "--broker",
            tls_broker.app.address,
            *("--ca-file", str(pki.ca) + ".missing"),
            env={"BROKER_CALLER_TOKEN": WORKER},
        )
        one_clear_line(result, 2, "--ca-file", "ca.pem.missing")

    async def test_untrusted_server(self, tls_broker: RunningBroker) -> None:
        """TLS without the broker's CA: a clear UNAVAILABLE line that points at --ca-file."""
        result = await cli(
            "get-authorization",
            *("--broker", tls_broker.app.address, "--tls", "--server-name", "localhost"),
            *("--timeout", "5"),
            env={"BROKER_CALLER_TOKEN": WORKER},
        )
        one_clear_line(result, 1, "UNAVAILABLE", "--ca-file")

    async def test_plaintext_to_a_tls_broker(self, tls_broker: RunningBroker) -> None:
        """No TLS flag at all against a TLS broker: UNAVAILABLE with a hint."""
        result = await cli(
            "get-authorization",
            *("--broker", tls_broker.app.address, "--timeout", "5"),
            env={"BROKER_CALLER_TOKEN": WORKER},
        )
        one_clear_line(result, 1, "UNAVAILABLE", "--ca-file")


class TestMutualTls:
    async def test_client_certificate_is_the_caller(
        self, mtls_broker: RunningBroker, pki: Pki
    ) -> None:
        """With a client certificate no token is needed: it names an admin caller."""
        result = await cli("get-authorization", *mtls_flags(mtls_broker, pki), "--header-only")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("AgentAssertion ")
        listed = await cli("admin", "list-identities", *mtls_flags(mtls_broker, pki))
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["identities"][0]["identity"]["registered"] is True
        inspected = await cli("inspect", result.stdout.strip(), *mtls_flags(mtls_broker, pki))
        assert json.loads(inspected.stdout)["verified"] is True

    async def test_token_over_mutual_tls(
        self, mtls_broker: RunningBroker, pki: Pki, token_files: dict[str, Path]
    ) -> None:
        """A token names the caller even when the certificate names another."""
        denied = await cli(
            "admin",
            "usage",
            *mtls_flags(mtls_broker, pki),
            *("--token-file", str(token_files["worker"])),
        )
        one_clear_line(denied, 1, "PERMISSION_DENIED")

    async def test_no_client_certificate(self, mtls_broker: RunningBroker, pki: Pki) -> None:
        """Without a client certificate the handshake fails: one line pointing at --cert-file."""
        result = await cli(
            "admin",
            "list-identities",
            *tls_flags(mtls_broker, pki),
            *("--timeout", "5"),
            env={"BROKER_CALLER_TOKEN": OPS},
        )
        one_clear_line(result, 1, "UNAVAILABLE", "--cert-file")

    async def test_certificate_without_key(self, mtls_broker: RunningBroker, pki: Pki) -> None:
        """--cert-file needs --key-file: a usage error."""
        result = await cli(
            "get-authorization",
            *tls_flags(mtls_broker, pki),
            *("--cert-file", str(pki.client_cert)),
        )
        one_clear_line(result, 2, "--cert-file", "--key-file")
