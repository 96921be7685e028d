"""credential-broker-client: ``Authorization`` headers for worker fleets, from the credential broker.

::

    from credential_broker_client import BrokerClient

    async with BrokerClient("127.0.0.1:50051") as broker:
        auth = await broker.get_authorization(thread_id="thread-42")
        await http.get(url, headers=auth.http_headers())

The HTTP plug-ins live in submodules so that their libraries stay optional:
``credential_broker_client.httpx_auth.BrokerAuth`` (extra ``httpx``) and
``credential_broker_client.requests_auth.BrokerRequestsAuth`` (extra ``requests``).
"""

from __future__ import annotations

from credential_broker_client._cache import Backoff
from credential_broker_client._version import __version__
from credential_broker_client.authorization import (
    Authorization,
    FallbackReason,
    Scheme,
    TaskKind,
)
from credential_broker_client.client import BrokerClient, ClientStats
from credential_broker_client.errors import (
    BrokerClientError,
    BrokerUnavailableError,
    CallerDeniedError,
    ClientClosedError,
    CredentialUnavailableError,
    InvalidRequestError,
    RoutedRedirectRefused,
    UnknownIdentityError,
)
from credential_broker_client.sync import SyncBrokerClient

__all__ = [
    "Authorization",
    "Backoff",
    "BrokerClient",
    "BrokerClientError",
    "BrokerUnavailableError",
    "CallerDeniedError",
    "ClientClosedError",
    "ClientStats",
    "CredentialUnavailableError",
    "FallbackReason",
    "InvalidRequestError",
    "RoutedRedirectRefused",
    "Scheme",
    "SyncBrokerClient",
    "TaskKind",
    "UnknownIdentityError",
    "__version__",
]
