"""Configuration that would weaken the broker is refused at start, or allowed only by name, loudly.

Each test mounts one abuse against the real configuration loader or a real broker (loopback gRPC,
the real emulator, the session's real Redis):

* ``--insecure`` meant both "unsealed Redis values" and "anyone who connects is an admin"; it is now
  an error naming its two replacements, each of which allows only its own thing and says so at start;
* ``http://`` to a control plane, AuthAPI, JWKS or OAuth issuer beyond loopback is refused unless
  ``BROKER_ALLOW_CLEARTEXT_UPSTREAM`` is set, which is logged at start;
* an Agent Identity JWT (it carries the private key) is read from a file only;
* two callers with the same token hash (or certificate name) are refused, naming both;
* the ops listener binds loopback unless a host is named.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.app import BrokerApp
from broker.config import load_settings
from broker.core.callers import hash_token
from broker.errors import ConfigError
from tests.conftest import free_port
from tests.fixtures.broker import StartBroker

pytestmark = pytest.mark.integration

BROKER = [sys.executable, "-m", "broker"]
WORKER = "worker-token-0123456789abcdef"
ANYONE = "0.0.0.0:50051"  # only ever parsed here, never bound: the tests stay on loopback


def _events(log_output: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in log_output if entry["event"] == name]


def _message(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value.message


def _toml(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return {"BROKER_CONFIG": str(path)}


class TestInsecureIsSplit:
    def test_insecure_no_longer_opens_a_non_loopback_listener(self) -> None:
        """BROKER_INSECURE is refused, naming the two settings that replace it."""
        message = _message({"BROKER_LISTEN": ANYONE, "BROKER_INSECURE": "1"})
        assert message.startswith("BROKER_INSECURE")
        assert "BROKER_ALLOW_UNSEALED_STORE" in message
        assert "BROKER_ALLOW_ANONYMOUS_CALLERS" in message

    def test_insecure_in_the_file_is_refused(self, tmp_path: Path) -> None:
        """``insecure = true`` in the TOML file gets the same pointer, not a silent pass."""
        message = _message(_toml(tmp_path, "insecure = true\n"))
        assert "allow_unsealed_store" in message
        assert "allow_anonymous_callers" in message

    def test_insecure_flag_exits_naming_both_flags(self) -> None:
        """``serve --insecure`` exits 2 with one line naming the two new flags."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env["BROKER_LISTEN"] = "127.0.0.1:0"  # were the flag accepted, no fixed port is taken
        result = subprocess.run(
            [*BROKER, "serve", "--insecure"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "--allow-unsealed-store" in line
        assert "--allow-anonymous-callers" in line

    def test_unsealed_store_does_not_open_the_listener(self) -> None:
        """Allowing unsealed values leaves the loopback-only rule for anonymous callers intact."""
        message = _message({"BROKER_LISTEN": ANYONE, "BROKER_ALLOW_UNSEALED_STORE": "true"})
        assert message.startswith("BROKER_LISTEN")
        assert "BROKER_ALLOW_ANONYMOUS_CALLERS" in message

    def test_anonymous_callers_open_the_listener_only(self) -> None:
        """BROKER_ALLOW_ANONYMOUS_CALLERS lets a non-loopback listener run without callers."""
        settings = load_settings(
            {"BROKER_LISTEN": ANYONE, "BROKER_ALLOW_ANONYMOUS_CALLERS": "true"}
        )
        assert settings.allow_anonymous_callers
        assert not settings.allow_unsealed_store

    def test_anonymous_callers_do_not_unseal_the_store(self, redis_url: str) -> None:
        """Redis without a KEK still needs BROKER_ALLOW_UNSEALED_STORE, named in the refusal."""
        settings = load_settings(
            {
                "BROKER_LISTEN": ANYONE,
                "BROKER_REDIS_URL": redis_url,
                "BROKER_ALLOW_ANONYMOUS_CALLERS": "true",
            }
        )
        with pytest.raises(ConfigError, match="BROKER_ALLOW_UNSEALED_STORE") as caught:
            BrokerApp(settings)
        assert caught.value.message.startswith("BROKER_KEK_FILE")

    async def test_unsealed_store_works_and_says_so(
        self,
        start_broker: StartBroker,
        redis_url: str,
        identity_name: str,
        log_output: list[dict[str, Any]],
    ) -> None:
        """A broker on Redis without a KEK serves, and one warning names the setting that allowed it."""
        broker = await start_broker(
            redis_url=redis_url,
            identity=identity_name,
            env={"BROKER_KEK_FILE": "", "BROKER_ALLOW_UNSEALED_STORE": "true"},
        )
        answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
        assert answer.scheme == pb.SCHEME_AGENT_ASSERTION
        (warning,) = _events(log_output, "store.unsealed")
        assert warning["log_level"] == "warning"
        assert warning["setting"] == "BROKER_ALLOW_UNSEALED_STORE"

    async def test_anonymous_callers_say_so(
        self, start_broker: StartBroker, log_output: list[dict[str, Any]]
    ) -> None:
        """With the setting and no callers, start-up warns naming it (instead of auth_disabled)."""
        broker = await start_broker(env={"BROKER_ALLOW_ANONYMOUS_CALLERS": "true"})
        (warning,) = _events(log_output, "caller.anonymous_allowed")
        assert warning["log_level"] == "warning"
        assert warning["setting"] == "BROKER_ALLOW_ANONYMOUS_CALLERS"
        assert warning["listen"] == broker.app.settings.listen
        assert not _events(log_output, "caller.auth_disabled")


class TestCleartextUpstream:
    @pytest.mark.parametrize(
        ("env", "setting"),
        [
            (
                {"BROKER_CONTROLPLANE_URL": "http://cp.example/backend-api"},
                "BROKER_CONTROLPLANE_URL",
            ),
            ({"BROKER_AUTHAPI_URL": "http://auth.example/api/accounts"}, "BROKER_AUTHAPI_URL"),
            ({"BROKER_JWKS_URL": "http://cp.example/jwks"}, "BROKER_JWKS_URL"),
            ({"BROKER_OAUTH_ISSUER": "http://auth.example"}, "BROKER_OAUTH_ISSUER"),
            ({"BROKER_CONTROLPLANE_URL": "http://127.0.0.1.nip.io/"}, "BROKER_CONTROLPLANE_URL"),
            ({"BROKER_CONTROLPLANE_URL": "http://localhost.example/"}, "BROKER_CONTROLPLANE_URL"),
            ({"BROKER_CONTROLPLANE_URL": "http://0.0.0.0:8080/"}, "BROKER_CONTROLPLANE_URL"),
            ({"BROKER_CONTROLPLANE_URL": "http://10.0.0.7/"}, "BROKER_CONTROLPLANE_URL"),
        ],
    )
    def test_cleartext_beyond_loopback_refused(self, env: dict[str, str], setting: str) -> None:
        """http:// to any host but loopback is refused, naming the setting and the way out."""
        message = _message(env)
        assert message.startswith(setting + ":")
        assert "https://" in message
        assert "BROKER_ALLOW_CLEARTEXT_UPSTREAM" in message

    def test_cleartext_in_the_file_names_the_identity(self, tmp_path: Path) -> None:
        """In the TOML file the refusal names the identity's setting."""
        env = _toml(tmp_path, '[identities.main]\ncontrolplane_url = "http://cp.example"\n')
        message = _message(env)
        assert message.startswith("identities.main.controlplane_url:")
        assert "allow_cleartext_upstream" in message

    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8765/backend-api",
            "http://127.9.9.9/",
            "http://[::1]:8765/",
            "http://localhost:8765/",
            "http://LOCALHOST/",
            "https://cp.example/backend-api",
        ],
    )
    def test_loopback_and_https_need_nothing(self, url: str) -> None:
        """The emulator on loopback and any https:// URL are fine without the setting."""
        settings = load_settings({"BROKER_CONTROLPLANE_URL": url, "BROKER_JWKS_URL": url})
        assert settings.cleartext_upstreams == ()

    async def test_allowed_by_name_and_logged(
        self, start_broker: StartBroker, log_output: list[dict[str, Any]]
    ) -> None:
        """BROKER_ALLOW_CLEARTEXT_UPSTREAM admits it; start-up warns naming the settings affected."""
        await start_broker(
            env={
                "BROKER_CONTROLPLANE_URL": "http://cp.invalid/backend-api",
                "BROKER_JWKS_URL": "https://cp.invalid/jwks",
                "BROKER_ALLOW_CLEARTEXT_UPSTREAM": "true",
            }
        )
        (warning,) = _events(log_output, "upstream.cleartext_allowed")
        assert warning["log_level"] == "warning"
        assert warning["setting"] == "BROKER_ALLOW_CLEARTEXT_UPSTREAM"
        assert warning["url_settings"] == ["BROKER_CONTROLPLANE_URL"]


