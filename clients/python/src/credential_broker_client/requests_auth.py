"""``BrokerRequestsAuth``: a ``requests`` auth that signs requests with the broker's headers.

Needs the ``requests`` extra (``pip install 'credential-broker-client[requests]'``).
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

import requests
from requests.auth import AuthBase

from credential_broker_client.authorization import Authorization
from credential_broker_client.errors import RoutedRedirectRefused
from credential_broker_client.sync import SyncBrokerClient

DEFAULT_REJECTION_STATUSES = frozenset({401})


def _apply(
    request: requests.PreparedRequest,
    authorization: Authorization,
    previous: Authorization | None = None,
) -> None:
    if previous is not None:  # the retry: drop the companions the replacement does not have
        current = {name.lower() for name in authorization.headers}
        for name in previous.headers:
            if name.lower() not in current:
                request.headers.pop(name, None)
    for name, value in authorization.headers.items():
        request.headers[name] = value
    request.headers["Authorization"] = authorization.header_value


def _refuse_redirect(response: requests.Response) -> None:
    if response.is_redirect:  # a 3xx with a Location
        status = response.status_code
        response.close()
        raise RoutedRedirectRefused(status)


class BrokerRequestsAuth(AuthBase):
    """Adds the broker's header and companions to every request; recovers from one 401.

    On a status in ``rejection_statuses`` (401 by default) a response hook reports the header with
    ``ReportRejection`` once and sends the request once more with the replacement (through the same
    connection adapter, so the retry does not run the hook again). A second refusal is returned as it
    is. Request bodies must be replayable (bytes or str, not a file or generator) for the retry.

    When the header has a :attr:`~Authorization.backend_origin` (a workspace route), the request is
    sent there instead (:meth:`Authorization.route_url`: path and query kept, the retry routed by
    its replacement), and a redirect answer raises :class:`RoutedRedirectRefused` from the response
    hook, before ``requests`` could follow it (whatever ``allow_redirects`` says). Requests without a
    route are sent and answered exactly as asked.

    ::

        with SyncBrokerClient(target) as broker, requests.Session() as http:
            http.auth = BrokerRequestsAuth(broker, thread_id="thread-42")
            response = http.get(f"{base_url}/protected", timeout=10)

    Args:
        broker: the client that supplies headers.
        thread_id: the conversation thread (``None``: the background task).
        identity: the broker identity (default: the client's).
        bearer_only: always a Bearer.
        min_remaining: the header must stay valid at least this many seconds.
        rejection_statuses: statuses that mean "this header was refused" (401 and/or 403).
    """

    def __init__(
        self,
        broker: SyncBrokerClient,
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

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        authorization = self._broker.get_authorization(
            self._thread_id,
            identity=self._identity,
            bearer_only=self._bearer_only,
            min_remaining=self._min_remaining,
        )
        # the caller's URL when routed: the retry is routed (or not) by its replacement
        original = request.url if authorization.backend_origin else None
        if original is not None:
            request.url = authorization.route_url(original)
        _apply(request, authorization)
        # register_hook() is untyped in types-requests; the hooks table is the same thing.
        hooks: dict[str, list[object]] = request.hooks
        hooks["response"].append(functools.partial(self._on_response, authorization, original))
        return request

    def _on_response(
        self,
        authorization: Authorization,
        original: str | None,
        response: requests.Response,
        **kwargs: Any,
    ) -> requests.Response:
        """The response hook for a request signed with ``authorization``.

        ``original`` is the caller's URL of a routed request, else ``None``.

        Raises:
            RoutedRedirectRefused: a routed request was answered with a redirect.
        """
        if original is not None:
            _refuse_redirect(response)
        if response.status_code not in self._statuses:
            return response
        sent = response.request.headers.get("Authorization")
        if sent is None:
            return response
        replacement = self._broker.report_rejection(
            sent, response.status_code, thread_id=self._thread_id, identity=self._identity
        )
        if self._bearer_only:
            # A report answers with a default-mode header; a bearer-only call asks again.
            replacement = self._broker.get_authorization(
                self._thread_id, identity=self._identity, bearer_only=True
            )
        # Release the refused response's connection before sending again (as HTTPDigestAuth does).
        _ = response.content
        response.close()
        retry = response.request.copy()
        if original is not None or replacement.backend_origin:
            retry.url = replacement.route_url(original or retry.url or "")
        _apply(retry, replacement, authorization)
        connection = response.connection
        second: requests.Response = connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        if replacement.backend_origin:
            _refuse_redirect(second)
        return second
