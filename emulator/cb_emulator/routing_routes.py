"""HTTP test controls of workspace routing (see :mod:`cb_emulator.routing`).

- ``GET /_emulator/routes``: ``{"regional_origin": …, "routes": [{account_id, override, origin}]}``
  with each route's answered origin.
- ``POST /_emulator/routes`` ``{account_id, override?, origin?}``: give an account a route;
  ``override`` is ``NO_CONSTRAINT``, ``us`` (the default) or ``us_cr``; ``origin`` null or absent
  means the regional origin, any string is answered verbatim. Answers the route with its origin.
- ``DELETE /_emulator/routes/{account_id}``: remove the account's route and queued answers;
  ``{"ok": true, "account_id": …, "cleared": bool}``.
- ``POST /_emulator/routes/body`` ``{account_id, body, count?}``: answer the account's next
  ``count`` discoveries with ``body`` (any JSON value) verbatim; ``{"ok": true, "pending": n}``.

The discovery endpoint itself is :meth:`cb_emulator.routes.ProtocolRoutes.accounts_check`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web

from cb_emulator.model import Rejection
from cb_emulator.routes import json_body
from cb_emulator.routing import RouteBook, WorkspaceRoute

ROUTES_PATH: Final = "/_emulator/routes"
_ROUTE_MEMBERS: Final = frozenset({"account_id", "override", "origin"})
_BODY_MEMBERS: Final = frozenset({"account_id", "body", "count"})


class RoutingControlRoutes:
    """The ``/_emulator/routes`` controls.

    Args:
        book: the emulator's routes (shared with discovery and the protected resource).
    """

    def __init__(self, book: RouteBook) -> None:
        self._book = book

    def install(self, app: web.Application) -> None:
        """Add the control routes."""
        router = app.router
        router.add_get(ROUTES_PATH, self.routes)
        router.add_post(ROUTES_PATH, self.set_route)
        router.add_delete(ROUTES_PATH + "/{account_id}", self.clear_route)
        router.add_post(f"{ROUTES_PATH}/body", self.queue_body)

    async def routes(self, _request: web.Request) -> web.Response:
        """Every route with the origin discovery answers for it."""
        return web.json_response(
            {
                "regional_origin": self._book.regional_origin,
                "routes": [
                    _route_json(account_id, route.override, self._book.answered_origin(route))
                    for account_id, route in self._book.routes().items()
                ],
            }
        )

    async def set_route(self, request: web.Request) -> web.Response:
        """Give ``{account_id}`` a route of ``override`` at ``origin``."""
        body = _members(await json_body(request), _ROUTE_MEMBERS)
        account_id = _account_id(body)
        override = body.get("override", "us")
        origin = body.get("origin")
        if not isinstance(override, str):
            raise Rejection(400, "invalid_route", "override must be a string")
        if origin is not None and not isinstance(origin, str):
            raise Rejection(400, "invalid_route", "origin must be a string or null")
        try:
            answered = self._book.set(account_id, WorkspaceRoute(override, origin))
        except ValueError as exc:
            raise Rejection(400, "invalid_route", str(exc)) from exc
        return web.json_response({"ok": True, **_route_json(account_id, override, answered)})

    async def clear_route(self, request: web.Request) -> web.Response:
        """Remove the route of the account named in the path."""
        account_id = request.match_info["account_id"]
        cleared = self._book.clear(account_id)
        return web.json_response({"ok": True, "account_id": account_id, "cleared": cleared})

    async def queue_body(self, request: web.Request) -> web.Response:
        """Queue ``body`` as the account's next ``count`` discovery answers."""
        body = _members(await json_body(request), _BODY_MEMBERS)
        account_id = _account_id(body)
        if "body" not in body:
            raise Rejection(400, "invalid_route", "body is required")
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int):
            raise Rejection(400, "invalid_route", "count must be an integer")
        try:
            pending = self._book.queue_body(account_id, body["body"], count)
        except ValueError as exc:
            raise Rejection(400, "invalid_route", str(exc)) from exc
        return web.json_response({"ok": True, "account_id": account_id, "pending": pending})


def _route_json(account_id: str, override: str, origin: str) -> dict[str, object]:
    return {"account_id": account_id, "override": override, "origin": origin}


def _members(body: object, allowed: frozenset[str]) -> Mapping[str, object]:
    if not isinstance(body, dict):
        raise Rejection(400, "invalid_route", "the body must be a JSON object")
    unknown = sorted(set(map(str, body)) - allowed)
    if unknown:
        raise Rejection(400, "invalid_route", f"unknown member(s): {', '.join(unknown)}")
    return {str(name): value for name, value in body.items()}


def _account_id(body: Mapping[str, object]) -> str:
    account_id = body.get("account_id")
    if not isinstance(account_id, str) or not account_id:
        raise Rejection(400, "invalid_field", "account_id must be a non-empty string")
    return account_id