class TestAgentIdentityJwt:
    def test_value_in_the_environment_refused(self, tmp_path: Path) -> None:
        """BROKER_AGENT_IDENTITY_JWT is refused, saying why and naming the file setting."""
        message = _message(
            {"BROKER_IDENTITY_SOURCE": "jwt", "BROKER_AGENT_IDENTITY_JWT": "eyJhbGciOi.x.y"}
        )
        assert message.startswith("BROKER_AGENT_IDENTITY_JWT:")
        assert "private key" in message
        assert "BROKER_AGENT_IDENTITY_JWT_FILE" in message
        assert "eyJ" not in message

    def test_refused_whatever_the_source(self) -> None:
        """The value is refused even when the identity would not use it."""
        message = _message({"BROKER_AGENT_IDENTITY_JWT": "eyJhbGciOi.x.y"})
        assert message.startswith("BROKER_AGENT_IDENTITY_JWT:")

    def test_inline_in_the_file_refused(self, tmp_path: Path) -> None:
        """``jwt = "…"`` in an identity table is refused, pointing at jwt_file."""
        env = _toml(
            tmp_path,
            '[identities.main]\nsource = "jwt"\njwt = "eyJhbGciOi.x.y"\nprofile = "authapi"\n',
        )
        message = _message(env)
        assert message.startswith("identities.main.jwt:")
        assert "identities.main.jwt_file" in message

    def test_source_jwt_needs_the_file(self) -> None:
        """Source jwt without a file names the file setting."""
        message = _message({"BROKER_IDENTITY_SOURCE": "jwt"})
        assert "BROKER_AGENT_IDENTITY_JWT_FILE" in message

    def test_file_accepted(self, tmp_path: Path) -> None:
        """The file form still loads."""
        jwt_file = tmp_path / "agent.jwt"
        jwt_file.write_text("eyJhbGciOi.x.y\n")
        settings = load_settings(
            {"BROKER_IDENTITY_SOURCE": "jwt", "BROKER_AGENT_IDENTITY_JWT_FILE": str(jwt_file)}
        )
        assert settings.identity("default").source.jwt_file == jwt_file


