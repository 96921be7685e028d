"""Where log lines come from: files followed like ``tail -F``, and a pipe (stdin).

Both hand out :class:`Chunk` s: complete lines, and, when a file is rotated or truncated or the pipe
ends in the middle of a line, the unterminated rest marked as partial. Reads are bounded per poll
(:data:`READ_LIMIT`), so one huge file never starves the others or the screen.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from broker.dashboard.lines import MAX_LINE_CHARS

READ_LIMIT: Final = 1 << 20
"""Bytes read from one source per poll."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One line of text; ``complete`` is false for an unterminated rest."""

    text: str
    complete: bool = True


class _LineBuffer:
    def __init__(self) -> None:
        self._pending = b""

    def push(self, data: bytes) -> list[Chunk]:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        chunks = [Chunk(line.decode("utf-8", errors="replace")) for line in lines]
        if len(self._pending) > MAX_LINE_CHARS:
            # A line that never ends: hand it on (it is skipped as too long) instead of growing.
            chunks.append(Chunk(self._pending.decode("utf-8", errors="replace"), complete=False))
            self._pending = b""
        return chunks

    def flush(self) -> list[Chunk]:
        rest, self._pending = self._pending, b""
        return [Chunk(rest.decode("utf-8", errors="replace"), complete=False)] if rest else []


class FileFollower:
    """Follows one path like ``tail -F``: waits for it to exist, survives rotation and truncation.

    Rotation (another file now at the path) is noticed by its inode: the old file is read to its
    end first, then the new one from its start. Truncation (the file got shorter than what was read)
    restarts at its beginning.

    Args:
        path: the file.
        label: the replica its unprefixed lines are attributed to.
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path: Final = path
        self.label: Final = label
        self.problem: str | None = None
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._buffer = _LineBuffer()

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115  (kept open across polls; closed in close())
        except OSError as exc:
            self.problem = exc.strerror or type(exc).__name__
            return False
        stat = os.fstat(handle.fileno())
        self._file, self._identity, self.problem = handle, (stat.st_dev, stat.st_ino), None
        return True

    def _read(self, handle: BinaryIO, limit: int) -> list[Chunk]:
        return self._buffer.push(handle.read(limit))

    def poll(self, limit: int = READ_LIMIT) -> list[Chunk]:
        """The lines written since the last poll (at most about ``limit`` bytes of them)."""
        if self._file is None and not self._open():
            return []
        handle = self._file
        assert handle is not None  # noqa: S101  (opened above)
        if os.fstat(handle.fileno()).st_size < handle.tell():
            handle.seek(0)  # truncated in place: what is there now is new
            chunks = self._buffer.flush()
        else:
            chunks = []
        chunks += self._read(handle, limit)
        if len(chunks) or handle.tell() < os.fstat(handle.fileno()).st_size:
            return chunks
        if self._rotated():
            chunks += self._buffer.push(handle.read()) + self._buffer.flush()
            self.close()
            if self._open():
                assert self._file is not None  # noqa: S101  (opened just now)
                chunks += self._read(self._file, limit)
        return chunks

    def _rotated(self) -> bool:
        try:
            stat = os.stat(self.path)
        except OSError:
            return False  # moved away and not yet replaced: keep reading the old file
        return (stat.st_dev, stat.st_ino) != self._identity

    def drain(self) -> Iterator[list[Chunk]]:
        """Everything up to the current end in bounded blocks, the unterminated rest last.

        For ``--once``; when the file cannot be opened it yields nothing and sets :attr:`problem`.
        """
        if self._file is None and not self._open():
            return
        assert self._file is not None  # noqa: S101  (opened above)
        while block := self._file.read(READ_LIMIT):
            yield self._buffer.push(block)
        yield self._buffer.flush()

    def close(self) -> None:
        """Let go of the open file (a later poll reopens the path)."""
        if self._file is not None:
            self._file.close()
        self._file, self._identity = None, None


class PipeReader:
    """Reads a pipe or terminal (stdin) without blocking the screen.

    Args:
        fd: the file descriptor.
        label: the replica its unprefixed lines are attributed to.
    """

    def __init__(self, fd: int, label: str) -> None:
        self.fd: Final = fd
        self.label: Final = label
        self.closed = False
        self._buffer = _LineBuffer()

    def poll(self, timeout: float | None = 0.0, limit: int = READ_LIMIT) -> list[Chunk]:
        """The lines available within ``timeout`` seconds (``None``: until some arrive).

        At end of input the unterminated rest, if any, comes as a partial chunk.
        """
        if self.closed:
            return []
        chunks: list[Chunk] = []
        while sum(len(c.text) for c in chunks) < limit:
            readable, _, _ = select.select([self.fd], [], [], timeout)
            if not readable:
                break
            data = os.read(self.fd, 65536)
            if not data:
                self.closed = True
                return chunks + self._buffer.flush()
            chunks += self._buffer.push(data)
            timeout = 0.0
        return chunks

    def drain(self) -> list[Chunk]:
        """Everything until end of input (blocks; for ``--once``)."""
        chunks: list[Chunk] = []
        while not self.closed:
            chunks += self.poll(timeout=None)
        return chunks
