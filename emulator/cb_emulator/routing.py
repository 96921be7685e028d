"""Workspace routing: per-account backend origins and the routing header (protocol §16).

Some ChatGPT workspaces (data-residency accounts) are served at their own backend origin. A client
discovers it with ``GET /backend-api/wham/accounts/check`` and then sends the account's calls to that
origin with ``x-openai-account-routing-override: us|us_cr`` (no header for ``NO_CONSTRAINT``).

The emulator's policy: an account has no route until a test gives it one; an account without one is
answered ``NO_CONSTRAINT`` and its protected calls are not checked at all. A route's origin is either
the emulator's *regional origin* (a second loopback listener serving the same application), its main
origin, or any other string, which is answered verbatim and which no request can ever reach. For an
account with a route, a protected call must arrive at the route's listener (421 ``wrong_origin``)
and carry exactly the route's header (403 ``missing_routing_header``, ``wrong_routing_header`` or,
for ``NO_CONSTRAINT``, ``unexpected_routing_header``). A test can also queue raw discovery answers
per account, to exercise a client's handling of malformed or surprising answers.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from yarl import URL

from cb_emulator.model import Rejection

ROUTING_HEADER: Final = "x-openai-account-routing-override"
NO_CONSTRAINT: Final = "NO_CONSTRAINT"
OVERRIDES: Final = (NO_CONSTRAINT, "us", "us_cr")
"""The ``account_routing_override`` values a configured route may have."""

Listener = Literal["main", "regional"]


@dataclass(frozen=True, slots=True)
class WorkspaceRoute:
    """An account's configured route.

    Attributes:
        override: ``NO_CONSTRAINT``, ``us`` or ``us_cr``.
        origin: ``workspace_backend_origin`` as answered, verbatim; ``None`` for the regional origin.
    """

    override: str
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    """Where a protected call arrived and the routing header it carried.

    Attributes:
        port: the local port of the connection (which listener took it), if known.
        routing_header: the ``x-openai-account-routing-override`` header, if sent.
    """

    port: int | None
    routing_header: str | None


def accounts_check_body(
    account_id: str, *, origin: object = NO_CONSTRAINT, override: object = NO_CONSTRAINT
) -> dict[str, object]:
    """A discovery answer in the backend's shape, for one workspace account.

    ``origin`` and ``override`` are put in verbatim (any JSON value), so tests can build answers a
    client must refuse; the result can be changed further and queued with
    :meth:`RouteBook.queue_body`.
    """
    return {
        "accounts": [
            {
                "id": account_id,
                "structure": "workspace",
                "workspace_backend_origin": origin,
                "account_routing_override": override,
            }
        ],
        "account_ordering": [account_id],
        "default_account_id": account_id,
    }


def origin_key(text: str) -> str | None:
    """``scheme://host:port`` of an http(s) origin (host lower-cased, port explicit), else ``None``.

    A URL with user info, a path other than ``/``, a query or a fragment is not an origin.
    """
    try:
        url = URL(text)
    except (ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    if url.user is not None or url.password is not None or url.raw_path not in ("", "/"):
        return None
    if url.raw_query_string or url.raw_fragment:
        return None
    return f"{url.scheme}://{url.host.lower()}:{url.port}"


class RouteBook:
    """The configured routes, the queued raw discovery answers and the two listeners' origins."""

    def __init__(self) -> None:
        self._routes: dict[str, WorkspaceRoute] = {}
        self._bodies: dict[str, deque[object]] = {}
        self._main: str | None = None
        self._regional: str | None = None

    # -- listeners -----------------------------------------------------------------------------

    def bind(self, main_origin: str, regional_origin: str) -> None:
        """Record the origins of the main and the regional listener (the emulator started)."""
        self._main, self._regional = main_origin, regional_origin

    def unbind(self) -> None:
        """Forget the listeners (the emulator stopped)."""
        self._main = self._regional = None

    @property
    def regional_origin(self) -> str:
        """``http://<host>:<port>`` of the regional listener.

        Raises:
            RuntimeError: the emulator is not running.
        """
        if self._regional is None:
            raise RuntimeError("the emulator is not running")
        return self._regional

    # -- configuration -------------------------------------------------------------------------

    def set(self, account_id: str, route: WorkspaceRoute) -> str:
        """Give ``account_id`` a route; return the origin discovery will answer.

        Raises:
            ValueError: an empty account id or an override not in :data:`OVERRIDES`.
            RuntimeError: the route names the regional origin and the emulator is not running.
        """
        if not account_id:
            raise ValueError("account_id: must be a non-empty string")
        if route.override not in OVERRIDES:
            raise ValueError(f"override: must be one of {', '.join(OVERRIDES)}")
        answered = self.answered_origin(route)
        self._routes[account_id] = route
        return answered

    def clear(self, account_id: str) -> bool:
        """Remove the account's route and queued answers; report whether it had a route."""
        self._bodies.pop(account_id, None)
        return self._routes.pop(account_id, None) is not None

    def routes(self) -> dict[str, WorkspaceRoute]:
        """Every configured route, by account id."""
        return dict(self._routes)

    def queue_body(self, account_id: str, body: object, count: int) -> int:
        """Answer the account's next ``count`` discoveries with ``body``; return how many are queued.

        Raises:
            ValueError: an empty account id, a count below 1, or a body that is not JSON.
        """
        if not account_id:
            raise ValueError("account_id: must be a non-empty string")
        if count < 1:
            raise ValueError("count: must be at least 1")
        try:
            json.dumps(body, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError("body: must be a JSON value") from exc
        queue = self._bodies.setdefault(account_id, deque())
        queue.extend([body] * count)
        return len(queue)

    def reset(self, *, state: bool) -> None:
        """Forget queued answers; with ``state`` also every route."""
        self._bodies.clear()
        if state:
            self._routes.clear()

    # -- discovery and enforcement -------------------------------------------------------------

    def answered_origin(self, route: WorkspaceRoute) -> str:
        """The ``workspace_backend_origin`` answered for ``route``.

        Raises:
            RuntimeError: the route names the regional origin and the emulator is not running.
        """
        return self.regional_origin if route.origin is None else route.origin

    def answer(self, account_id: str) -> object:
        """The discovery answer for ``account_id``: a queued raw body first, else its route's."""
        queue = self._bodies.get(account_id)
        if queue:
            body = queue.popleft()
            if not queue:
                del self._bodies[account_id]
            return body
        route = self._routes.get(account_id)
        if route is None:
            return accounts_check_body(account_id)
        return accounts_check_body(
            account_id, origin=self.answered_origin(route), override=route.override
        )

    def check(self, account_id: str, arrival: Arrival) -> None:
        """Enforce the account's route on a protected call; accounts without a route pass.

        Raises:
            Rejection: 421 ``wrong_origin``; 403 ``missing_routing_header``,
                ``wrong_routing_header`` or ``unexpected_routing_header``.
        """
        route = self._routes.get(account_id)
        if route is None:
            return
        if self._expected_listener(route) != self._listener_of(arrival):
            raise Rejection(
                421, "wrong_origin", "the account's calls must go to its workspace backend origin"
            )
        header = None if arrival.routing_header is None else arrival.routing_header.strip()
        if route.override == NO_CONSTRAINT:
            if header is not None:
                raise Rejection(
                    403,
                    "unexpected_routing_header",
                    f"the account's route sends no {ROUTING_HEADER}",
                )
        elif header is None:
            raise Rejection(403, "missing_routing_header", f"{ROUTING_HEADER} is required")
        elif header != route.override:
            raise Rejection(
                403, "wrong_routing_header", f"{ROUTING_HEADER} must be {route.override!r}"
            )

    def _listener_of(self, arrival: Arrival) -> Listener:
        regional_port = URL(self._regional).port if self._regional is not None else None
        return "regional" if regional_port is not None and arrival.port == regional_port else "main"

    def _expected_listener(self, route: WorkspaceRoute) -> Listener | None:
        if route.origin is None:
            return "regional"
        if route.origin == NO_CONSTRAINT:
            return "main"
        key = origin_key(route.origin)
        if key is None:
            return None
        if self._main is not None and key == origin_key(self._main):
            return "main"
        if self._regional is not None and key == origin_key(self._regional):
            return "regional"
        return None
