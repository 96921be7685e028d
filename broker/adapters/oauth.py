"""The OAuth provider's token endpoint (refresh grant), as the reference client calls it.

``POST {issuer}/oauth/token`` with JSON ``client_id``, ``grant_type: refresh_token``,
``refresh_token`` and ``scope``. A refresh token is single-use, so this client never retries a request
that may have reached the provider: a connect failure (nothing sent) is ``RefreshUnavailable``; a
timeout or dropped connection after the request went out is ``RefreshOutcomeUnknown``; ``invalid_grant``
is ``RefreshRejected``.
"""

from __future__ import annotations

from typing import Final

import httpx

from broker.core.protocol.login import LoginFormatError, LoginTokens, tokens_from
from broker.errors import RefreshOutcomeUnknown, RefreshRejected, RefreshUnavailable
from broker.secrets import Secret

DEFAULT_SCOPE: Final = "openid profile email"
_MAX_BODY: Final = 256 * 1024


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
        try:
            response = await self._http.post(self._url, json=body, timeout=self._timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RefreshUnavailable(
                f"the token endpoint {self._url} could not be reached ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise RefreshOutcomeUnknown(
                f"the refresh request to {self._url} may have reached the provider but its answer "
                f"was lost ({type(exc).__name__})"
            ) from None
        text = response.text[:_MAX_BODY]
        if response.status_code in (400, 401):
            error = ""
            try:
                document = response.json()
                error = str(document.get("error", "")) if isinstance(document, dict) else ""
            except ValueError:
                pass
            if error in ("invalid_grant", "invalid_client", "unauthorized_client") or (
                response.status_code == 401
            ):
                raise RefreshRejected(
                    f"the provider refused the refresh token ({error or response.status_code})"
                )
        if response.status_code >= 500 or response.status_code == 429:
            raise RefreshUnavailable(
                f"the token endpoint answered HTTP {response.status_code}; nothing was issued"
            )
        if response.status_code != 200:
            raise RefreshRejected(f"the token endpoint answered HTTP {response.status_code}")
        # From here on the old refresh token is consumed: an unusable answer counts as lost.
        try:
            document = response.json() if len(text) < _MAX_BODY else None
        except ValueError:
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
