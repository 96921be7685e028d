"""ChatGPT logins and the OAuth token endpoint's rules: rotation, single use, reuse detection.

The emulator plays the identity provider that issued a reference client's ``auth.json`` and refreshes
it at ``POST {issuer}/oauth/token`` (RFC 6749 §6 refresh grant, with rotation and reuse detection as
in the OAuth 2.0 Security BCP, RFC 9700 §4.14.2). A *login* is one token family: the tokens minted
when it was created and every generation refreshed from them.

- Access and id tokens are RS256 JWTs signed by the emulator's JWKS keys (the same keys as Agent
  Identity JWTs, so they verify against :attr:`Emulator.jwks_url`). Both carry the account claim
  ``https://api.openai.com/auth`` → ``chatgpt_account_id``, ``chatgpt_user_id``, ``user_id``,
  ``chatgpt_plan_type``, ``chatgpt_account_is_fedramp``; the access token also ``iss``, ``aud``
  (``https://api.openai.com/v1``), ``client_id``, ``sub``, ``iat``, ``exp``, ``jti``, ``scp`` and
  ``session_id`` (the login id); the id token ``iss``, ``aud`` (the client id), ``sub``, ``iat``,
  ``exp`` (an hour), ``auth_time``, ``jti``, ``email``, ``email_verified``.
- Refresh tokens are opaque ``rt-…`` strings, **single use**. Refreshing consumes the presented
  token and mints a new access, refresh and id token. Presenting a consumed refresh token again is
  treated as theft, as real providers do: the whole family is revoked (every access and refresh token
  of the login) and the answer is ``invalid_grant`` / ``refresh token reused``. So two clients racing
  with the same refresh token get exactly one success, and the winner's fresh tokens die with the
  family a moment later. A token of a family already revoked gets ``invalid_grant`` without counting as
  another reuse.
- An access token stays valid until its ``exp`` even after a refresh (JWTs are not revoked one by one
  by real providers either); only family revocation or :meth:`LoginBook.expire_access_tokens` ends it
  early. Expiry is checked against the emulator clock.

All state is touched from the event loop without an ``await`` between read and write, so each refresh
is atomic: concurrent requests are serialised in arrival order.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from broker.core.credentials.ports import Clock
from cb_emulator.model import (
    EmulatorAccount,
    EmulatorLogin,
    IssuedTokens,
    OAuthError,
    OAuthStats,
    Rejection,
    TokenRequest,
)

AUTH_CLAIM: Final = "https://api.openai.com/auth"
DEFAULT_CLIENT_ID: Final = "app_dev"
DEFAULT_SCOPE: Final = "openid profile email offline_access"
API_AUDIENCE: Final = "https://api.openai.com/v1"
ID_TOKEN_LIFETIME_SECONDS: Final = 3600
_REFRESH_PREFIX: Final = "rt-"

Signer = Callable[[Mapping[str, object]], str]
"""Signs a JWT payload and returns the compact JWS (the emulator's RS256 JWKS key)."""


@dataclass(slots=True)
class _Family:
    login_id: str
    account: EmulatorAccount
    plan_type: str
    email: str
    access_lifetime: int
    created_at: datetime
    last_refresh: datetime
    access_expires_at: datetime
    refreshes: int = 0
    revoked_reason: str | None = None

    def view(self) -> EmulatorLogin:
        return EmulatorLogin(
            login_id=self.login_id,
            account_id=self.account.account_id,
            user_id=self.account.user_id,
            plan_type=self.plan_type,
            fedramp=self.account.fedramp,
            email=self.email,
            state="active" if self.revoked_reason is None else "revoked",
            revoked_reason=self.revoked_reason,
            refreshes=self.refreshes,
            created_at=self.created_at,
            last_refresh=self.last_refresh,
            access_expires_at=self.access_expires_at,
        )


@dataclass(slots=True)
class _Access:
    family: _Family
    expires_at: datetime


@dataclass(slots=True)
class _Refresh:
    family: _Family
    consumed: bool = False


def rfc3339(moment: datetime) -> str:
    """``2026-04-13T12:00:00.000000Z``, as the reference client writes ``last_refresh``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LoginBook:
    """Every login (token family) of one emulator, and the refresh grant's rules.

    Args:
        clock: the emulator clock (``iat``/``exp`` and access-token expiry).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sign: Signer | None = None
        self._issuer: Callable[[], str] = _unconfigured
        self.client_id = DEFAULT_CLIENT_ID
        self._families: dict[str, _Family] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._counters: Counter[str] = Counter()

    def configure(self, *, sign: Signer, client_id: str, issuer: Callable[[], str]) -> None:
        """Set the signer, the accepted ``client_id`` and the issuer URL (read when minting)."""
        self._sign, self.client_id, self._issuer = sign, client_id, issuer

    @property
    def issuer(self) -> str:
        """The issuer URL (``iss`` of every token).

        Raises:
            RuntimeError: not configured, or the emulator is not running.
        """
        return self._issuer()

    # -- logins --------------------------------------------------------------------------------

    def create_login(
        self,
        account: EmulatorAccount,
        *,
        plan_type: str = "pro",
        email: str = "",
        access_lifetime_seconds: int = 3600,
    ) -> dict[str, object]:
        """Start a new token family and return it as the reference client's ``auth.json``.

        Raises:
            ValueError: an empty account or user id.
            RuntimeError: the book is not configured, or the issuer is unknown (not running).
        """
        if not account.account_id or not account.user_id:
            raise ValueError("account_id and user_id must be non-empty strings")
        now = self._clock.now()
        family = _Family(
            login_id="login-" + secrets.token_hex(8),
            account=account,
            plan_type=plan_type,
            email=email,
            access_lifetime=access_lifetime_seconds,
            created_at=now,
            last_refresh=now,
            access_expires_at=now,
        )
        tokens = self._mint(family)
        self._families[family.login_id] = family
        self._counters["logins_created"] += 1
        return {
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": tokens.id_token,
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token,
                "account_id": account.account_id,
            },
            "last_refresh": rfc3339(now),
        }

    def refresh(self, fields: Mapping[str, object]) -> IssuedTokens:
        """Answer a refresh grant: rotate the family's tokens or refuse.

        Raises:
            OAuthError: the request is malformed, the client unknown, or the grant invalid
                (unknown token, revoked family, or a reused token, which revokes the family).
        """
        try:
            request = TokenRequest.from_fields(fields, self.client_id)
            tokens = self._rotate(request)
        except OAuthError:
            self._counters["refreshes_refused"] += 1
            raise
        self._counters["refreshes"] += 1
        return tokens

    def _rotate(self, request: TokenRequest) -> IssuedTokens:
        record = self._refresh.get(request.refresh_token)
        if record is None:
            raise OAuthError("invalid_grant", "refresh token not found", "refresh_token_unknown")
        family = record.family
        if family.revoked_reason is not None:
            raise OAuthError("invalid_grant", "refresh token revoked", "login_revoked")
        if record.consumed:
            self._counters["refresh_token_reuse"] += 1
            self._revoke(family, "refresh_token_reused")
            raise OAuthError("invalid_grant", "refresh token reused", "refresh_token_reused")
        if request.scope is not None and not set(request.scope.split()) <= set(
            DEFAULT_SCOPE.split()
        ):
            raise OAuthError("invalid_scope", "scope exceeds the login's scope")
        record.consumed = True
        tokens = self._mint(family)
        family.refreshes += 1
        family.last_refresh = self._clock.now()
        return tokens

    def _mint(self, family: _Family) -> IssuedTokens:
        if self._sign is None:
            raise RuntimeError("the login book has no signer; configure it first")
        now = self._clock.now()
        issued_at = int(now.timestamp())
        expires = issued_at + family.access_lifetime
        auth = {
            "chatgpt_account_id": family.account.account_id,
            "chatgpt_user_id": family.account.user_id,
            "user_id": family.account.user_id,
            "chatgpt_plan_type": family.plan_type,
            "chatgpt_account_is_fedramp": family.account.fedramp,
        }
        common = {"iss": self._issuer(), "sub": family.account.user_id, "iat": issued_at}
        access = self._sign(
            {
                **common,
                "aud": [API_AUDIENCE],
                "client_id": self.client_id,
                "exp": expires,
                "jti": secrets.token_hex(16),
                "scp": DEFAULT_SCOPE.split(),
                "session_id": family.login_id,
                AUTH_CLAIM: auth,
            }
        )
        id_token = self._sign(
            {
                **common,
                "aud": self.client_id,
                "exp": issued_at + ID_TOKEN_LIFETIME_SECONDS,
                "auth_time": int(family.created_at.timestamp()),
                "jti": secrets.token_hex(16),
                "email": family.email,
                "email_verified": bool(family.email),
                AUTH_CLAIM: auth,
            }
        )
        refresh = _REFRESH_PREFIX + secrets.token_urlsafe(32)
        family.access_expires_at = datetime.fromtimestamp(expires, UTC)
        self._access[access] = _Access(family, family.access_expires_at)
        self._refresh[refresh] = _Refresh(family)
        return IssuedTokens(access, refresh, id_token, family.access_lifetime, DEFAULT_SCOPE)

    # -- access tokens as Bearer credentials ---------------------------------------------------

    def account_for(self, token: str) -> EmulatorAccount | None:
        """The account of a login's access token; ``None`` when it is not one.

        Raises:
            Rejection: 401 ``token_revoked`` (its family was revoked) or ``token_expired``.
        """
        record = self._access.get(token)
        if record is None:
            return None
        if record.family.revoked_reason is not None:
            raise Rejection(401, "token_revoked", "the access token's login has been revoked")
        if record.expires_at <= self._clock.now():
            raise Rejection(401, "token_expired", "the access token has expired")
        return record.family.account

    # -- test controls -------------------------------------------------------------------------

    def expire_access_tokens(self, account_id: str) -> int:
        """Make every access token of the account's logins expire now; return how many.

        Raises:
            KeyError: the account has no login.
        """
        families = self._families_of(account_id)
        ids = {family.login_id for family in families}
        now = self._clock.now()
        expired = 0
        for record in self._access.values():
            if record.family.login_id in ids and record.expires_at > now:
                record.expires_at = now
                expired += 1
        for family in families:
            family.access_expires_at = min(family.access_expires_at, now)
        return expired

    def revoke(self, account_id: str) -> int:
        """Revoke every active login of the account (``invalid_grant`` from now on); return how many.

        Raises:
            KeyError: the account has no login.
        """
        active = [f for f in self._families_of(account_id) if f.revoked_reason is None]
        for family in active:
            self._revoke(family, "revoked_by_control")
        return len(active)

    def _revoke(self, family: _Family, reason: str) -> None:
        family.revoked_reason = reason
        self._counters["families_revoked"] += 1

    def _families_of(self, account_id: str) -> list[_Family]:
        families = [f for f in self._families.values() if f.account.account_id == account_id]
        if not families:
            raise KeyError(account_id)
        return families

    def logins(self) -> list[EmulatorLogin]:
        """Every login, oldest first."""
        return [family.view() for family in self._families.values()]

    def stats(self) -> OAuthStats:
        """The OAuth counters since start or the last reset."""
        values = self._counters
        return OAuthStats(
            logins_created=values["logins_created"],
            refreshes=values["refreshes"],
            refreshes_refused=values["refreshes_refused"],
            refresh_token_reuse=values["refresh_token_reuse"],
            families_revoked=values["families_revoked"],
            logins=len(self._families),
        )

    def reset(self, *, state: bool = False) -> None:
        """Clear the counters; with ``state`` also every login and token."""
        self._counters.clear()
        if state:
            self._families.clear()
            self._access.clear()
            self._refresh.clear()


def _unconfigured() -> str:
    raise RuntimeError("the login book has no issuer; configure it first")
