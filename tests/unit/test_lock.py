"""The committed lock is complete, hashed, and what the image installs is what the tests ran on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK = ROOT / "requirements" / "dev.txt"
IMAGE_LOCK = ROOT / "requirements" / "broker.txt"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;.*?)?\s*\\?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every requirement of ``lock``."""
    found: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonical(match.group(1))
            found[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{lock.name}: a line that is neither a pin nor a hash: {line!r}")
    return found


def requirement_names(specs: list[str]) -> set[str]:
    names = set()
    for spec in specs:
        match = _NAME.match(spec)
        assert match, spec
        names.add(canonical(match.group(0)))
    return names


@pytest.mark.parametrize("lock", [DEV_LOCK, IMAGE_LOCK], ids=lambda path: path.name)
def test_every_pin_carries_hashes(lock: Path) -> None:
    found = pins(lock)
    assert found
    unhashed = sorted(name for name, (_, hashes) in found.items() if hashes == 0)
    assert unhashed == []


def test_the_image_runs_the_versions_the_tests_ran() -> None:
    dev, image = pins(DEV_LOCK), pins(IMAGE_LOCK)
    differing = {
        name: (version, dev.get(name, ("missing", 0))[0])
        for name, (version, _) in image.items()
        if dev.get(name, ("missing", 0))[0] != version
    }
    assert differing == {}


def test_every_declared_dependency_is_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    runtime = requirement_names(project["dependencies"])
    development = runtime | requirement_names(project["optional-dependencies"]["dev"])
    development |= requirement_names(client["dependencies"])
    development |= requirement_names(client["optional-dependencies"]["dev"])
    assert runtime - set(pins(IMAGE_LOCK)) == set()
    assert development - set(pins(DEV_LOCK)) == set()


def test_the_image_is_pinned_and_installs_the_lock() -> None:
    recipe = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", recipe, re.MULTILINE)
    assert bases
    assert all(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", base) for base in bases), bases
    assert "--require-hashes --no-deps -r requirements/broker.txt" in recipe
    assert re.search(r"pip install [^\n]*--no-deps --no-build-isolation \.", recipe)
