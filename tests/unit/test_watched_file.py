"""Watched files: shared first read, change detection, missing files (token files, JWTs)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from broker.adapters.bearer import TokenFileBearer
from broker.adapters.watched_file import WatchedFile
from tests.conftest import ManualClock


class TestWatchedFile:
    async def test_concurrent_first_reads_share_one_look(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """Callers arriving during the first read all get the content, never a stale None."""
        path = tmp_path / "token"
        path.write_text("tok-123\n")
        bearer = TokenFileBearer(path, clock)
        tokens = await asyncio.gather(*(bearer.token() for _ in range(20)))
        assert {t.reveal() if t else None for t in tokens} == {"tok-123"}

    async def test_change_seen_after_recheck(self, tmp_path: Path, clock: ManualClock) -> None:
        """A rewritten file is seen once the re-check interval passed, not before."""
        path = tmp_path / "value"
        path.write_text("one")
        watched = WatchedFile(path, clock, recheck_seconds=1.0)
        first = await watched.read()
        assert first.text is not None
        assert (first.text.reveal(), first.changed) == ("one", True)
        replacement = tmp_path / "value.new"
        replacement.write_text("two")
        os.replace(replacement, path)  # rename into place: a new inode
        assert (await watched.read()).changed is False
        clock.advance(1.0)
        second = await watched.read()
        assert second.text is not None
        assert (second.text.reveal(), second.changed) == ("two", True)
        clock.advance(1.0)
        assert (await watched.read()).changed is False

    async def test_missing_and_oversized(self, tmp_path: Path, clock: ManualClock) -> None:
        """A missing or oversized file gives no text and says why."""
        missing = await WatchedFile(tmp_path / "nope", clock).read()
        assert (missing.text, missing.changed) == (None, True)
        assert missing.error
        big = tmp_path / "big"
        big.write_text("x" * 20)
        oversized = await WatchedFile(big, clock, max_bytes=10).read()
        assert oversized.text is None
        assert "larger than 10 bytes" in (oversized.error or "")
