"""Secrets at rest on the host: KEK files written 0600, exposed secret files reported, no core dumps.

``credential-broker kek generate --out FILE`` creates the file exclusively with mode 0600 whatever
the umask, refuses an existing path (a symlink included) unless ``--force``, and ``--force`` replaces
the path itself, never a symlink's target. A real ``credential-broker serve`` reports each secret file
that group or others can read (``file.exposed``), and runs with core dumps off
(``RLIMIT_CORE`` 0 and, on Linux, not dumpable), which it reports as ``process.hardened``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from broker.adapters.sealing import generate_kek_line, load_kek_file
from broker.catalog import problems
from broker.config import load_settings
from tests.fixtures.fleet import StartFleet

pytestmark = pytest.mark.integration

_SUBPROCESS_S = 60.0


def _cli(
    *args: str, umask: int = 0o022, stdout: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m broker ARGS`` under ``umask``, its output captured (or stdout to a descriptor)."""
    launcher = f"import os, runpy, sys; os.umask({umask}); sys.argv[0] = 'broker'; " + (
        "runpy.run_module('broker', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", launcher, *args],
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=_SUBPROCESS_S,
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class TestKekGenerateOut:
    @pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
    def test_writes_a_private_file(self, tmp_path: Path, umask: int) -> None:
        """The file is 0600 whatever the umask, holds a usable KEK, and no key goes to stdout."""
        path = tmp_path / "kek"
        result = _cli("kek", "generate", "--out", str(path), umask=umask)
        assert result.returncode == 0, result.stderr
        assert _mode(path) == 0o600
        assert result.stdout == ""
        assert len(load_kek_file(path).key_ids) == 1

    def test_refuses_an_existing_file(self, tmp_path: Path) -> None:
        """An existing file is left alone, and the message says how to replace it."""
        path = tmp_path / "kek"
        path.write_text("precious\n")
        result = _cli("kek", "generate", "--out", str(path))
        assert result.returncode == 1
        assert "--force" in result.stderr
        assert str(path) in result.stderr
        assert path.read_text() == "precious\n"

    def test_refuses_a_symlink(self, tmp_path: Path) -> None:
        """A symlink planted at the path is refused, and its target is not written."""
        target = tmp_path / "elsewhere"
        target.write_text("not yours\n")
        path = tmp_path / "kek"
        path.symlink_to(target)
        result = _cli("kek", "generate", "--out", str(path))
        assert result.returncode == 1
        assert target.read_text() == "not yours\n"

    def test_force_replaces_the_path_not_a_target(self, tmp_path: Path) -> None:
        """``--force`` replaces a readable file with a 0600 one, and a symlink by a file."""
        readable = tmp_path / "kek"
        readable.write_text(generate_kek_line() + "\n")
        readable.chmod(0o644)
        old = readable.read_text()
        assert _cli("kek", "generate", "--out", str(readable), "--force").returncode == 0
        assert _mode(readable) == 0o600
        assert readable.read_text() != old
        target = tmp_path / "elsewhere"
        target.write_text("not yours\n")
        link = tmp_path / "kek-link"
        link.symlink_to(target)
        assert _cli("kek", "generate", "--out", str(link), "--force").returncode == 0
        assert not link.is_symlink()
        assert _mode(link) == 0o600
        assert target.read_text() == "not yours\n"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kek")]

    def test_force_needs_out(self, tmp_path: Path) -> None:
        """``--force`` alone is a usage error, not a silent no-op."""
        result = _cli("kek", "generate", "--force")
        assert result.returncode == 2
        assert "--out" in result.stderr

    def test_redirect_to_a_readable_file_is_flagged(self, tmp_path: Path) -> None:
        """``kek generate > kek`` into a file others can read says so on stderr."""
        path = tmp_path / "kek"
        with path.open("w") as out:
            os.chmod(path, 0o644)
            result = _cli("kek", "generate", stdout=out.fileno())
        assert result.returncode == 0
        assert "readable by group or others" in result.stderr
        assert "--out" in result.stderr
        assert len(load_kek_file(path).key_ids) == 1


