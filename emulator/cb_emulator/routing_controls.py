"""The :class:`Emulator`'s Python controls for workspace routing (see :mod:`cb_emulator.routing`).

A mixin, so that :mod:`cb_emulator.server` stays small; the rules live in
:mod:`cb_emulator.routing` and the HTTP twins of these methods in :mod:`cb_emulator.routing_routes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cb_emulator.routing import WorkspaceRoute

if TYPE_CHECKING:
    from cb_emulator.state import EmulatorState


class RoutingControls:
    """Per-account workspace routes, raw discovery answers and the regional origin.

    Requires ``_state``, the emulator's :class:`EmulatorState`, whose route book is bound to the
    listeners while the emulator runs.
    """

    _state: EmulatorState

    @property
    def regional_origin(self) -> str:
        """``http://<host>:<port>`` of the second listener, a workspace's own backend origin.

        It serves the same application as :attr:`root_url` (``/backend-api/…`` works there too);
        only the route checks of the protected resource tell the two apart.

        Raises:
            RuntimeError: the emulator is not running.
        """
        return self._state.routes.regional_origin

    def set_route(self, account_id: str, *, override: str = "us", origin: str | None = None) -> str:
        """Give ``account_id`` a workspace route; return the origin discovery will answer.

        From now on ``GET /backend-api/wham/accounts/check`` answers the route for the account, and
        its calls to ``/backend-api/protected`` must arrive at the route's origin (421
        ``wrong_origin``) with ``x-openai-account-routing-override: <override>`` (403
        ``missing_routing_header``/``wrong_routing_header``), or with no such header for
        ``NO_CONSTRAINT`` (403 ``unexpected_routing_header``). A route replaces the previous one.

        Args:
            account_id: the account (workspace) id.
            override: ``account_routing_override``: ``NO_CONSTRAINT``, ``us`` or ``us_cr``.
            origin: ``workspace_backend_origin``: ``None`` for :attr:`regional_origin`;
                ``"NO_CONSTRAINT"`` or :attr:`root_url` for the main origin; any other string is
                answered verbatim (an invalid origin, or one no request can reach).

        Raises:
            ValueError: an empty account id or an unknown override (queue a raw answer with
                :meth:`set_accounts_check_body` to send one).
            RuntimeError: ``origin`` is ``None`` and the emulator is not running.
        """
        return self._state.routes.set(account_id, WorkspaceRoute(override, origin))

    def clear_route(self, account_id: str) -> bool:
        """Remove the account's route and queued answers; report whether it had a route."""
        return self._state.routes.clear(account_id)

    def routes(self) -> dict[str, WorkspaceRoute]:
        """Every configured route, by account id."""
        return self._state.routes.routes()

    def set_accounts_check_body(self, account_id: str, body: object, *, count: int = 1) -> int:
        """Answer the account's next ``count`` discoveries with ``body`` verbatim; return the queue.

        The Bearer and ``ChatGPT-Account-ID`` are still checked first; the answer is 200 with this
        JSON body instead of the route's. Build one with :func:`cb_emulator.accounts_check_body`
        and change it: another account's id (the account changed during discovery), a missing
        member, an override of ``"eu"``, ``accounts`` not a list. The route, if any, is still
        enforced on protected calls. Delays and error statuses are faults of ``accounts_check``
        (:meth:`inject_fault`).

        Returns:
            How many raw answers are now queued for the account.

        Raises:
            ValueError: an empty account id, a count below 1, or a body that is not JSON.
        """
        return self._state.routes.queue_body(account_id, body, count)
