"""A small file the broker re-reads when it changes (token files, JWTs, identity records).

The file is looked at no more than once per ``recheck_seconds``; it is read again only when its
inode, size or mtime changed, so a rename-into-place rotation is seen as well as an in-place write.
Concurrent callers share one look: none of them sees a stale value from a read still in flight.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from broker.core.credentials.ports import Clock
from broker.secret import Secret

_NOT_READ: Final = (-1, -1, -1)


@dataclass(frozen=True, slots=True)
class FileState:
    """What the file holds now.

    Attributes:
        text: its stripped content, or ``None`` when it is missing, unreadable or too large.
        error: why ``text`` is ``None``.
        changed: whether this differs from what the previous :meth:`WatchedFile.read` saw.
    """

    text: Secret | None
    error: str | None
    changed: bool


class WatchedFile:
    """The stripped text of ``path``, re-read when the file changes."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        recheck_seconds: float = 1.0,
        max_bytes: int = 256 * 1024,
    ) -> None:
        """Args:
        path: the file.
        clock: for the re-check interval.
        recheck_seconds: how often the file's metadata is compared.
        max_bytes: a larger file is refused (``text`` is ``None``).
        """
        self.path = path
        self._clock = clock
        self._recheck = recheck_seconds
        self._max_bytes = max_bytes
        self._checked_at: float | None = None
        self._signature = _NOT_READ
        self._text: Secret | None = None
        self._error: str | None = None
        self._reading = asyncio.Lock()

    def expire(self) -> None:
        """Look at the file again at the next :meth:`read`, whatever the interval says."""
        self._checked_at = None

    async def read(self) -> FileState:
        """The file's current state (see :class:`FileState`)."""
        if self._fresh():
            return FileState(self._text, self._error, changed=False)
        async with self._reading:
            if self._fresh():
                return FileState(self._text, self._error, changed=False)
            changed = await asyncio.to_thread(self._refresh)
            self._checked_at = self._clock.monotonic()
            return FileState(self._text, self._error, changed)

    def _fresh(self) -> bool:
        return (
            self._checked_at is not None
            and self._clock.monotonic() - self._checked_at < self._recheck
        )

    def _refresh(self) -> bool:
        try:
            stat = os.stat(self.path)
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if signature == self._signature:
                return False
            with open(self.path, "rb") as handle:
                raw = handle.read(self._max_bytes + 1)
        except OSError as exc:
            return self._settle(_NOT_READ, None, exc.strerror or type(exc).__name__)
        if len(raw) > self._max_bytes:
            return self._settle(signature, None, f"larger than {self._max_bytes} bytes")
        text = Secret(raw.decode("utf-8", errors="replace").strip())
        return self._settle(signature, text, None)

    def _settle(
        self, signature: tuple[int, int, int], text: Secret | None, error: str | None
    ) -> bool:
        changed = (text, error) != (self._text, self._error) or signature != self._signature
        self._signature, self._text, self._error = signature, text, error
        return changed
