"""BrokerAuth (httpx) against a real broker and the control-plane emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from broker_harness import ACCOUNT_ID, BrokerHarness

from credential_broker_client import BrokerClient, SyncBrokerClient
from credential_broker_client.httpx_auth import BrokerAuth


@pytest.fixture(name="client")
async def fixture_client(harness: BrokerHarness) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(harness.address, timeout=10.0) as client:
        yield client


@pytest.fixture(name="sync_client")
def fixture_sync_client(harness: BrokerHarness) -> Iterator[SyncBrokerClient]:
    with SyncBrokerClient(harness.address, timeout=10.0) as client:
        yield client


class TestAsyncClient:
    async def test_adds_the_header_and_companions(
        self, harness: BrokerHarness, client: BrokerClient
    ) -> None:
        """Every request carries the broker's header and its companion headers."""
        async with httpx.AsyncClient(auth=BrokerAuth(client, thread_id="t-1"), timeout=10) as http:
            response = await http.get(f"{harness.base_url}/protected")

        assert response.status_code == 200, response.text
        assert response.request.headers["ChatGPT-Account-ID"] == ACCOUNT_ID
        assert response.request.headers["Authorization"].startswith("AgentAssertion ")
        assert response.json()["task_id"] == (await client.get_authorization("t-1")).task_id

    async def test_recovers_from_a_revoked_task(
        self, harness: BrokerHarness, client: BrokerClient
    ) -> None:
        """A 401 is reported once and the request retried once with the replacement: it succeeds."""
        revoked = await client.get_authorization()
        harness.revoke_task(revoked.task_id)

        async with httpx.AsyncClient(auth=BrokerAuth(client), timeout=10) as http:
            response = await http.post(f"{harness.base_url}/protected", json={"n": 1})

        assert response.status_code == 200, response.text
        assert [r.status_code for r in response.history] == [401]
        assert response.history[0].json()["reason"] == "task_revoked"
        assert response.json()["task_id"] != revoked.task_id
        assert response.request.content == b'{"n":1}'
        assert harness.rpc_count("ReportRejection") == 1
        assert client.stats.rejections_reported == 1
        # the next request uses the replacement straight from the cache: no second 401
        async with httpx.AsyncClient(auth=BrokerAuth(client), timeout=10) as http:
            again = await http.get(f"{harness.base_url}/protected")
        assert again.status_code == 200
        assert again.history == []

    async def test_second_refusal_is_returned(
        self, harness: BrokerHarness, client: BrokerClient
    ) -> None:
        """A 401 after the retry is the caller's to handle: one report, one retry, no loop."""
        harness.inject_fault("protected", status=401, count=2)

        async with httpx.AsyncClient(auth=BrokerAuth(client), timeout=10) as http:
            response = await http.get(f"{harness.base_url}/protected")

        assert response.status_code == 401
        assert len(response.history) == 1
        assert harness.rpc_count("ReportRejection") == 1

    async def test_needs_the_asyncio_client(self, sync_client: SyncBrokerClient) -> None:
        """An AsyncClient with the blocking broker client is a TypeError, not a blocked loop."""
        async with httpx.AsyncClient(auth=BrokerAuth(sync_client)) as http:
            with pytest.raises(TypeError, match="needs a BrokerClient"):
                await http.get("http://127.0.0.1:9/never-sent")


class TestSyncClient:
    def test_recovers_from_a_revoked_task(
        self, harness: BrokerHarness, sync_client: SyncBrokerClient
    ) -> None:
        """httpx.Client with a SyncBrokerClient: 401, one report, one retry, success."""
        revoked = sync_client.get_authorization("t-9")
        harness.revoke_task(revoked.task_id)

        with httpx.Client(auth=BrokerAuth(sync_client, thread_id="t-9"), timeout=10) as http:
            response = http.get(f"{harness.base_url}/protected")

        assert response.status_code == 200, response.text
        assert [r.status_code for r in response.history] == [401]
        assert response.json()["task_id"] != revoked.task_id
        assert harness.rpc_count("ReportRejection") == 1

    def test_bearer_only(self, harness: BrokerHarness, sync_client: SyncBrokerClient) -> None:
        """``bearer_only`` sends the account's Bearer."""
        with httpx.Client(auth=BrokerAuth(sync_client, bearer_only=True), timeout=10) as http:
            response = http.get(f"{harness.base_url}/protected")

        assert response.status_code == 200, response.text
        assert response.json()["scheme"] == "Bearer"

    def test_needs_the_blocking_client(self, client: BrokerClient) -> None:
        """httpx.Client with the asyncio broker client is a TypeError."""
        with (
            httpx.Client(auth=BrokerAuth(client)) as http,
            pytest.raises(TypeError, match="needs a SyncBrokerClient"),
        ):
            http.get("http://127.0.0.1:9/never-sent")
