"""BrokerClient against a real broker and the control-plane emulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from broker_harness import ACCOUNT_ID, BrokerHarness, eventually

from credential_broker_client import (
    Backoff,
    BrokerClient,
    BrokerUnavailableError,
    ClientClosedError,
    FallbackReason,
    InvalidRequestError,
    Scheme,
    TaskKind,
    UnknownIdentityError,
)

# Long enough that a broken watch stays down for the whole test; short ones are set where needed.
_SLOW_RECONNECT = Backoff(initial=30.0, maximum=30.0)


@pytest.fixture(name="client")
async def fixture_client(harness: BrokerHarness) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(harness.address, timeout=10.0) as client:
        yield client


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield http


class TestHeaders:
    async def test_header_is_accepted_by_the_control_plane(
        self, harness: BrokerHarness, client: BrokerClient, http: httpx.AsyncClient
    ) -> None:
        """A background header and its companions are accepted by the emulator's protected call."""
        auth = await client.get_authorization()

        response = await http.get(f"{harness.base_url}/protected", headers=auth.http_headers())

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["scheme"] == "AgentAssertion"
        assert body["task_id"] == auth.task_id
        assert auth.scheme is Scheme.AGENT_ASSERTION
        assert auth.task_kind is TaskKind.BACKGROUND
        assert auth.fallback_reason is FallbackReason.NONE
        assert auth.headers["ChatGPT-Account-ID"] == ACCOUNT_ID
        assert auth.expires_at is not None
        assert auth.remaining() is not None

    async def test_thread_gets_its_own_task(
        self, harness: BrokerHarness, client: BrokerClient, http: httpx.AsyncClient
    ) -> None:
        """A thread's header names the thread's own task, which the control plane accepts."""
        background = await client.get_authorization()
        thread = await client.get_authorization("thread-42")

        response = await http.get(f"{harness.base_url}/protected", headers=thread.http_headers())

        assert response.status_code == 200, response.text
        assert thread.task_kind is TaskKind.THREAD
        assert thread.thread_id == "thread-42"
        assert thread.task_id != background.task_id

    async def test_bearer_only(
        self, harness: BrokerHarness, client: BrokerClient, http: httpx.AsyncClient
    ) -> None:
        """``bearer_only`` returns the account's Bearer and says it was requested."""
        auth = await client.get_authorization(bearer_only=True)

        response = await http.get(f"{harness.base_url}/protected", headers=auth.http_headers())

        assert response.status_code == 200, response.text
        assert auth.scheme is Scheme.BEARER
        assert auth.fallback_reason is FallbackReason.REQUESTED
        assert auth.header_value.startswith("Bearer ")

    async def test_repr_hides_the_header(self, client: BrokerClient) -> None:
        """Logging an Authorization does not leak its value."""
        auth = await client.get_authorization()

        assert auth.header_value not in repr(auth)
        assert auth.header_value.split(" ", 1)[1] not in str(auth)


class TestCache:
    async def test_served_from_memory_after_the_first_call(
        self, harness: BrokerHarness, client: BrokerClient
    ) -> None:
        """After the first call, headers come from the watch-fed cache: no RPC reaches the broker."""
        first = await client.get_authorization()
        calls_before = harness.rpc_count("GetAuthorization")

        started = time.perf_counter()
        results = [await client.get_authorization() for _ in range(10_000)]
        elapsed = time.perf_counter() - started

        assert all(r is first for r in results)
        assert harness.rpc_count("GetAuthorization") == calls_before == 0
        assert client.stats.cache_hits == 10_000
        assert client.stats.unary_calls == 0
        assert client.stats.watches == 1
        # microseconds each; the bound is loose so that a slow CI machine still passes
        assert elapsed < 1.0, f"{elapsed / 10_000 * 1e6:.1f} µs per cached header"

    async def test_cached_never_does_io(self, client: BrokerClient) -> None:
        """``cached()`` answers None for an unknown key and the header once the stream has it."""
        assert client.cached() is None

        auth = await client.get_authorization()

        assert client.cached() is auth
        assert client.cached("another-thread") is None

    async def test_min_remaining_beyond_the_cached_header_asks_the_broker(
        self, harness: BrokerHarness, client: BrokerClient
    ) -> None:
        """A header that would not last ``min_remaining`` is not served from memory."""
        auth = await client.get_authorization()
        remaining = auth.remaining()
        assert remaining is not None

        with pytest.raises(InvalidRequestError):
            # the broker refuses a min_remaining beyond its assertion TTL: the call did reach it
            await client.get_authorization(min_remaining=remaining + 3600)

        assert client.stats.unary_calls == 1

    async def test_watch_receives_a_replacement_made_by_another_worker(
        self, harness: BrokerHarness, client: BrokerClient
    ) -> None:
        """When another worker reports a rejection, this worker's cache gets the new header pushed."""
        mine = await client.get_authorization()
        async with BrokerClient(harness.address) as other:
            theirs = await other.get_authorization()
            assert theirs.header_value == mine.header_value
            harness.revoke_task(mine.task_id)

            replacement = await other.report_rejection(theirs)

        def pushed() -> bool:
            cached = client.cached()
            return cached is not None and cached.task_id == replacement.task_id

        await eventually(pushed, what="the replacement was pushed on the watch stream")
        assert client.stats.unary_calls == 0

    async def test_max_watches_closes_the_least_recently_used(self, harness: BrokerHarness) -> None:
        """With ``max_watches=2`` a third key closes the least recently used stream."""
        async with BrokerClient(harness.address, max_watches=2) as client:
            await client.get_authorization("t-1")
            await client.get_authorization("t-2")
            await client.get_authorization("t-1")
            await client.get_authorization("t-3")

            await eventually(lambda: client.stats.watches == 2)
            assert client.cached("t-1") is not None
            assert client.cached("t-2") is None
            assert client.cached("t-3") is not None

    async def test_a_retired_watch_leaves_its_successor_alone(self, harness: BrokerHarness) -> None:
        """Reopening a key whose stream is being closed keeps serving the new stream's header."""
        async with BrokerClient(harness.address, max_watches=1) as client:
            await client.get_authorization("t-1")
            await client.get_authorization("t-2")  # retires t-1's stream
            again = await client.get_authorization("t-1")  # retires t-2's, reopens t-1's

            await eventually(lambda: client.cached("t-2") is None, what="t-2 was retired")
            assert client.cached("t-1") is again
            assert client.stats.watches == 1


