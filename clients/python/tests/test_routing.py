"""Workspace routing: ``Authorization.route_url`` and the plug-ins sending routed requests.

The broker does not hand out routes yet, so the plug-in tests take the real broker's headers (the
harness: real assertions, real ``ReportRejection``) and add a route to them in a subclass of the
client (:class:`_RoutedSyncClient`, :class:`_RoutedClient`). The control plane is played by real
HTTP servers on loopback (:class:`_Server`): the caller's base URL, the routed origin, and the
target of a redirect, each recording what reached it.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from types import MappingProxyType

import httpx
import pytest
import requests
from broker_harness import ACCOUNT_ID, BrokerHarness

from credential_broker_client import (
    Authorization,
    BrokerClient,
    BrokerClientError,
    RoutedRedirectRefused,
    Scheme,
    SyncBrokerClient,
)
from credential_broker_client._convert import authorization_from_proto
from credential_broker_client._proto.credential_broker.v1 import broker_pb2 as pb
from credential_broker_client.httpx_auth import (
    BrokerAuth,
    async_refuse_routed_redirects,
    refuse_routed_redirects,
)
from credential_broker_client.requests_auth import BrokerRequestsAuth

ROUTING_HEADER = "x-openai-account-routing-override"
PATH = "/backend-api/wham/tasks?limit=5&cursor=a%2Fb"


def _routed(authorization: Authorization, origin: str) -> Authorization:
    """``authorization`` with a workspace route, as the broker will hand it out."""
    return dataclasses.replace(
        authorization,
        backend_origin=origin,
        headers=MappingProxyType({**authorization.headers, ROUTING_HEADER: "us"}),
    )


class TestRouteUrl:
    @pytest.mark.parametrize(
        ("origin", "url", "routed"),
        [
            (
                "https://us.chatgpt.example:8443",
                "https://chatgpt.example/backend-api/me?x=1",
                "https://us.chatgpt.example:8443/backend-api/me?x=1",
            ),
            (
                "https://us.chatgpt.example",
                "https://chatgpt.example:444/backend-api/me",
                "https://us.chatgpt.example/backend-api/me",
            ),
            (
                "http://127.0.0.1:8080",
                "https://chatgpt.example/backend-api/a/b?q=1&r=%2F#frag",
                "http://127.0.0.1:8080/backend-api/a/b?q=1&r=%2F#frag",
            ),
            (
                "https://us.chatgpt.example",
                "http://user:pw@127.0.0.1:9/p",
                "https://us.chatgpt.example/p",
            ),
            ("https://us.chatgpt.example", "https://chatgpt.example", "https://us.chatgpt.example"),
        ],
    )
    def test_replaces_the_origin_and_keeps_the_rest(
        self, origin: str, url: str, routed: str
    ) -> None:
        """Scheme, host and port come from the origin; path, query and fragment stay."""
        auth = Authorization(
            header_value="Bearer x", scheme=Scheme.BEARER, identity="main", backend_origin=origin
        )
        before = (url, auth.backend_origin)

        assert auth.route_url(url) == routed
        assert (url, auth.backend_origin) == before

    def test_no_route_leaves_the_url_alone(self) -> None:
        """Without a ``backend_origin`` the URL comes back exactly as given."""
        auth = Authorization(header_value="Bearer x", scheme=Scheme.BEARER, identity="main")
        url = "https://chatgpt.example:444/backend-api/me?x=1#f"

        assert auth.backend_origin == ""
        assert auth.route_url(url) == url

    @pytest.mark.parametrize(
        "origin", ["chatgpt.example", "https://us.chatgpt.example/backend-api", "https://h?x"]
    )
    def test_a_malformed_origin_is_refused(self, origin: str) -> None:
        """An origin with no scheme or with a path is an error, never a guess."""
        auth = Authorization(
            header_value="Bearer secret", scheme=Scheme.BEARER, identity="m", backend_origin=origin
        )

        with pytest.raises(ValueError, match="not a scheme://host\\[:port\\] origin") as caught:
            auth.route_url("https://chatgpt.example/x")
        assert "secret" not in str(caught.value)

    def test_converted_from_the_message(self) -> None:
        """``backend_origin`` comes from the proto field (empty when unset)."""
        message = pb.Authorization(
            header_value="Bearer x",
            scheme=pb.SCHEME_BEARER,
            backend_origin="https://us.chatgpt.example",
            headers={ROUTING_HEADER: "us_cr"},
        )

        routed, _ = authorization_from_proto(message)
        plain, _ = authorization_from_proto(pb.Authorization(header_value="Bearer x"))

        assert routed.backend_origin == "https://us.chatgpt.example"
        assert routed.http_headers()[ROUTING_HEADER] == "us_cr"
        assert plain.backend_origin == ""

    def test_the_error_names_the_status_and_no_header(self) -> None:
        """RoutedRedirectRefused is one of the client's errors and says what happened."""
        error = RoutedRedirectRefused(307)

        assert isinstance(error, BrokerClientError)
        assert error.status_code == 307
        assert str(error) == (
            "a routed request was answered with HTTP 307 and a Location; "
            "routed requests never follow redirects"
        )


