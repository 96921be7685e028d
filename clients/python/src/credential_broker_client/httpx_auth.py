"""``BrokerAuth``: an ``httpx.Auth`` that signs requests with the broker's headers.

Needs the ``httpx`` extra (``pip install 'credential-broker-client[httpx]'``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Generator
from typing import Final

import httpx

from credential_broker_client.authorization import Authorization
from credential_broker_client.client import BrokerClient
from credential_broker_client.errors import RoutedRedirectRefused
from credential_broker_client.sync import SyncBrokerClient

DEFAULT_REJECTION_STATUSES = frozenset({401})

ROUTED_EXTENSION: Final = "credential_broker_routed"
"""The ``httpx.Request.extensions`` key that marks a request sent to a ``backend_origin``."""


def apply_headers(
    request: httpx.Request, authorization: Authorization, *, previous: Authorization | None = None
) -> None:
    """Put the ``Authorization`` header and its companions on ``request`` (replacing old ones).

    Args:
        request: the request to sign.
        authorization: the header and companions to send.
        previous: the authorization the request was signed with before (the retry after a 401):
            its companions that ``authorization`` does not have are removed (e.g. a routing
            override the replacement's route does not need).
    """
    if previous is not None:
        current = {name.lower() for name in authorization.headers}
        for name in previous.headers:
            if name.lower() not in current:
                request.headers.pop(name, None)
    for name, value in authorization.headers.items():
        request.headers[name] = value
    request.headers["Authorization"] = authorization.header_value


class _Target:
    """Where a request goes: its caller's URL and ``Host``, or an authorization's route of them."""

    __slots__ = ("_host", "_url")

    def __init__(self, request: httpx.Request) -> None:
        self._url = request.url
        self._host = request.headers.get("Host")

    def apply(self, request: httpx.Request, authorization: Authorization) -> None:
        """Send ``request`` to ``authorization.backend_origin`` if it has one, else where asked."""
        if authorization.backend_origin:
            request.url = httpx.URL(authorization.route_url(str(self._url)))
            request.headers["Host"] = request.url.netloc.decode("ascii")
            request.extensions[ROUTED_EXTENSION] = True
        elif request.extensions.pop(ROUTED_EXTENSION, False):
            # a routed first attempt, an unrouted replacement: back to the caller's URL
            request.url = self._url
            if self._host is None:
                del request.headers["Host"]
            else:
                request.headers["Host"] = self._host


def _refuse_routed_redirect(request: httpx.Request, response: httpx.Response) -> None:
    if not request.extensions.get(ROUTED_EXTENSION):
        return
    if response.has_redirect_location:
        raise RoutedRedirectRefused(response.status_code)
    if response.request is not request and response.history:
        # follow_redirects=True without the event hook: httpx followed it before this flow could
        # refuse it; the caller still gets the error, not the redirect target's answer
        raise RoutedRedirectRefused(response.history[-1].status_code)


def refuse_routed_redirects(response: httpx.Response) -> None:
    """A response event hook for ``httpx.Client(follow_redirects=True)``: never follow a routed one.

    httpx follows redirects before an auth flow sees the answer, so :class:`BrokerAuth` alone can
    refuse a routed redirect only when the client does not follow redirects (httpx's default).
    With ``follow_redirects=True`` register this hook as well::

        httpx.Client(auth=BrokerAuth(broker), follow_redirects=True,
                     event_hooks={"response": [refuse_routed_redirects]})

    Raises:
        RoutedRedirectRefused: a routed request was answered with a 3xx and a ``Location``.
    """
    if response.request.extensions.get(ROUTED_EXTENSION) and response.has_redirect_location:
        raise RoutedRedirectRefused(response.status_code)


async def async_refuse_routed_redirects(response: httpx.Response) -> None:
    """:func:`refuse_routed_redirects` for ``httpx.AsyncClient(follow_redirects=True)``.

    Raises:
        RoutedRedirectRefused: a routed request was answered with a 3xx and a ``Location``.
    """
    refuse_routed_redirects(response)


class BrokerAuth(httpx.Auth):
    """Adds the broker's header and companions to every request; recovers from one 401.

    When the control plane answers a status in ``rejection_statuses`` (401 by default), the header
    is reported with ``ReportRejection`` once and the request is sent once more with the
    replacement. A second refusal is returned to the caller as it is.

    When the header has a :attr:`~Authorization.backend_origin` (a workspace route), the request is
    sent there instead (:meth:`Authorization.route_url`: path and query kept, the retry routed by
    its replacement) and a redirect answer raises :class:`RoutedRedirectRefused` instead of being
    followed. httpx follows redirects before this flow sees them, so a client created with
    ``follow_redirects=True`` also needs the :func:`refuse_routed_redirects` event hook. Requests
    without a route are sent and answered exactly as asked.

    Give it a :class:`BrokerClient` for ``httpx.AsyncClient`` or a :class:`SyncBrokerClient` for
    ``httpx.Client``::

        async with BrokerClient(target) as broker, httpx.AsyncClient(
            auth=BrokerAuth(broker, thread_id="thread-42")
        ) as http:
            response = await http.get(f"{base_url}/protected")

    Args:
        broker: the client that supplies headers.
        thread_id: the conversation thread (``None``: the background task).
        identity: the broker identity (default: the client's).
        bearer_only: always a Bearer.
        min_remaining: the header must stay valid at least this many seconds.
        rejection_statuses: statuses that mean "this header was refused" (401 and/or 403).
    """

    # The body is read up front so that the retry after a 401 can send it again.
    requires_request_body = True

    def __init__(
        self,
        broker: BrokerClient | SyncBrokerClient,
        *,
        thread_id: str | None = None,
        identity: str | None = None,
        bearer_only: bool = False,
        min_remaining: float | None = None,
        rejection_statuses: Collection[int] = DEFAULT_REJECTION_STATUSES,
    ) -> None:
        self._broker = broker
        self._thread_id = thread_id
        self._identity = identity
        self._bearer_only = bearer_only
        self._min_remaining = min_remaining
        self._statuses = frozenset(rejection_statuses)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow for ``httpx.Client`` (needs a :class:`SyncBrokerClient`).

        Raises:
            TypeError: the broker client is the asyncio one.
            RoutedRedirectRefused: a routed request was answered with a redirect.
        """
        broker = self._broker
        if not isinstance(broker, SyncBrokerClient):
            raise TypeError("BrokerAuth with httpx.Client needs a SyncBrokerClient")
        authorization = broker.get_authorization(
            self._thread_id,
            identity=self._identity,
            bearer_only=self._bearer_only,
            min_remaining=self._min_remaining,
        )
        target = _Target(request)
        target.apply(request, authorization)
        apply_headers(request, authorization)
        response = yield request
        _refuse_routed_redirect(request, response)
        if response.status_code in self._statuses:
            replacement = broker.report_rejection(
                authorization,
                response.status_code,
                thread_id=self._thread_id,
                identity=self._identity,
            )
            if self._bearer_only:
                # A report answers with a default-mode header; a bearer-only call asks again.
                replacement = broker.get_authorization(
                    self._thread_id, identity=self._identity, bearer_only=True
                )
            target.apply(request, replacement)
            apply_headers(request, replacement, previous=authorization)
            response = yield request
            _refuse_routed_redirect(request, response)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow for ``httpx.AsyncClient`` (needs a :class:`BrokerClient`).

        Raises:
            TypeError: the broker client is the blocking one.
            RoutedRedirectRefused: a routed request was answered with a redirect.
        """
        broker = self._broker
        if not isinstance(broker, BrokerClient):
            raise TypeError("BrokerAuth with httpx.AsyncClient needs a BrokerClient")
        authorization = await broker.get_authorization(
            self._thread_id,
            identity=self._identity,
            bearer_only=self._bearer_only,
            min_remaining=self._min_remaining,
        )
        target = _Target(request)
        target.apply(request, authorization)
        apply_headers(request, authorization)
        response = yield request
        _refuse_routed_redirect(request, response)
        if response.status_code in self._statuses:
            replacement = await broker.report_rejection(
                authorization,
                response.status_code,
                thread_id=self._thread_id,
                identity=self._identity,
            )
            if self._bearer_only:
                # A report answers with a default-mode header; a bearer-only call asks again.
                replacement = await broker.get_authorization(
                    self._thread_id, identity=self._identity, bearer_only=True
                )
            target.apply(request, replacement)
            apply_headers(request, replacement, previous=authorization)
            response = yield request
            _refuse_routed_redirect(request, response)
