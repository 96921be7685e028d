"""The committed lock is complete, hashed, and what the image installs is what the tests ran on.

The image's lock (requirements/broker.txt) holds what the broker runs and nothing else: not the
dashboard's screen (the ``dashboard`` extra) and not the control-plane emulator's dependencies
(``emulator/``, a development package), which the development lock holds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK = ROOT / "requirements" / "dev.txt"
IMAGE_LOCK = ROOT / "requirements" / "broker.txt"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BROKER_PROJECT = ROOT / "pyproject.toml"
CLIENT_PROJECT = ROOT / "clients" / "python" / "pyproject.toml"
EMULATOR_PROJECT = ROOT / "emulator" / "pyproject.toml"
# How a lock names the input that asked for a package (its `# via` lines).
BROKER_INPUT = "credential-broker (pyproject.toml)"
BUILD_INPUT = "-r requirements/build.in"
EMULATOR_INPUT = "credential-broker-emulator (emulator/pyproject.toml)"

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


def via(lock: Path) -> dict[str, set[str]]:
    """name -> what brought it into ``lock``: packages (canonical names) and inputs, verbatim."""
    found: dict[str, set[str]] = {}
    current: str | None = None
    listing = False
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonical(match.group(1))
            found[current] = set()
            listing = False
            continue
        if current is None or not line.startswith("    #"):
            continue  # a requirement's annotations are indented; the file's own notes are not
        text = line.strip().removeprefix("#").strip()
        if text == "via":
            listing = True
        elif text.startswith("via "):
            found[current].add(_reference(text.removeprefix("via ")))
        elif listing and text:
            found[current].add(_reference(text))
    return found


def _reference(text: str) -> str:
    return text if text.startswith("-") or "(" in text else canonical(text)


def needed(lock: Path, inputs: set[str]) -> set[str]:
    """The packages of ``lock`` that ``inputs`` bring in, directly or through one another."""
    sources = via(lock)
    reached: set[str] = set()
    while True:
        more = {name for name, by in sources.items() if by & (inputs | reached)} - reached
        if not more:
            return reached
        reached |= more


def only_through(lock: Path, start: set[str]) -> set[str]:
    """The packages of ``lock`` that nothing but ``start`` (and what only it brings in) asks for."""
    sources = via(lock)
    only = set(start)
    while True:
        more = {name for name, by in sources.items() if by and by <= only} - only
        if not more:
            return only
        only |= more


def project(path: Path) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads(path.read_text())["project"]
    return table


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
    broker, client, emulator = (
        project(path) for path in (BROKER_PROJECT, CLIENT_PROJECT, EMULATOR_PROJECT)
    )
    runtime = requirement_names(broker["dependencies"])
    development = runtime | requirement_names(broker["optional-dependencies"]["dev"])
    development |= requirement_names(broker["optional-dependencies"]["dashboard"])
    development |= requirement_names(client["dependencies"])
    development |= requirement_names(client["optional-dependencies"]["dev"])
    # the emulator's own dependencies; the broker it requires is this repository's, not a pin
    development |= requirement_names(emulator["dependencies"]) - {canonical(broker["name"])}
    assert runtime - set(pins(IMAGE_LOCK)) == set()
    assert development - set(pins(DEV_LOCK)) == set()


def test_no_lock_pins_a_package_of_this_repository() -> None:
    """The broker, the client and the emulator are installed from the tree, never from an index."""
    ours = {
        canonical(project(path)["name"])
        for path in (BROKER_PROJECT, CLIENT_PROJECT, EMULATOR_PROJECT)
    }
    assert ours & set(pins(DEV_LOCK)) == set()
    assert ours & set(pins(IMAGE_LOCK)) == set()


def test_the_dashboard_screen_is_an_extra() -> None:
    broker = project(BROKER_PROJECT)
    assert "rich" not in requirement_names(broker["dependencies"])
    assert "rich" in requirement_names(broker["optional-dependencies"]["dashboard"])
    assert "rich" in pins(DEV_LOCK)  # the tests draw the screen


def test_the_image_lock_holds_only_what_the_broker_runs() -> None:
    """Every package of the image's lock is there for the broker's runtime dependencies."""
    image = set(pins(IMAGE_LOCK))
    assert image - needed(IMAGE_LOCK, {BROKER_INPUT, BUILD_INPUT}) == set()
    assert "emulator" not in IMAGE_LOCK.read_text()


def test_the_image_lock_holds_no_dashboard_or_emulator_package() -> None:
    """Not rich nor what only rich needs; nothing that only the emulator needs."""
    dashboard = requirement_names(project(BROKER_PROJECT)["optional-dependencies"]["dashboard"])
    dashboard_only = only_through(DEV_LOCK, dashboard) & set(pins(DEV_LOCK))
    emulator_only = only_through(DEV_LOCK, {EMULATOR_INPUT}) - {EMULATOR_INPUT}
    assert "rich" in dashboard_only
    assert needed(DEV_LOCK, {EMULATOR_INPUT}), "the dev lock names no emulator dependency"
    image = set(pins(IMAGE_LOCK))
    assert image & dashboard_only == set()
    assert image & emulator_only == set()


def test_the_image_is_pinned_and_installs_the_lock() -> None:
    recipe = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", recipe, re.MULTILINE)
    assert bases
    assert all(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", base) for base in bases), bases
    assert "--require-hashes --no-deps -r requirements/broker.txt" in recipe
    assert re.search(r"pip install [^\n]*--no-deps --no-build-isolation \.", recipe)


def test_the_image_installs_no_emulator() -> None:
    """The image copies and installs the broker alone; the emulator is a development package."""
    recipe = DOCKERFILE.read_text()
    assert "emulator" not in recipe
    assert "[dashboard]" not in recipe
