"""The production wheel: the broker alone, without the emulator, and rich only behind its extra.

The wheel is built from a copy of what the image build copies (``deploy/Dockerfile``: the project
file, the README and ``broker/``) plus ``emulator/`` beside it, so a package discovery that reached
into the emulator's tree would show here too. The copy keeps build artefacts out of the work tree.
"""

from __future__ import annotations

import ast
import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("pyproject.toml", "README.md", "broker", "emulator")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


@pytest.fixture(name="wheel", scope="module")
def fixture_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    tree = tmp_path_factory.mktemp("source")
    for name in _SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    build = ("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out))
    subprocess.run(
        [sys.executable, "-m", "pip", *build, str(tree)], check=True, capture_output=True
    )
    [built] = out.glob("credential_broker-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def test_the_wheel_holds_the_broker_and_no_emulator(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert "broker/app.py" in names
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"broker"}
    assert [name for name in names if "emulator" in name] == []


def test_the_wheel_installs_no_emulator_command(wheel: zipfile.ZipFile) -> None:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    commands = wheel.read(name).decode()
    assert "credential-broker = broker.cli:main" in commands
    assert "emulator" not in commands


def test_rich_is_required_only_by_the_dashboard_extra(wheel: zipfile.ZipFile) -> None:
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    assert requires, "the wheel declares no dependency at all"
    named: dict[str, list[str]] = {}
    for spec in requires:
        match = _NAME.match(spec)
        assert match, spec
        named.setdefault(match.group(0).lower(), []).append(spec)
    assert "credential-broker-emulator" not in named
    assert named["rich"], "the dashboard extra lost rich"
    for spec in named["rich"]:
        assert re.search(r"""extra\s*==\s*["']dashboard["']""", spec), spec
    assert "dashboard" in (_metadata(wheel).get_all("Provides-Extra") or [])


def test_the_broker_imports_the_emulator_only_in_dev_mode() -> None:
    """No module of broker/ imports the emulator, but dev mode inside its functions."""
    found = []
    for path in sorted((ROOT / "broker").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] == "cb_emulator" for name in names):
                found.append((path.relative_to(ROOT).as_posix(), node in top_level))
    assert found, "dev mode no longer imports the emulator: update this test"
    assert {where for where, _ in found} == {"broker/devmode.py"}
    assert not any(at_top for _, at_top in found)


_WITHOUT = """
import sys
sys.modules[{module!r}] = None
from broker.cli import main
raise SystemExit(main({argv!r}))
"""


def _run_without(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    script = _WITHOUT.format(module=module, argv=argv)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        input="",
        timeout=60,
        check=False,
    )


def test_dev_mode_without_the_emulator_says_what_to_install() -> None:
    done = _run_without("cb_emulator", ["dev", "--listen", "127.0.0.1:0"])
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "EMULATOR_NOT_INSTALLED" in line
    assert "credential-broker-emulator" in line


def test_the_dashboard_without_rich_names_the_extra() -> None:
    done = _run_without("rich", ["dashboard", "--once"])
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "credential-broker[dashboard]" in line