class TestSecretFileSettings:
    def test_every_secret_file_is_listed(self, tmp_path: Path) -> None:
        """KEK, bearer token, JWT, import, account and TLS key files are the files checked."""
        from broker.hardening import secret_files

        files = {name: tmp_path / name for name in ("kek", "token", "jwt", "login", "cert", "key")}
        for path in files.values():
            path.write_text("x\n")
        settings = load_settings(
            {
                "BROKER_KEK_FILE": str(files["kek"]),
                "BROKER_BEARER_TOKEN_FILE": str(files["token"]),
                "BROKER_IDENTITY_SOURCE": "jwt",
                "BROKER_AGENT_IDENTITY_JWT_FILE": str(files["jwt"]),
                "BROKER_ACCOUNT_SOURCE": "login",
                "BROKER_ACCOUNT_FILE": str(files["login"]),
                "BROKER_OAUTH_CLIENT_ID": "client",
                "BROKER_TLS_CERT_FILE": str(files["cert"]),
                "BROKER_TLS_KEY_FILE": str(files["key"]),
            }
        )
        listed = {path for _setting, path in secret_files(settings)}
        assert listed == {files[n] for n in ("kek", "token", "jwt", "login", "key")}


def _limits(pid: int) -> str:
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return next(line for line in lines if line.startswith("Max core file size"))


class TestServe:
    async def test_exposed_files_are_reported(
        self, start_fleet: StartFleet, redis_url: str, tmp_path: Path
    ) -> None:
        """A group- or world-readable KEK or token file is one warning each; a 0600 one is not."""
        kek = tmp_path / "kek"
        kek.write_text(generate_kek_line() + "\n")
        kek.chmod(0o644)
        token = tmp_path / "token"
        token.write_text("dev-access-token\n")
        token.chmod(0o640)
        fleet = await start_fleet(
            redis_url=redis_url,
            identity="t" + uuid.uuid4().hex,
            replicas=1,
            env={"BROKER_KEK_FILE": str(kek), "BROKER_BEARER_TOKEN_FILE": str(token)},
        )
        exposed = {e["path"]: e for e in fleet[0].events("file.exposed")}
        assert set(exposed) == {str(kek), str(token)}
        assert exposed[str(kek)]["mode"] == "0644"
        assert exposed[str(kek)]["setting"] == "kek_file"
        assert exposed[str(token)]["mode"] == "0640"
        assert exposed[str(token)]["level"] == "warning"
        assert "chmod 600" in exposed[str(token)]["detail"]
        assert [p for e in exposed.values() for p in problems(e)] == []

    async def test_private_files_are_quiet_and_core_dumps_off(
        self, start_fleet: StartFleet, redis_url: str
    ) -> None:
        """With 0600 files nothing is reported, and the process can write no core dump."""
        fleet = await start_fleet(redis_url=redis_url, identity="t" + uuid.uuid4().hex, replicas=1)
        replica = fleet[0]
        assert replica.events("file.exposed") == []
        assert _limits(replica.pid).split()[-3:] == ["0", "0", "bytes"]
        (hardened,) = replica.events("process.hardened")
        assert hardened["core_dumps"] is False
        assert hardened["dumpable"] is False
        assert hardened["level"] == "info"
        assert problems(hardened) == []


class TestCoreDumps:
    def test_process_is_not_dumpable(self) -> None:
        """After ``disable_core_dumps()`` the core limit is 0 and prctl says not dumpable."""
        script = (
            "import ctypes, resource\n"
            "from broker.hardening import disable_core_dumps\n"
            "state = disable_core_dumps()\n"
            "print(resource.getrlimit(resource.RLIMIT_CORE), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),"
            " state.core_dumps, state.dumpable)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_S,
            check=True,
        )
        assert result.stdout.split() == ["(0,", "0)", "0", "False", "False"]
