"""The public API as a type checker sees it; checked with ``mypy --strict`` (never run by pytest).

Each function is written the way a worker would use the package. ``assert_type`` pins the types
users rely on, so a change that loosens them (to ``Any``, to an optional, ...) fails the check.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import assert_type

import grpc
import httpx
import requests

from credential_broker_client import (
    Authorization,
    Backoff,
    BrokerClient,
    BrokerClientError,
    BrokerUnavailableError,
    ClientStats,
    FallbackReason,
    RoutedRedirectRefused,
    Scheme,
    SyncBrokerClient,
    TaskKind,
)
from credential_broker_client.httpx_auth import BrokerAuth, refuse_routed_redirects
from credential_broker_client.requests_auth import BrokerRequestsAuth


async def async_worker(target: str, url: str) -> int:
    async with BrokerClient(target, identity="main", timeout=2.0, backoff=Backoff()) as broker:
        auth = await broker.get_authorization("thread-1", bearer_only=False, min_remaining=5.0)
        assert_type(auth, Authorization)
        assert_type(broker.cached("thread-1"), Authorization | None)
        assert_type(auth.header_value, str)
        assert_type(auth.scheme, Scheme)
        assert_type(auth.task_kind, TaskKind)
        assert_type(auth.fallback_reason, FallbackReason)
        assert_type(auth.expires_at, datetime | None)
        assert_type(auth.headers, Mapping[str, str])
        assert_type(auth.http_headers(), dict[str, str])
        assert_type(auth.remaining(), float | None)
        assert_type(auth.is_assertion, bool)
        assert_type(auth.backend_origin, str)
        assert_type(auth.route_url(url), str)
        async with httpx.AsyncClient(auth=BrokerAuth(broker, thread_id="thread-1")) as http:
            response = await http.get(url)
        if response.status_code == 401:
            replacement = await broker.report_rejection(auth, 401)
            assert_type(replacement, Authorization)
        assert_type(broker.stats, ClientStats)
        assert_type(broker.stats.cache_hits, int)
        return response.status_code


def sync_worker(target: str, url: str) -> int:
    with SyncBrokerClient(target) as broker:
        auth = broker.get_authorization()
        assert_type(auth, Authorization)
        assert_type(broker.report_rejection(auth.header_value, 403), Authorization)
        with requests.Session() as session:
            session.auth = BrokerRequestsAuth(broker, bearer_only=True)
            first = session.get(url, timeout=5).status_code
        with httpx.Client(
            auth=BrokerAuth(broker),
            follow_redirects=True,
            event_hooks={"response": [refuse_routed_redirects]},
        ) as http:
            second = http.get(url).status_code
        return max(first, second)


def routed_redirect(error: RoutedRedirectRefused) -> int:
    assert_type(error.status_code, int)
    return error.status_code


def errors(error: BrokerClientError) -> bool:
    assert_type(error.code, grpc.StatusCode | None)
    assert_type(error.reason, str | None)
    assert_type(error.metadata, Mapping[str, str])
    assert_type(error.message, str)
    if isinstance(error, BrokerUnavailableError):
        return error.retryable
    return False
