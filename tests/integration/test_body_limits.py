"""Every body the broker reads from the network is capped: 48 MiB answers are refused at the cap.

The OAuth token endpoint and the JWKS answer through the real emulator, whose injected faults
replace an answer with a raw body. Bytes read are counted where httpx hands the body up from the
socket (a counting transport around the real one); for a real ``credential-broker serve`` process,
its resident memory is read from ``/proc`` (socket reads do not show in ``/proc/PID/io``). A refresh whose answer is refused was still *sent*: the refresh token is spent, so the broker
treats it as a lost answer (account-refresh rules) and never sends that refresh token again.

Two shapes the emulator cannot send are served by a small HTTP/1.1 server on loopback in this
module: a chunked body without ``Content-Length``, and a gzip body that inflates to 48 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.identity_sources import JwksCache
from broker.adapters.oauth import OAuthTokenEndpoint
from broker.errors import ControlPlaneUnavailable, RefreshOutcomeUnknown, RefreshUnavailable
from broker.secret import Secret
from cb_emulator import Emulator
from tests.conftest import ManualClock
from tests.fixtures.fleet import Report, StartFleet

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
HUGE = 48 * MIB
OAUTH_CAP = 64 * 1024
JWKS_CAP = 256 * 1024
# httpcore reads the socket 64 KiB at a time: a capped read may hold one read past the cap.
ONE_READ = 64 * 1024
BEARER_ONLY = pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)


def huge_json(size: int = HUGE) -> str:
    """A JSON object of about ``size`` bytes, as a hostile token endpoint could answer."""
    return '{"access_token": "' + "A" * size + '"}'


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, counter: _CountingTransport) -> None:
        self._inner = inner
        self._counter = counter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._counter.body_bytes += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting the response body bytes it hands up from the socket."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.body_bytes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CountingStream(response.stream, self),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture(name="counting")
async def fixture_counting() -> AsyncIterator[tuple[httpx.AsyncClient, _CountingTransport]]:
    """An ``httpx.AsyncClient`` like the broker's (no redirects) over a counting transport."""
    transport = _CountingTransport()
    async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
        yield client, transport


# -- a raw HTTP/1.1 server for the shapes the emulator cannot send --------------------------------


