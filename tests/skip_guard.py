"""A skipped test fails the run unless ``tests/allowed-skips.txt`` lists it with a reason.

A skip is a test that did not run, and a test that did not run guards nothing: a skip taken
because a feature went missing (a refused URL form, an absent tool) leaves the suite green while
the behaviour it guarded is gone. So every skip must be a decision written down in one place.

The allow-list holds one entry a line, ``<node id pattern> | <reason>``: the pattern is an
``fnmatch`` glob over the test's node id, the reason says why skipping there is right. Blank lines
and ``#`` comments are ignored; an entry without a reason is a usage error.

Loaded by ``tests/conftest.py`` for the broker's suite and with ``-p skip_guard`` for the Python
client's (``make clients-test``), so both read the same list.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOW_LIST = Path(__file__).with_name("allowed-skips.txt")


@dataclass(frozen=True, slots=True)
class Allowed:
    pattern: str
    reason: str


def read_allow_list(path: Path = ALLOW_LIST) -> list[Allowed]:
    """The entries of ``path``; a line with no reason raises ``pytest.UsageError``."""
    entries: list[Allowed] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = (part.strip() for part in line.partition("|"))
        if not pattern or not reason:
            raise pytest.UsageError(
                f"{path}:{number}: an allowed skip is '<node id pattern> | <reason>', got {raw!r}"
            )
        entries.append(Allowed(pattern, reason))
    return entries


class SkipGuard:
    """Collects the skips that no allow-list entry covers, and fails the session on them."""

    def __init__(self, allowed: list[Allowed]) -> None:
        self._allowed = allowed
        self.unlisted: list[tuple[str, str]] = []

    def _listed(self, nodeid: str) -> bool:
        return any(fnmatch.fnmatchcase(nodeid, entry.pattern) for entry in self._allowed)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # An xfail is reported as "skipped" with `wasxfail`; xfail_strict governs those.
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if self._listed(report.nodeid):
            return
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        self.unlisted.append((report.nodeid, reason.removeprefix("Skipped: ")))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unlisted and session.exitstatus in (pytest.ExitCode.OK, 0):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unlisted:
            return
        terminalreporter.section("skips not in tests/allowed-skips.txt", sep="=", red=True)
        for nodeid, reason in self.unlisted:
            terminalreporter.line(f"{nodeid}: {reason}", red=True)
        terminalreporter.line(
            f"{len(self.unlisted)} unlisted skip(s) fail this run: make the test run, "
            "or list it with the reason skipping is right"
        )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(read_allow_list()), "skip-guard")
