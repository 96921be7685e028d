"""The skip guard fails a run on a skip that tests/allowed-skips.txt does not list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_guard import ALLOW_LIST, read_allow_list

TESTS_DIR = Path(__file__).resolve().parents[1]

_SUITE = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("a feature went missing")
"""


def run_guarded(tmp_path: Path, allow_list: str | None) -> subprocess.CompletedProcess[str]:
    """Run a two-test suite (one skip) in a child pytest with the guard loaded."""
    (tmp_path / "test_sample.py").write_text(_SUITE)
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    args = [sys.executable, "-m", "pytest", "-p", "skip_guard", "-q", "-p", "no:cacheprovider"]
    if allow_list is not None:
        listed = tmp_path / "allowed.txt"
        listed.write_text(allow_list)
        # the guard reads the list beside its own module; point a copy of it at this list
        guard = tmp_path / "guard_copy"
        guard.mkdir()
        source = (TESTS_DIR / "skip_guard.py").read_text()
        (guard / "skip_guard.py").write_text(source)
        (guard / "allowed-skips.txt").write_text(allow_list)
        env["PYTHONPATH"] = str(guard)
    return subprocess.run(
        [*args, "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_an_unlisted_skip_fails_the_run(tmp_path: Path) -> None:
    result = run_guarded(tmp_path, allow_list="# nothing is allowed\n")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "skips not in tests/allowed-skips.txt" in result.stdout
    assert "test_sample.py::test_skips: a feature went missing" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout


def test_a_listed_skip_passes(tmp_path: Path) -> None:
    result = run_guarded(tmp_path, allow_list="*::test_skips | decided on purpose\n")
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert "unlisted" not in result.stdout


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    result = run_guarded(tmp_path, allow_list="*::test_skips\n")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "an allowed skip is '<node id pattern> | <reason>'" in result.stderr


def test_the_repository_list_is_well_formed() -> None:
    entries = read_allow_list(ALLOW_LIST)
    assert entries, "the allow-list holds at least the shared-vectors entry"
    assert all(entry.reason for entry in entries)