Body = Callable[[asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(head: bytes, body: Body) -> AsyncIterator[str]:
    """Serve every request with ``head`` then ``body(writer)``; yields the base URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(head)
            await body(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: what this server is for
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def chunked_forever(sent: list[int], total: int = HUGE) -> Body:
    """A chunked body of ``total`` bytes, written as fast as the client takes it."""

    async def write(writer: asyncio.StreamWriter) -> None:
        piece = b"A" * ONE_READ
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        while sent[0] < total:
            writer.write(frame)
            await writer.drain()
            sent[0] += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return write


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def gzip_bomb_head(size: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
    )


# -- the OAuth token endpoint --------------------------------------------------------------------


class TestOAuthAnswer:
    async def test_huge_answer_is_refused_at_the_cap(
        self,
        emulator: Emulator,
        counting: tuple[httpx.AsyncClient, _CountingTransport],
        fleet_report: Report,
    ) -> None:
        """A 48 MiB 200 answer is refused unread; the refresh it answers counts as lost."""
        client, transport = counting
        login = emulator.create_login("acct-dev", user_id="user-dev")
        endpoint = OAuthTokenEndpoint(
            client, issuer=emulator.issuer_url, client_id=emulator.oauth_client_id
        )
        emulator.inject_fault("oauth_token", after_handler=True, body=huge_json())
        with pytest.raises(RefreshOutcomeUnknown) as caught:
            await endpoint.refresh(Secret(str(login["tokens"]["refresh_token"])))  # type: ignore[index]
        fleet_report(body_bytes_read=transport.body_bytes, cap=OAUTH_CAP)
        assert transport.body_bytes <= ONE_READ
        assert f"exceeds the {OAUTH_CAP}-byte limit" in caught.value.message
        assert "refresh token" in caught.value.message
        assert emulator.stats().refreshes == 1  # the provider did rotate the token

    async def test_chunked_answer_stops_at_the_cap(
        self, counting: tuple[httpx.AsyncClient, _CountingTransport], fleet_report: Report
    ) -> None:
        """Without a Content-Length, reading stops within one read past the cap."""
        client, transport = counting
        sent = [0]
        async with raw_server(CHUNKED_HEAD, chunked_forever(sent)) as url:
            endpoint = OAuthTokenEndpoint(client, issuer=url, client_id="client")
            with pytest.raises(RefreshOutcomeUnknown) as caught:
                await endpoint.refresh(Secret("refresh-token"))
        fleet_report(body_bytes_read=transport.body_bytes, cap=OAUTH_CAP, server_sent=sent[0])
        assert OAUTH_CAP < transport.body_bytes <= OAUTH_CAP + ONE_READ
        assert f"exceeds the {OAUTH_CAP}-byte limit" in caught.value.message
        assert sent[0] < HUGE

    async def test_gzip_bomb_is_not_inflated(
        self, counting: tuple[httpx.AsyncClient, _CountingTransport], fleet_report: Report
    ) -> None:
        """A small gzip body that inflates to 48 MiB is refused with little memory allocated."""
        client, _transport = counting
        bomb = gzip.compress(huge_json().encode(), compresslevel=9)
        assert len(bomb) < OAUTH_CAP

        async def write(writer: asyncio.StreamWriter) -> None:
            writer.write(bomb)
            await writer.drain()

        async with raw_server(gzip_bomb_head(len(bomb)), write) as url:
            endpoint = OAuthTokenEndpoint(client, issuer=url, client_id="client")
            tracemalloc.start()
            try:
                with pytest.raises(RefreshOutcomeUnknown) as caught:
                    await endpoint.refresh(Secret("refresh-token"))
                _current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        fleet_report(compressed_bytes=len(bomb), peak_allocated_bytes=peak)
        assert peak < 2 * MIB, f"{peak / MIB:.1f} MiB allocated while reading"
        assert f"exceeds the {OAUTH_CAP}-byte limit" in caught.value.message

    async def test_huge_error_answer_keeps_its_meaning(
        self,
        emulator: Emulator,
        counting: tuple[httpx.AsyncClient, _CountingTransport],
        fleet_report: Report,
    ) -> None:
        """A 48 MiB 503 is still 'nothing issued', read no further than the cap."""
        client, transport = counting
        login = emulator.create_login("acct-dev", user_id="user-dev")
        endpoint = OAuthTokenEndpoint(
            client, issuer=emulator.issuer_url, client_id=emulator.oauth_client_id
        )
        emulator.inject_fault("oauth_token", status=503, body=huge_json())
        with pytest.raises(RefreshUnavailable):
            await endpoint.refresh(Secret(str(login["tokens"]["refresh_token"])))  # type: ignore[index]
        fleet_report(body_bytes_read=transport.body_bytes, cap=OAUTH_CAP)
        assert transport.body_bytes <= OAUTH_CAP + ONE_READ
        assert emulator.stats().refreshes == 0


# -- the JWKS -------------------------------------------------------------------------------------


class TestJwks:
    async def test_huge_jwks_is_refused_at_the_cap(
        self,
        emulator: Emulator,
        counting: tuple[httpx.AsyncClient, _CountingTransport],
        clock: ManualClock,
        fleet_report: Report,
    ) -> None:
        """A 48 MiB JWKS with nothing cached is a precise ControlPlaneUnavailable, read unread."""
        client, transport = counting
        jwks = JwksCache(client, emulator.jwks_url, clock)
        emulator.inject_fault("jwks", body=json.dumps({"keys": [], "pad": "A" * HUGE}))
        with pytest.raises(ControlPlaneUnavailable) as caught:
            await jwks.keyset(emulator.jwks_signing_kid)
        fleet_report(body_bytes_read=transport.body_bytes, cap=JWKS_CAP)
        assert transport.body_bytes <= ONE_READ
        assert f"exceeds the {JWKS_CAP}-byte limit" in caught.value.message
        assert caught.value.operation == "jwks"

    async def test_huge_refetch_keeps_the_cached_keys(
        self,
        emulator: Emulator,
        counting: tuple[httpx.AsyncClient, _CountingTransport],
        clock: ManualClock,
    ) -> None:
        """When a refetch answers 48 MiB, the keys fetched before stay in use."""
        client, transport = counting
        jwks = JwksCache(client, emulator.jwks_url, clock, ttl=60)
        kid = emulator.jwks_signing_kid
        first = await jwks.keyset(kid)
        clock.advance(61)
        before = transport.body_bytes
        emulator.inject_fault("jwks", body=json.dumps({"keys": [], "pad": "A" * HUGE}))
        assert await jwks.keyset(kid) == first
        assert transport.body_bytes - before <= ONE_READ
        assert emulator.stats().requests_by_endpoint["jwks"] == 2

    async def test_chunked_jwks_stops_at_the_cap(
        self,
        counting: tuple[httpx.AsyncClient, _CountingTransport],
        clock: ManualClock,
        fleet_report: Report,
    ) -> None:
        """Without a Content-Length, the JWKS read stops within one read past its cap."""
        client, transport = counting
        sent = [0]
        async with raw_server(CHUNKED_HEAD, chunked_forever(sent)) as url:
            with pytest.raises(ControlPlaneUnavailable) as caught:
                await JwksCache(client, url + "/jwks", clock).keyset("kid")
        fleet_report(body_bytes_read=transport.body_bytes, cap=JWKS_CAP, server_sent=sent[0])
        assert JWKS_CAP < transport.body_bytes <= JWKS_CAP + ONE_READ
        assert f"exceeds the {JWKS_CAP}-byte limit" in caught.value.message


# -- a real broker process --------------------------------------------------------------------------


def _memory(pid: int) -> dict[str, int]:
    """Resident memory now (``VmRSS``) and at its peak (``VmHWM``) of a process, in bytes."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) * 1024
    return figures


async def test_broker_refuses_a_huge_token_answer_and_keeps_serving(
    start_fleet: StartFleet,
    emulator: Emulator,
    redis_url: str,
    tmp_path: Path,
    fleet_report: Report,
) -> None:
    """A refresh answered with 48 MiB: the broker's memory barely moves, it keeps serving the valid
    token, and the spent refresh token is never sent again."""
    auth_file = tmp_path / "auth.json"
    login: dict[str, Any] = emulator.create_login("acct-dev", user_id="user-dev")
    auth_file.write_text(json.dumps(login))
    fleet = await start_fleet(
        redis_url=redis_url,
        identity="t" + uuid.uuid4().hex,
        replicas=1,
        env={
            "BROKER_ACCOUNT_SOURCE": "login",
            "BROKER_ACCOUNT_FILE": str(auth_file),
            "BROKER_OAUTH_ISSUER": emulator.issuer_url,
            "BROKER_OAUTH_CLIENT_ID": emulator.oauth_client_id,
            "BROKER_ACCOUNT_REFRESH_MARGIN": "60",
        },
    )
    replica = fleet[0]
    old = (await replica.stub.GetAuthorization(BEARER_ONLY)).authorization.header_value
    assert old == f"Bearer {login['tokens']['access_token']}"
    emulator.inject_fault("oauth_token", after_handler=True, body=huge_json())
    report = pb.ReportRejectionRequest(header_value=old, http_status=401)

    before = await asyncio.to_thread(_memory, replica.pid)
    await replica.stub.ReportRejection(report)
    failed = await replica.wait_for_event("account.refresh_failed", within=30)
    after = await asyncio.to_thread(_memory, replica.pid)

    # Peak after minus resident before: an upper bound of what the refresh cost.
    growth = after["VmHWM"] - before["VmRSS"]
    fleet_report(
        rss_before_mib=round(before["VmRSS"] / MIB, 1),
        peak_after_mib=round(after["VmHWM"] / MIB, 1),
    )
    assert replica.running
    assert failed["reason"] == "outcome_unknown"
    assert f"exceeds the {OAUTH_CAP}-byte limit" in failed["detail"]
    assert growth < 16 * MIB, f"resident memory grew by {growth / MIB:.1f} MiB"
    # Lost-answer rules: the valid access token keeps being served, the refresh is not resent.
    assert (await replica.stub.GetAuthorization(BEARER_ONLY)).authorization.header_value == old
    await replica.stub.ReportRejection(report)
    stats = emulator.stats()
    assert stats.requests_by_endpoint["oauth_token"] == 1
    assert stats.refreshes == 1
    assert stats.refresh_token_reuse == 0
    assert replica.stderr_path.read_text() == ""
