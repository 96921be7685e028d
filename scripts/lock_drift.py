"""Say how an environment differs from the lock: `make test-latest` prints this before its checks.

    python scripts/lock_drift.py requirements/dev.txt .venv-latest/bin/python

Each package pinned in the lock whose installed version differs is listed as `name locked -> now`,
then packages installed that the lock does not name. The exit code is 0 either way: drift is
information for the day we choose to run `make lock UPGRADE=1`, not a failure in itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """PEP 503 normalised name, so `PyNaCl` and `pynacl` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed_versions(python: str) -> dict[str, str]:
    listing = subprocess.run(  # noqa: S603  (our own venv's interpreter, fixed arguments)
        [python, "-m", "pip", "list", "--format", "json", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {canonical(item["name"]): item["version"] for item in json.loads(listing)}


def drift(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    lines = [
        f"  {name} {version} -> {installed[name]}"
        for name, version in sorted(locked.items())
        if name in installed and installed[name] != version
    ]
    lines += [
        f"  {name} (not in the lock) {version}"
        for name, version in sorted(installed.items())
        if name not in locked and name != "pip"
    ]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)  # noqa: T201
        return 2
    lines = drift(locked_versions(Path(argv[0])), installed_versions(argv[1]))
    if lines:
        print(f"drift from {argv[0]}: {len(lines)} package(s)")  # noqa: T201
        print("\n".join(lines))  # noqa: T201
    else:
        print(f"no drift: the newest allowed releases are the ones {argv[0]} pins")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
