"""The :class:`Emulator`'s Python controls for ChatGPT logins and the OAuth token endpoint.

A mixin, so that :mod:`cb_emulator.server` stays small; the rules live in
:mod:`cb_emulator.oauth` and the HTTP twins of these methods in :mod:`cb_emulator.oauth_routes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from cb_emulator.faults import Fault
from cb_emulator.model import EmulatorAccount, EmulatorLogin
from cb_emulator.oauth_routes import OAUTH_TOKEN_PATH

if TYPE_CHECKING:
    from cb_emulator.state import EmulatorState

LostAnswer = Literal["drop", "reset", "delay"]


class OAuthControls:
    """Logins, token expiry and revocation, and the "consumed but never answered" fault.

    Requires ``_state``, the emulator's :class:`EmulatorState`, whose login book is configured.
    """

    _state: EmulatorState

    @property
    def issuer_url(self) -> str:
        """The OAuth issuer, ``http://<host>:<port>``: the token endpoint is ``{issuer}/oauth/token``.

        Raises:
            RuntimeError: the emulator is not running.
        """
        return self._state.logins.issuer

    @property
    def oauth_token_url(self) -> str:
        """``{issuer}/oauth/token``.

        Raises:
            RuntimeError: the emulator is not running.
        """
        return self._state.logins.issuer + OAUTH_TOKEN_PATH

    @property
    def oauth_client_id(self) -> str:
        """The only ``client_id`` the token endpoint accepts."""
        return self._state.logins.client_id

    def create_login(
        self,
        account_id: str,
        *,
        user_id: str,
        plan_type: str = "pro",
        fedramp: bool = False,
        access_lifetime_seconds: int = 3600,
        email: str = "",
    ) -> dict[str, object]:
        """Log ``user_id`` into ``account_id``: a new token family, as the reference client's ``auth.json``.

        The result is ``{"OPENAI_API_KEY": None, "tokens": {"id_token", "access_token",
        "refresh_token", "account_id"}, "last_refresh": RFC 3339}``. The access token is accepted as
        ``Authorization: Bearer`` by every endpoint that takes one, as this account, until it
        expires or the family is revoked; the refresh token works once at :attr:`oauth_token_url`.
        The tokens are secrets. ``iat`` is the emulator clock; the emulator must be running (the
        issuer is its URL).

        Args:
            account_id: ``chatgpt_account_id`` (and ``tokens.account_id``).
            user_id: ``chatgpt_user_id`` and ``sub``.
            plan_type: ``chatgpt_plan_type``.
            fedramp: ``chatgpt_account_is_fedramp``; the account then behaves as a FedRAMP
                account at the other endpoints.
            access_lifetime_seconds: ``exp - iat`` of this and every refreshed access token;
                zero or negative mints tokens that have already expired.
            email: the id token's ``email``.

        Raises:
            ValueError: an empty ``account_id`` or ``user_id``.
            RuntimeError: the emulator is not running.
        """
        account = EmulatorAccount(account_id, user_id, fedramp=fedramp)
        return self._state.logins.create_login(
            account,
            plan_type=plan_type,
            email=email,
            access_lifetime_seconds=access_lifetime_seconds,
        )

    def logins(self) -> list[EmulatorLogin]:
        """Every login (token family) with its state and refresh count, oldest first."""
        return self._state.logins.logins()

    def expire_access_tokens(self, account_id: str) -> int:
        """Make every current access token of the account's logins expire now; return how many.

        They are refused with 401 ``token_expired`` from now on (their ``exp`` claim is unchanged);
        refreshing still works and mints tokens with the login's lifetime.

        Raises:
            KeyError: the account has no login.
        """
        return self._state.logins.expire_access_tokens(account_id)

    def revoke_login(self, account_id: str) -> int:
        """Revoke every active login of the account, as a provider does on logout; return how many.

        Its access tokens are refused with 401 ``token_revoked`` and its refresh tokens get
        ``invalid_grant``. Counted in ``families_revoked``.

        Raises:
            KeyError: the account has no login.
        """
        return self._state.logins.revoke(account_id)

    def fail_after_consuming(
        self, *, count: int = 1, mode: LostAnswer = "drop", delay_seconds: float = 30.0
    ) -> None:
        """Perform the next ``count`` token requests, then lose their answers.

        The refresh really happens (the presented refresh token is consumed, the new tokens are
        minted and stored) but the client never learns the new tokens; presenting the old refresh
        token again is then a reuse and revokes the family. The same fault over HTTP is
        ``POST /_emulator/faults {"endpoint": "oauth_token", "after_handler": true,
        "drop_connection": true}`` (or ``"reset_connection"``, or ``"delay_seconds"`` alone).

        Args:
            count: how many token requests it applies to.
            mode: ``"drop"`` closes the connection, ``"reset"`` sends a TCP reset, ``"delay"``
                holds the answer ``delay_seconds`` (past the client's timeout).
            delay_seconds: the hold in ``"delay"`` mode; ignored otherwise.

        Raises:
            ValueError: an unknown mode, or a count or delay out of range.
        """
        if mode not in ("drop", "reset", "delay"):
            raise ValueError("mode: must be 'drop', 'reset' or 'delay'")
        self._state.faults.add(
            Fault(
                endpoint="oauth_token",
                count=count,
                after_handler=True,
                drop_connection=mode == "drop",
                reset_connection=mode == "reset",
                delay_seconds=delay_seconds if mode == "delay" else 0.0,
            )
        )
