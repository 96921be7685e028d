"""Where the account's OAuth access token comes from (the :class:`BearerSource` port).

The broker does not refresh the token itself (yet): an external refresher rewrites the token file and
the broker notices within ``recheck_seconds`` (it compares the file's identity, size and mtime, so a
rename-into-place rotation is seen as well as an in-place write).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

from broker.core.credentials.ports import Clock
from broker.events import Event
from broker.secrets import Secret

log = structlog.get_logger("broker.bearer")

# A token file larger than this is not a token.
_MAX_TOKEN_BYTES = 64 * 1024


class StaticBearer:
    """A fixed token (tests, the dev command); ``None`` means the account has none."""

    def __init__(self, token: str | None) -> None:
        self._token = Secret(token) if token else None

    async def token(self) -> Secret | None:
        """The token."""
        return self._token

    async def rejected(self, token: Secret) -> None:
        """Nothing to do: a fixed token cannot change."""


class TokenFileBearer:
    """The token is the stripped content of a file, re-read when the file changes."""

    def __init__(self, path: Path, clock: Clock, *, recheck_seconds: float = 1.0) -> None:
        """Args:
        path: the token file (mode 0600 recommended).
        clock: for the re-check interval.
        recheck_seconds: how often the file's metadata is compared.
        """
        self._path = path
        self._clock = clock
        self._recheck = recheck_seconds
        self._checked_at: float | None = None
        self._signature: tuple[int, int, int] | None = None
        self._token: Secret | None = None
        self._reading = asyncio.Lock()

    async def token(self) -> Secret | None:
        """The current token, or ``None`` when the file is missing, empty or unreadable.

        Concurrent callers share one read: the first waits for the file, the others wait for it
        (never a stale ``None`` from a read still in flight).
        """
        if self._fresh():
            return self._token
        async with self._reading:
            if not self._fresh():
                await asyncio.to_thread(self._refresh)
                self._checked_at = self._clock.monotonic()
        return self._token

    def _fresh(self) -> bool:
        return (
            self._checked_at is not None
            and self._clock.monotonic() - self._checked_at < self._recheck
        )

    async def rejected(self, token: Secret) -> None:
        """Look at the file again now: an external refresher may have rewritten it."""
        self._checked_at = None
        await self.token()

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            if self._token is not None or self._signature is None:
                log.warning(
                    Event.BEARER_RELOADED, path=str(self._path), has_token=False, error=exc.strerror
                )
            self._token, self._signature = None, (0, 0, 0)
            return
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._signature:
            return
        try:
            with open(self._path, "rb") as handle:
                raw = handle.read(_MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            log.warning(
                Event.BEARER_RELOADED, path=str(self._path), has_token=False, error=exc.strerror
            )
            self._token, self._signature = None, signature
            return
        text = raw.decode("utf-8", errors="replace").strip() if len(raw) <= _MAX_TOKEN_BYTES else ""
        text = text.removeprefix("Bearer ").strip()
        self._token = Secret(text) if text and text.isprintable() and " " not in text else None
        self._signature = signature
        log.info(Event.BEARER_RELOADED, path=str(self._path), has_token=self._token is not None)
