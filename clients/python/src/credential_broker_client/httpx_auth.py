"""``BrokerAuth``: an ``httpx.Auth`` that signs requests with the broker's headers.

Needs the ``httpx`` extra (``pip install 'credential-broker-client[httpx]'``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Generator

import httpx

from credential_broker_client.authorization import Authorization
from credential_broker_client.client import BrokerClient
from credential_broker_client.sync import SyncBrokerClient

DEFAULT_REJECTION_STATUSES = frozenset({401})


def apply_headers(request: httpx.Request, authorization: Authorization) -> None:
    """Put the ``Authorization`` header and its companions on ``request`` (replacing old ones)."""
    for name, value in authorization.headers.items():
        request.headers[name] = value
    request.headers["Authorization"] = authorization.header_value


class BrokerAuth(httpx.Auth):
    """Adds the broker's header and companions to every request; recovers from one 401.

    When the control plane answers a status in ``rejection_statuses`` (401 by default), the header
    is reported with ``ReportRejection`` once and the request is sent once more with the
    replacement. A second refusal is returned to the caller as it is.

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
        apply_headers(request, authorization)
        response = yield request
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
            apply_headers(request, replacement)
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow for ``httpx.AsyncClient`` (needs a :class:`BrokerClient`).

        Raises:
            TypeError: the broker client is the blocking one.
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
        apply_headers(request, authorization)
        response = yield request
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
            apply_headers(request, replacement)
            yield request
