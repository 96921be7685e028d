"""Where the account's OAuth access token comes from (the :class:`BearerSource` port).

With a token file an external refresher rewrites the file and the broker notices within
``recheck_seconds`` (see :mod:`broker.adapters.watched_file`); an account login refreshes in the broker
itself (:mod:`broker.core.credentials.account`).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from broker.adapters.watched_file import WatchedFile
from broker.core.credentials.ports import Clock
from broker.events import Event
from broker.secret import Secret

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

    async def reread(self) -> Secret | None:
        """The token (it never changes)."""
        return self._token


class TokenFileBearer:
    """The token is the stripped content of a file, re-read when the file changes."""

    def __init__(self, path: Path, clock: Clock, *, recheck_seconds: float = 1.0) -> None:
        """Args:
        path: the token file (mode 0600 recommended).
        clock: for the re-check interval.
        recheck_seconds: how often the file's metadata is compared.
        """
        self._file = WatchedFile(
            path, clock, recheck_seconds=recheck_seconds, max_bytes=_MAX_TOKEN_BYTES
        )
        self._token: Secret | None = None

    async def token(self) -> Secret | None:
        """The current token, or ``None`` when the file is missing, empty or unreadable."""
        state = await self._file.read()
        if state.changed:
            text = state.text.reveal().removeprefix("Bearer ").strip() if state.text else ""
            self._token = Secret(text) if text and text.isprintable() and " " not in text else None
            if state.error is not None:
                log.warning(
                    Event.BEARER_RELOADED,
                    path=str(self._file.path),
                    has_token=False,
                    error=state.error,
                )
            else:
                log.info(
                    Event.BEARER_RELOADED,
                    path=str(self._file.path),
                    has_token=self._token is not None,
                )
        return self._token

    async def rejected(self, token: Secret) -> None:
        """Look at the file again now: an external refresher may have rewritten it."""
        await self.reread()

    async def reread(self) -> Secret | None:
        """The token as the file holds it now."""
        self._file.expire()
        return await self.token()
