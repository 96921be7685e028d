"""The OAuth provider's token endpoint (refresh grant), as the reference client calls it.

``POST {issuer}/oauth/token`` with JSON ``client_id``, ``grant_type: refresh_token``,
``refresh_token`` and ``scope``. A refresh token is single-use, so this client never retries a request
that may have reached the provider: a connect failure (nothing sent) is ``RefreshUnavailable``; a
timeout or dropped connection after the request went out is ``RefreshOutcomeUnknown``; ``invalid_grant``
is ``RefreshRejected``.

Answers are read up to :data:`MAX_ANSWER_BYTES` (a token answer is a few KiB). A 200 answer that is
larger was refused unread, but the refresh token had been sent: like any unusable 200 it is
``RefreshOutcomeUnknown``. Larger error answers are cut at the limit and judged by their status.
"""

from __future__ import annotations

import json
from typing import Final

import httpx

from broker.adapters.body_limit import BodyTooLargeError, read_limited
from broker.core.protocol.login import LoginTokens, tokens_from
from broker.errors import (
    LoginFormatError,
    RefreshOutcomeUnknown,
    RefreshRejected,
    RefreshUnavailable,
)
from broker.secret import Secret

DEFAULT_SCOPE: Final = "openid profile email"
MAX_ANSWER_BYTES: Final = 64 * 1024
"""Largest token-endpoint answer read."""


class OAuthTokenEndpoint:
    """Implements the ``TokenEndpoint`` port over an injected ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        issuer: str,
        client_id: str,
        scope: str = DEFAULT_SCOPE,
        timeout: float = 15.0,
    ) -> None:
        self._http = http
        self._url = issuer.rstrip("/") + "/oauth/token"
        self._client_id = client_id
        self._scope = scope
        self._timeout = timeout

    async def refresh(self, refresh_token: Secret) -> LoginTokens:
        """Exchange ``refresh_token`` once; see the module docstring for the outcomes."""
        body = {
            "client_id": self._client_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.reveal(),
            "scope": self._scope,
        }
        request = self._http.build_request("POST", self._url, json=body, timeout=self._timeout)
        try:
            response = await self._http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RefreshUnavailable(
                f"the token endpoint {self._url} could not be reached ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise self._lost(type(exc).__name__) from None
        status = response.status_code
        try:
            content = await read_limited(response, limit=MAX_ANSWER_BYTES, strict=status == 200)
        except BodyTooLargeError as exc:
            raise RefreshOutcomeUnknown(
                f"the token endpoint's answer was refused: {exc}; the refresh token sent is "
                "treated as spent"
            ) from None
        except httpx.HTTPError as exc:
            raise self._lost(type(exc).__name__) from None
        finally:
            await response.aclose()
        return self._tokens(status, content)

    def _lost(self, why: str) -> RefreshOutcomeUnknown:
        return RefreshOutcomeUnknown(
            f"the refresh request to {self._url} may have reached the provider but its answer "
            f"was lost ({why}); the refresh token sent is treated as spent"
        )

    @staticmethod
    def _tokens(status: int, content: bytes) -> LoginTokens:
        if status in (400, 401):
            error = ""
            try:
                document = json.loads(content)
                error = str(document.get("error", "")) if isinstance(document, dict) else ""
            except (ValueError, RecursionError):
                pass
            if error in ("invalid_grant", "invalid_client", "unauthorized_client") or status == 401:
                raise RefreshRejected(f"the provider refused the refresh token ({error or status})")
        if status >= 500 or status == 429:
            raise RefreshUnavailable(
                f"the token endpoint answered HTTP {status}; nothing was issued"
            )
        if status != 200:
            raise RefreshRejected(f"the token endpoint answered HTTP {status}")
        # From here on the old refresh token is consumed: an unusable answer counts as lost.
        try:
            document = json.loads(content)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            raise RefreshOutcomeUnknown("the token endpoint answered 200 without a JSON object")
        try:
            return tokens_from(
                str(document.get("access_token", "")),
                str(document.get("refresh_token", "")),
                str(document.get("id_token", "")),
            )
        except LoginFormatError as exc:
            raise RefreshOutcomeUnknown(
                f"the token endpoint answered 200 with unusable tokens: {exc.message}"
            ) from None
