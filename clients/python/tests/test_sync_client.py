"""SyncBrokerClient and BrokerRequestsAuth (requests) against a real broker and the emulator."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from broker_harness import BrokerHarness

from credential_broker_client import ClientClosedError, Scheme, SyncBrokerClient
from credential_broker_client.requests_auth import BrokerRequestsAuth


@pytest.fixture(name="client")
def fixture_client(harness: BrokerHarness) -> Iterator[SyncBrokerClient]:
    with SyncBrokerClient(harness.address, timeout=10.0) as client:
        yield client


@pytest.fixture(name="session")
def fixture_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


class TestSyncBrokerClient:
    def test_header_and_cache(self, harness: BrokerHarness, client: SyncBrokerClient) -> None:
        """The first call asks the broker; later calls are served from memory in this thread."""
        first = client.get_authorization()

        assert first.scheme is Scheme.AGENT_ASSERTION
        assert all(client.get_authorization() is first for _ in range(1000))
        assert client.stats.cache_hits == 1000
        assert harness.rpc_count("GetAuthorization") == 0

    def test_shared_between_threads(self, client: SyncBrokerClient) -> None:
        """Eight threads asking for four keys at once all get their key's header."""

        def work(n: int) -> str:
            return client.get_authorization(f"thread-{n % 4}").thread_id

        with ThreadPoolExecutor(max_workers=8) as pool:
            threads = list(pool.map(work, range(200)))

        assert threads == [f"thread-{n % 4}" for n in range(200)]
        assert client.stats.watches == 4

    def test_close_stops_the_loop_thread(self, harness: BrokerHarness) -> None:
        """``close()`` ends the background thread; calls afterwards raise ClientClosedError."""
        before = set(threading.enumerate())
        client = SyncBrokerClient(harness.address)
        client.get_authorization()
        (thread,) = [
            t
            for t in threading.enumerate()
            if t not in before and t.name == "credential-broker-client"
        ]

        client.close()
        client.close()  # idempotent

        assert not thread.is_alive()
        with pytest.raises(ClientClosedError):
            client.get_authorization()


class TestRequestsAuth:
    def test_adds_the_header_and_companions(
        self, harness: BrokerHarness, client: SyncBrokerClient, session: requests.Session
    ) -> None:
        """A requests call carries the header and companions and is accepted."""
        session.auth = BrokerRequestsAuth(client, thread_id="t-1")

        response = session.get(f"{harness.base_url}/protected", timeout=10)

        assert response.status_code == 200, response.text
        assert response.request.headers["ChatGPT-Account-ID"] == "acct-dev"

    def test_recovers_from_a_revoked_task(
        self, harness: BrokerHarness, client: SyncBrokerClient, session: requests.Session
    ) -> None:
        """401 → one ReportRejection → one retry with the replacement → 200."""
        revoked = client.get_authorization()
        harness.revoke_task(revoked.task_id)
        session.auth = BrokerRequestsAuth(client)

        response = session.post(f"{harness.base_url}/protected", json={"n": 1}, timeout=10)

        assert response.status_code == 200, response.text
        assert [r.status_code for r in response.history] == [401]
        assert response.json()["task_id"] != revoked.task_id
        assert response.request.body == b'{"n": 1}'
        assert harness.rpc_count("ReportRejection") == 1

    def test_second_refusal_is_returned(
        self, harness: BrokerHarness, client: SyncBrokerClient, session: requests.Session
    ) -> None:
        """A 401 after the retry is returned as it is: one report, one retry."""
        harness.inject_fault("protected", status=401, count=2)
        session.auth = BrokerRequestsAuth(client)

        response = session.get(f"{harness.base_url}/protected", timeout=10)

        assert response.status_code == 401
        assert len(response.history) == 1
        assert harness.rpc_count("ReportRejection") == 1