class TestStreamDown:
    async def test_unary_fallback_while_the_stream_is_down(self, harness: BrokerHarness) -> None:
        """While the watch stream is down, every call is a unary GetAuthorization that succeeds."""
        async with BrokerClient(harness.address, backoff=_SLOW_RECONNECT) as client:
            await client.get_authorization()
            harness.stop_broker()
            await eventually(lambda: client.cached() is None, what="the cache was withdrawn")
            harness.start_broker()  # same port; the watch waits out its 30 s backoff

            first = await client.get_authorization()
            second = await client.get_authorization()

            assert first.scheme is Scheme.AGENT_ASSERTION
            assert second.task_id == first.task_id
            assert client.stats.unary_calls == 2
            assert harness.rpc_count("GetAuthorization") == 2
            assert client.stats.stream_failures >= 1

    async def test_stream_reconnects_and_the_cache_serves_again(
        self, harness: BrokerHarness
    ) -> None:
        """After a broker restart the watch reconnects by itself and headers come from memory."""
        fast = Backoff(initial=0.05, maximum=0.2)
        async with BrokerClient(harness.address, backoff=fast) as client:
            before = await client.get_authorization()
            harness.stop_broker()
            await eventually(lambda: client.cached() is None, what="the cache was withdrawn")
            harness.start_broker()

            await eventually(lambda: client.cached() is not None, what="the watch reconnected")
            after = await client.get_authorization()

            assert after.agent_runtime_id != before.agent_runtime_id  # a new broker, a new identity
            assert harness.rpc_count("GetAuthorization") == 0

    async def test_broker_down_serves_the_last_valid_header(self, harness: BrokerHarness) -> None:
        """With the broker gone, the last header is served while valid (stale-if-error)."""
        async with BrokerClient(harness.address, backoff=_SLOW_RECONNECT, timeout=2.0) as client:
            auth = await client.get_authorization()
            harness.stop_broker()
            await eventually(lambda: client.cached() is None, what="the cache was withdrawn")

            assert await client.get_authorization() is auth
            assert client.stats.stale_served == 1
            remaining = auth.remaining()
            assert remaining is not None
            with pytest.raises(BrokerUnavailableError) as caught:
                await client.get_authorization(min_remaining=remaining + 60)
            assert caught.value.retryable
            assert caught.value.code in {
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            }


class TestErrors:
    async def test_malformed_thread_id(self, client: BrokerClient) -> None:
        """A malformed thread id is INVALID_ARGUMENT with the broker's ErrorInfo reason."""
        with pytest.raises(InvalidRequestError) as caught:
            await client.get_authorization("has whitespace")

        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == "INVALID_ARGUMENT"
        assert not caught.value.retryable
        assert client.stats.watches == 0  # a refused request stops its watch for good

    async def test_unknown_identity(self, client: BrokerClient) -> None:
        """An identity the broker does not have is NOT_FOUND / UNKNOWN_IDENTITY."""
        with pytest.raises(UnknownIdentityError) as caught:
            await client.get_authorization(identity="nobody")

        assert caught.value.reason == "UNKNOWN_IDENTITY"

    async def test_closed_client(self, harness: BrokerHarness) -> None:
        """After ``aclose()`` the streams are gone and calls raise ClientClosedError."""
        client = BrokerClient(harness.address)
        await client.get_authorization()
        await client.aclose()
        await client.aclose()  # idempotent

        assert client.closed
        assert client.stats.watches == 0
        with pytest.raises(ClientClosedError):
            await client.get_authorization()
