"""HTTP handlers of the OAuth token endpoint and the login test controls (see :mod:`.oauth`).

- ``POST /oauth/token`` (resource ``oauth_token``, at the server root: the issuer is
  :attr:`Emulator.root_url`): the refresh grant, JSON (as the reference client sends it) or
  ``application/x-www-form-urlencoded`` (RFC 6749 §6). Success is ``200 {access_token, refresh_token,
  id_token, token_type: "Bearer", expires_in, scope}``; refusals are ``400 {error,
  error_description}`` (RFC 6749 §5.2); both with ``Cache-Control: no-store``. It shares the fault
  and stats machinery of the other protocol endpoints.
- ``POST /_emulator/login`` ``{account_id, user_id, plan_type?, fedramp?, access_lifetime_seconds?,
  email?}``: create a login, answer its ``auth.json``.
- ``GET /_emulator/logins``: every login with its state and refresh count (never a token).
- ``POST /_emulator/logins/expire`` ``{account_id}``: expire the account's access tokens now.
- ``POST /_emulator/logins/revoke`` ``{account_id}``: revoke the account's logins.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import web

from cb_emulator.middleware import note_reason
from cb_emulator.model import EmulatorAccount, OAuthError, Rejection
from cb_emulator.oauth import LoginBook
from cb_emulator.routes import json_body

OAUTH_TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 -- a URL path, not a secret
FORM_MEDIA_TYPE: Final = "application/x-www-form-urlencoded"
NO_STORE: Final[Mapping[str, str]] = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_LOGIN_MEMBERS: Final = frozenset(
    {"account_id", "user_id", "plan_type", "fedramp", "access_lifetime_seconds", "email"}
)


def token_request_fields(content_type: str, raw: bytes) -> dict[str, object]:
    """The members of a token request body: form-encoded when it says so, JSON otherwise.

    Raises:
        OAuthError: ``invalid_request`` for a body that is not UTF-8, not a JSON object, or
            repeats a form parameter (RFC 6749 §3.2).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "the request body is not UTF-8") from exc
    if content_type.split(";", 1)[0].strip().lower() == FORM_MEDIA_TYPE:
        pairs = parse_qsl(text, keep_blank_values=True)
        if len({name for name, _ in pairs}) != len(pairs):
            raise OAuthError("invalid_request", "a request parameter is repeated")
        return dict(pairs)
    if not text.strip():
        raise OAuthError("invalid_request", "the request body is empty")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise OAuthError("invalid_request", "the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise OAuthError("invalid_request", "the request body must be a JSON object")
    return {str(name): value for name, value in body.items()}


class OAuthRoutes:
    """The token endpoint and the ``/_emulator/login*`` controls.

    Args:
        book: the emulator's logins (shared with the Bearer checks of the other endpoints).
    """

    def __init__(self, book: LoginBook) -> None:
        self._book = book

    def install(self, app: web.Application) -> None:
        """Add the routes; the token endpoint's resource is named ``oauth_token``."""
        router = app.router
        router.add_resource(OAUTH_TOKEN_PATH, name="oauth_token").add_route("POST", self.token)
        router.add_post("/_emulator/login", self.create_login)
        router.add_get("/_emulator/logins", self.logins)
        router.add_post("/_emulator/logins/expire", self.expire)
        router.add_post("/_emulator/logins/revoke", self.revoke)

    async def token(self, request: web.Request) -> web.Response:
        """``POST /oauth/token``: the refresh grant with rotation and reuse detection."""
        raw = await request.read()
        try:
            fields = token_request_fields(request.headers.get("Content-Type", ""), raw)
            issued = self._book.refresh(fields)
        except OAuthError as exc:
            note_reason(request, exc.reason)
            return web.json_response(exc.payload(), status=exc.status, headers=NO_STORE)
        return web.json_response(issued.response(), headers=NO_STORE)

    # -- test controls -------------------------------------------------------------------------

    async def create_login(self, request: web.Request) -> web.Response:
        """Create a login from ``{account_id, user_id, …}``; answer its ``auth.json``."""
        body = await json_body(request)
        if not isinstance(body, dict):
            raise Rejection(400, "invalid_login_request", "the body must be a JSON object")
        unknown = sorted(set(map(str, body)) - _LOGIN_MEMBERS)
        if unknown:
            raise Rejection(
                400, "invalid_login_request", f"unknown member(s): {', '.join(unknown)}"
            )
        account = EmulatorAccount(
            _string(body, "account_id", None),
            _string(body, "user_id", None),
            fedramp=_flag(body, "fedramp"),
        )
        lifetime = body.get("access_lifetime_seconds", 3600)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int):
            raise Rejection(
                400, "invalid_login_request", "access_lifetime_seconds must be an integer"
            )
        try:
            auth = self._book.create_login(
                account,
                plan_type=_string(body, "plan_type", "pro"),
                email=_string(body, "email", ""),
                access_lifetime_seconds=lifetime,
            )
        except ValueError as exc:
            raise Rejection(400, "invalid_login_request", str(exc)) from exc
        return web.json_response(auth)

    async def logins(self, _request: web.Request) -> web.Response:
        """Every login as ``{login_id, account_id, …, state, refreshes, …}``, oldest first."""
        return web.json_response([login.to_json() for login in self._book.logins()])

    async def expire(self, request: web.Request) -> web.Response:
        """Expire ``{account_id}``'s access tokens now: ``{"ok": true, "expired": n}``."""
        account_id = _string(await json_body(request), "account_id", None)
        try:
            expired = self._book.expire_access_tokens(account_id)
        except KeyError as exc:
            raise Rejection(404, "unknown_account", "the account has no login") from exc
        return web.json_response({"ok": True, "expired": expired})

    async def revoke(self, request: web.Request) -> web.Response:
        """Revoke ``{account_id}``'s logins: ``{"ok": true, "revoked": n}``."""
        account_id = _string(await json_body(request), "account_id", None)
        try:
            revoked = self._book.revoke(account_id)
        except KeyError as exc:
            raise Rejection(404, "unknown_account", "the account has no login") from exc
        return web.json_response({"ok": True, "revoked": revoked})


def _string(body: object, name: str, default: str | None) -> str:
    value = body.get(name, default) if isinstance(body, dict) else None
    if not isinstance(value, str) or (default is None and not value):
        wanted = "a non-empty string" if default is None else "a string"
        raise Rejection(400, "invalid_field", f"{name} must be {wanted}")
    return value


def _flag(body: Mapping[str, object], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise Rejection(400, "invalid_field", f"{name} must be a boolean")
    return value