class TestDuplicateCallers:
    def test_shared_token_hash_refused_naming_both(self, tmp_path: Path) -> None:
        """A plain caller and an admin with one token hash: refused, naming both callers."""
        digest = hash_token(WORKER)
        env = _toml(
            tmp_path,
            f'[callers.worker]\ntoken_sha256 = "{digest}"\n'
            f'[callers.ops]\ntoken_sha256 = "{digest.upper()}"\nadmin = true\n',
        )
        message = _message(env)
        assert "callers.worker" in message
        assert "callers.ops" in message
        assert digest not in message.lower()

    def test_shared_certificate_name_refused_naming_both(self, tmp_path: Path) -> None:
        """Two callers named by one certificate CN/SAN: refused, naming both."""
        env = _toml(
            tmp_path,
            '[callers.worker]\ncert_names = ["w.example"]\n'
            '[callers.ops]\ncert_names = ["ops.example", "w.example"]\nadmin = true\n',
        )
        message = _message(env)
        assert "callers.worker" in message
        assert "callers.ops" in message
        assert "w.example" in message

    async def test_distinct_tokens_keep_their_own_rights(
        self, start_broker: StartBroker, tmp_path: Path
    ) -> None:
        """The refused configuration's fix (one token per caller) serves each with its own rights."""
        env = _toml(
            tmp_path,
            f'[callers.worker]\ntoken_sha256 = "{hash_token(WORKER)}"\n'
            f'[callers.ops]\ntoken_sha256 = "{hash_token(WORKER + "-ops")}"\nadmin = true\n',
        )
        broker = await start_broker(env=env)
        admin = apb_grpc.CredentialBrokerAdminStub(broker.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.ListIdentities(
                apb.ListIdentitiesRequest(), metadata=(("authorization", f"Bearer {WORKER}"),)
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


class TestOpsListener:
    def test_port_alone_binds_loopback(self) -> None:
        """BROKER_OPS_LISTEN=PORT means 127.0.0.1:PORT; another interface must be named."""
        assert load_settings({"BROKER_OPS_LISTEN": "9090"}).ops_listen == "127.0.0.1:9090"
        assert load_settings({"BROKER_OPS_LISTEN": "0.0.0.0:9090"}).ops_listen == "0.0.0.0:9090"
        assert load_settings({}).ops_listen is None

    async def test_real_listener_is_on_loopback(
        self, start_broker: StartBroker, log_output: list[dict[str, Any]]
    ) -> None:
        """A broker given only a port serves /healthz on 127.0.0.1 at that port."""
        port = free_port()
        await start_broker(env={"BROKER_OPS_LISTEN": str(port)})
        (started,) = _events(log_output, "broker.started")
        assert started["ops_listen"] == f"127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200
