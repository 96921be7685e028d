"""The reference client's ChatGPT login record (``auth.json``) and its token claims.

The broker reads claims from the login's JWTs without verifying them, exactly as the reference client
does: the tokens came from the provider over TLS and the broker only needs their facts (expiry,
account, user, plan); the control plane verifies them when they are used.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from broker.errors import LoginFormatError
from broker.secret import Secret

AUTH_CLAIM: Final = "https://api.openai.com/auth"


@dataclass(frozen=True, slots=True)
class LoginTokens:
    """The three tokens of a login (all secrets) and the public facts read from them."""

    access_token: Secret
    refresh_token: Secret
    id_token: Secret
    account_id: str
    user_id: str | None
    plan_type: str
    fedramp: bool
    email: str
    access_expires_at: datetime


def jwt_claims(token: str, what: str) -> dict[str, Any]:
    """The payload of a compact JWT, unverified.

    Raises:
        LoginFormatError: not three dot-separated parts with a base64url JSON object payload.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise LoginFormatError(f"{what} is not a JWT (three dot-separated parts)")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise LoginFormatError(f"{what} payload is not base64url JSON") from None
    if not isinstance(payload, dict):
        raise LoginFormatError(f"{what} payload is not a JSON object")
    return payload


def tokens_from(
    access_token: str, refresh_token: str, id_token: str, account_hint: str | None = None
) -> LoginTokens:
    """Build :class:`LoginTokens` from the three token strings, reading the facts from their claims.

    Raises:
        LoginFormatError: a token is malformed or a required claim is missing.
    """
    if not refresh_token.strip():
        raise LoginFormatError("tokens.refresh_token is empty")
    access = jwt_claims(access_token, "tokens.access_token")
    identity = jwt_claims(id_token, "tokens.id_token")
    exp = access.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise LoginFormatError("tokens.access_token has no numeric 'exp' claim")
    auth = identity.get(AUTH_CLAIM) or access.get(AUTH_CLAIM) or {}
    if not isinstance(auth, Mapping):
        raise LoginFormatError(f"tokens.id_token claim {AUTH_CLAIM!r} is not an object")
    account = auth.get("chatgpt_account_id") or account_hint
    if not isinstance(account, str) or not account:
        raise LoginFormatError("tokens.id_token names no chatgpt_account_id")
    if account_hint and account != account_hint:
        raise LoginFormatError("tokens.account_id does not match the id token's chatgpt_account_id")
    user = auth.get("chatgpt_user_id")
    plan = auth.get("chatgpt_plan_type", "")
    fedramp = auth.get("chatgpt_account_is_fedramp", False)
    email = identity.get("email", "")
    return LoginTokens(
        access_token=Secret(access_token),
        refresh_token=Secret(refresh_token),
        id_token=Secret(id_token),
        account_id=account,
        user_id=user if isinstance(user, str) and user else None,
        plan_type=plan if isinstance(plan, str) else "",
        fedramp=fedramp is True,
        email=email if isinstance(email, str) else "",
        access_expires_at=datetime.fromtimestamp(exp, UTC),
    )


def parse_auth_json(document: Mapping[str, Any]) -> LoginTokens:
    """Validate the reference client's ``auth.json`` (``tokens`` with the three tokens).

    Raises:
        LoginFormatError: naming the missing or malformed field.
    """
    tokens = document.get("tokens")
    if not isinstance(tokens, Mapping):
        raise LoginFormatError("auth.json has no 'tokens' object (is this a ChatGPT login?)")
    values = {}
    for name in ("id_token", "access_token", "refresh_token"):
        value = tokens.get(name)
        if not isinstance(value, str) or not value:
            raise LoginFormatError(f"tokens.{name} is missing or not a string")
        values[name] = value
    hint = tokens.get("account_id")
    return tokens_from(
        values["access_token"],
        values["refresh_token"],
        values["id_token"],
        hint if isinstance(hint, str) and hint else None,
    )