@dataclasses.dataclass(frozen=True)
class _Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Server:
    """A real HTTP server on 127.0.0.1 that records each request and answers from a script.

    Each answer is ``(status, headers)``; once the script is used up it answers 200 with JSON.
    """

    def __init__(self, *answers: tuple[int, dict[str, str]]) -> None:
        self.seen: list[_Seen] = []
        self._answers = list(answers)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server.seen.append(
                    _Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length),
                    )
                )
                status, headers = server._answers.pop(0) if server._answers else (200, {})
                body = json.dumps({"status": status}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture(name="servers")
def fixture_servers() -> Iterator[list[_Server]]:
    """Servers the test creates with :func:`_serve`, closed after it."""
    servers: list[_Server] = []
    yield servers
    for server in servers:
        server.close()


def _serve(servers: list[_Server], *answers: tuple[int, dict[str, str]]) -> _Server:
    server = _Server(*answers)
    servers.append(server)
    return server


class _RoutedSyncClient(SyncBrokerClient):
    """The real broker's headers each with a route to ``origin``; replacements to ``retry_origin``."""

    def __init__(self, target: str, origin: str) -> None:
        super().__init__(target, timeout=10.0)
        self.origin = origin
        self.retry_origin: str | None = None

    def get_authorization(
        self,
        thread_id: str | None = None,
        *,
        identity: str | None = None,
        bearer_only: bool = False,
        min_remaining: float | None = None,
    ) -> Authorization:
        return _routed(
            super().get_authorization(
                thread_id, identity=identity, bearer_only=bearer_only, min_remaining=min_remaining
            ),
            self.origin,
        )

    def report_rejection(
        self,
        rejected: Authorization | str,
        http_status: int = 401,
        *,
        thread_id: str | None = None,
        identity: str | None = None,
    ) -> Authorization:
        replacement = super().report_rejection(
            rejected, http_status, thread_id=thread_id, identity=identity
        )
        origin = self.origin if self.retry_origin is None else self.retry_origin
        return _routed(replacement, origin) if origin else replacement


class _RoutedClient(BrokerClient):
    """The asyncio counterpart of :class:`_RoutedSyncClient`."""

    def __init__(self, target: str, origin: str) -> None:
        super().__init__(target, timeout=10.0)
        self.origin = origin
        self.retry_origin: str | None = None

    async def get_authorization(
        self,
        thread_id: str | None = None,
        *,
        identity: str | None = None,
        bearer_only: bool = False,
        min_remaining: float | None = None,
    ) -> Authorization:
        authorization = await super().get_authorization(
            thread_id, identity=identity, bearer_only=bearer_only, min_remaining=min_remaining
        )
        return _routed(authorization, self.origin)

    async def report_rejection(
        self,
        rejected: Authorization | str,
        http_status: int = 401,
        *,
        thread_id: str | None = None,
        identity: str | None = None,
    ) -> Authorization:
        replacement = await super().report_rejection(
            rejected, http_status, thread_id=thread_id, identity=identity
        )
        origin = self.origin if self.retry_origin is None else self.retry_origin
        return _routed(replacement, origin) if origin else replacement


def _assert_routed(seen: _Seen, base: _Server) -> None:
    """``seen`` is the caller's request, sent to the routed origin with every header it needs."""
    assert seen.path == PATH
    assert seen.headers[ROUTING_HEADER] == "us"
    assert seen.headers["chatgpt-account-id"] == ACCOUNT_ID
    assert seen.headers["authorization"].startswith("AgentAssertion ")
    assert base.seen == []


def _assert_refused(caught: pytest.ExceptionInfo[RoutedRedirectRefused], auth: str) -> None:
    assert caught.value.status_code == 302
    assert "routed requests never follow redirects" in str(caught.value)
    assert "elsewhere" not in str(caught.value)
    assert auth not in str(caught.value)


@pytest.fixture(name="sync_routed")
def fixture_sync_routed(harness: BrokerHarness) -> Iterator[_RoutedSyncClient]:
    with _RoutedSyncClient(harness.address, "http://127.0.0.1:9") as client:
        yield client


@pytest.fixture(name="async_routed")
async def fixture_async_routed(harness: BrokerHarness) -> AsyncIterator[_RoutedClient]:
    async with _RoutedClient(harness.address, "http://127.0.0.1:9") as client:
        yield client


class TestHttpxRouting:
    def test_sync_request_goes_to_the_origin(
        self, sync_routed: _RoutedSyncClient, servers: list[_Server]
    ) -> None:
        """httpx.Client: the request reaches the routed origin, path, query and headers intact."""
        base, routed = _serve(servers), _serve(servers)
        sync_routed.origin = routed.origin

        with httpx.Client(auth=BrokerAuth(sync_routed), timeout=10) as http:
            response = http.post(base.origin + PATH, json={"n": 1})

        assert response.status_code == 200
        (seen,) = routed.seen
        _assert_routed(seen, base)
        assert (seen.method, seen.body) == ("POST", b'{"n":1}')
        assert seen.headers["host"] == routed.origin.removeprefix("http://")
        assert str(response.request.url) == routed.origin + PATH

    async def test_async_request_goes_to_the_origin(
        self, async_routed: _RoutedClient, servers: list[_Server]
    ) -> None:
        """httpx.AsyncClient: the same, through the asyncio flow."""
        base, routed = _serve(servers), _serve(servers)
        async_routed.origin = routed.origin

        async with httpx.AsyncClient(auth=BrokerAuth(async_routed), timeout=10) as http:
            response = await http.get(base.origin + PATH)

        assert response.status_code == 200
        (seen,) = routed.seen
        _assert_routed(seen, base)

    def test_sync_retry_after_a_401_is_routed(
        self, harness: BrokerHarness, sync_routed: _RoutedSyncClient, servers: list[_Server]
    ) -> None:
        """The 401 is reported to the real broker once; the retry goes to its replacement's origin."""
        base, routed, rerouted = _serve(servers), _serve(servers, (401, {})), _serve(servers)
        sync_routed.origin, sync_routed.retry_origin = routed.origin, rerouted.origin

        with httpx.Client(auth=BrokerAuth(sync_routed), timeout=10) as http:
            response = http.get(base.origin + PATH)

        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [401]
        (first,), (second,) = routed.seen, rerouted.seen
        _assert_routed(first, base)
        _assert_routed(second, base)
        assert second.headers["host"] == rerouted.origin.removeprefix("http://")
        assert first.headers["authorization"] != second.headers["authorization"]
        assert harness.rpc_count("ReportRejection") == 1

    async def test_async_retry_after_a_401_is_routed(
        self, harness: BrokerHarness, async_routed: _RoutedClient, servers: list[_Server]
    ) -> None:
        """The asyncio flow routes its retry as well."""
        base, routed, rerouted = _serve(servers), _serve(servers, (401, {})), _serve(servers)
        async_routed.origin, async_routed.retry_origin = routed.origin, rerouted.origin

        async with httpx.AsyncClient(auth=BrokerAuth(async_routed), timeout=10) as http:
            response = await http.get(base.origin + PATH)

        assert response.status_code == 200
        assert len(routed.seen) == 1
        (second,) = rerouted.seen
        _assert_routed(second, base)
        assert harness.rpc_count("ReportRejection") == 1

    def test_unrouted_replacement_goes_back_to_the_callers_url(
        self, sync_routed: _RoutedSyncClient, servers: list[_Server]
    ) -> None:
        """A routed 401 whose replacement has no route: the retry goes where the caller asked."""
        base, routed = _serve(servers), _serve(servers, (401, {}))
        sync_routed.origin, sync_routed.retry_origin = routed.origin, ""

        with httpx.Client(auth=BrokerAuth(sync_routed), timeout=10) as http:
            response = http.get(base.origin + PATH)

        assert response.status_code == 200
        assert len(routed.seen) == 1
        (retry,) = base.seen
        assert retry.path == PATH
        assert retry.headers["host"] == base.origin.removeprefix("http://")
        assert ROUTING_HEADER not in retry.headers

    @pytest.mark.parametrize("follow", [False, True])
    def test_sync_redirect_is_refused(
        self, sync_routed: _RoutedSyncClient, servers: list[_Server], follow: bool
    ) -> None:
        """A routed 302 raises RoutedRedirectRefused; its target receives nothing."""
        base, elsewhere = _serve(servers), _serve(servers)
        routed = _serve(servers, (302, {"Location": f"{elsewhere.origin}/elsewhere"}))
        sync_routed.origin = routed.origin
        hooks = {"response": [refuse_routed_redirects]} if follow else {}

        with (
            httpx.Client(
                auth=BrokerAuth(sync_routed), follow_redirects=follow, event_hooks=hooks, timeout=10
            ) as http,
            pytest.raises(RoutedRedirectRefused) as caught,
        ):
            http.get(base.origin + PATH)

        _assert_refused(caught, routed.seen[0].headers["authorization"])
        assert len(routed.seen) == 1
        assert elsewhere.seen == []
        assert base.seen == []

    @pytest.mark.parametrize("follow", [False, True])
    async def test_async_redirect_is_refused(
        self, async_routed: _RoutedClient, servers: list[_Server], follow: bool
    ) -> None:
        """The asyncio flow (and its hook) refuse a routed redirect too."""
        base, elsewhere = _serve(servers), _serve(servers)
        routed = _serve(servers, (307, {"Location": f"{elsewhere.origin}/elsewhere"}))
        async_routed.origin = routed.origin
        hooks = {"response": [async_refuse_routed_redirects]} if follow else {}

        async with httpx.AsyncClient(
            auth=BrokerAuth(async_routed), follow_redirects=follow, event_hooks=hooks, timeout=10
        ) as http:
            with pytest.raises(RoutedRedirectRefused, match="HTTP 307"):
                await http.get(base.origin + PATH)

        assert len(routed.seen) == 1
        assert elsewhere.seen == []

    def test_unrouted_redirect_is_followed_as_before(
        self, harness: BrokerHarness, servers: list[_Server]
    ) -> None:
        """Without a route nothing changes: the URL is the caller's and redirects are followed."""
        elsewhere = _serve(servers)
        base = _serve(servers, (302, {"Location": f"{elsewhere.origin}/elsewhere"}))

        with (
            SyncBrokerClient(harness.address, timeout=10.0) as broker,
            httpx.Client(auth=BrokerAuth(broker), follow_redirects=True, timeout=10) as http,
        ):
            response = http.get(base.origin + PATH)

        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [302]
        assert base.seen[0].path == PATH
        assert ROUTING_HEADER not in base.seen[0].headers
        assert [s.path for s in elsewhere.seen] == ["/elsewhere"]


class TestRequestsRouting:
    def test_request_goes_to_the_origin(
        self, sync_routed: _RoutedSyncClient, servers: list[_Server]
    ) -> None:
        """requests: the request reaches the routed origin, path, query and headers intact."""
        base, routed = _serve(servers), _serve(servers)
        sync_routed.origin = routed.origin

        with requests.Session() as session:
            session.auth = BrokerRequestsAuth(sync_routed)
            response = session.post(base.origin + PATH, data=b"payload", timeout=10)

        assert response.status_code == 200
        (seen,) = routed.seen
        _assert_routed(seen, base)
        assert (seen.method, seen.body) == ("POST", b"payload")
        assert seen.headers["host"] == routed.origin.removeprefix("http://")

    def test_retry_after_a_401_is_routed(
        self, harness: BrokerHarness, sync_routed: _RoutedSyncClient, servers: list[_Server]
    ) -> None:
        """One report to the real broker, one retry, sent to its replacement's origin."""
        base, routed, rerouted = _serve(servers), _serve(servers, (401, {})), _serve(servers)
        sync_routed.origin, sync_routed.retry_origin = routed.origin, rerouted.origin

        with requests.Session() as session:
            session.auth = BrokerRequestsAuth(sync_routed)
            response = session.get(base.origin + PATH, timeout=10)

        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [401]
        (first,), (second,) = routed.seen, rerouted.seen
        _assert_routed(first, base)
        _assert_routed(second, base)
        assert first.headers["authorization"] != second.headers["authorization"]
        assert harness.rpc_count("ReportRejection") == 1

    def test_unrouted_replacement_goes_back_to_the_callers_url(
        self, sync_routed: _RoutedSyncClient, servers: list[_Server]
    ) -> None:
        """A routed 401 whose replacement has no route: the retry goes where the caller asked."""
        base, routed = _serve(servers), _serve(servers, (401, {}))
        sync_routed.origin, sync_routed.retry_origin = routed.origin, ""

        with requests.Session() as session:
            session.auth = BrokerRequestsAuth(sync_routed)
            response = session.get(base.origin + PATH, timeout=10)

        assert response.status_code == 200
        assert len(routed.seen) == 1
        (retry,) = base.seen
        assert retry.path == PATH
        assert ROUTING_HEADER not in retry.headers

    @pytest.mark.parametrize("allow_redirects", [True, False])
    def test_redirect_is_refused(
        self, sync_routed: _RoutedSyncClient, servers: list[_Server], allow_redirects: bool
    ) -> None:
        """A routed 302 raises RoutedRedirectRefused whatever allow_redirects says."""
        base, elsewhere = _serve(servers), _serve(servers)
        routed = _serve(servers, (302, {"Location": f"{elsewhere.origin}/elsewhere"}))
        sync_routed.origin = routed.origin

        with requests.Session() as session:
            session.auth = BrokerRequestsAuth(sync_routed)
            with pytest.raises(RoutedRedirectRefused) as caught:
                session.get(base.origin + PATH, allow_redirects=allow_redirects, timeout=10)

        _assert_refused(caught, routed.seen[0].headers["authorization"])
        assert len(routed.seen) == 1
        assert elsewhere.seen == []
        assert base.seen == []

    def test_redirect_after_the_retry_is_refused(
        self, sync_routed: _RoutedSyncClient, servers: list[_Server]
    ) -> None:
        """The retry after a 401 is routed, so a redirect answering it is refused as well."""
        base, elsewhere = _serve(servers), _serve(servers)
        routed = _serve(servers, (401, {}), (302, {"Location": f"{elsewhere.origin}/elsewhere"}))
        sync_routed.origin = routed.origin

        with requests.Session() as session:
            session.auth = BrokerRequestsAuth(sync_routed)
            with pytest.raises(RoutedRedirectRefused):
                session.get(base.origin + PATH, timeout=10)

        assert len(routed.seen) == 2
        assert elsewhere.seen == []

    def test_unrouted_redirect_is_followed_as_before(
        self, harness: BrokerHarness, servers: list[_Server]
    ) -> None:
        """Without a route nothing changes: requests follows the redirect as it always did."""
        elsewhere = _serve(servers)
        base = _serve(servers, (302, {"Location": f"{elsewhere.origin}/elsewhere"}))

        with SyncBrokerClient(harness.address, timeout=10.0) as broker, requests.Session() as s:
            s.auth = BrokerRequestsAuth(broker)
            response = s.get(base.origin + PATH, timeout=10)

        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [302]
        assert base.seen[0].path == PATH
        assert [s.path for s in elsewhere.seen] == ["/elsewhere"]
