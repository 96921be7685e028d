"""HTTP handlers of the emulator: protocol endpoints and ``/_emulator/`` test controls (protocol §12).

Handlers are thin: they read headers and the JSON body, make one call on
:class:`cb_emulator.state.EmulatorState`, and render the result. Refusals travel as
:class:`cb_emulator.state.Rejection` and are rendered by the server's middleware as
``{"ok": false, "reason": …, "message": …}``.
"""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web
from yarl import URL

from cb_emulator.faults import Fault
from cb_emulator.model import Rejection
from cb_emulator.routing import ROUTING_HEADER, Arrival
from cb_emulator.state import EmulatorState

PREFIX: Final = "/backend-api"
ACCOUNTS_CHECK_PATH: Final = f"{PREFIX}/wham/accounts/check"
ORIGINAL_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def canonical_url(text: str) -> str | None:
    """An absolute http(s) URL with host lower-cased and port explicit, or ``None`` if it is not one.

    Biscuits are bound to the ``X-Original-Url`` the client names and checked against the URL the
    request actually reached, so both sides are compared in this form (§4.1).
    """
    try:
        url = URL(text)
    except (ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host or not url.is_absolute():
        return None
    query = f"?{url.raw_query_string}" if url.raw_query_string else ""
    return f"{url.scheme}://{url.host.lower()}:{url.port}{url.raw_path}{query}"


def fedramp_header(request: web.Request) -> bool:
    """Whether the request carries ``X-OpenAI-Fedramp: true`` (§4.3, §6.2)."""
    return request.headers.get("X-OpenAI-Fedramp", "").strip().lower() == "true"


async def json_body(request: web.Request, *, empty_ok: bool = False) -> object:
    """The decoded JSON body.

    Raises:
        Rejection: 400 ``malformed_json`` for an empty (unless ``empty_ok``) or undecodable body.
    """
    raw = await request.read()
    if not raw.strip():
        if empty_ok:
            return {}
        raise Rejection(400, "malformed_json", "the request body is empty")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Rejection(400, "malformed_json", "the request body is not valid JSON") from exc


def _ok(payload: dict[str, object], status: int = 200) -> web.Response:
    return web.json_response({"ok": True, **payload}, status=status)


class ProtocolRoutes:
    """The control-plane endpoints under ``/backend-api`` (§4.1, §4.3, §5, §12)."""

    def __init__(self, state: EmulatorState, *, biscuit_ttl_seconds: float) -> None:
        self._state = state
        self._biscuit_ttl_seconds = biscuit_ttl_seconds

    def install(self, app: web.Application) -> None:
        """Add the routes; each resource is named after its fault/stats endpoint."""
        router = app.router
        router.add_resource(f"{PREFIX}/authenticate_app_v2", name="authenticate").add_route(
            "GET", self.authenticate
        )
        router.add_resource(f"{PREFIX}/v1/agent/register", name="register_identity").add_route(
            "POST", self.register_identity
        )
        router.add_resource(
            PREFIX + "/v1/agent/{agent_runtime_id}/task/register", name="register_task"
        ).add_route("POST", self.register_task)
        protected = router.add_resource(f"{PREFIX}/protected", name="protected")
        protected.add_route("GET", self.protected)
        protected.add_route("POST", self.protected)
        router.add_resource(ACCOUNTS_CHECK_PATH, name="accounts_check").add_route(
            "GET", self.accounts_check
        )

    async def authenticate(self, request: web.Request) -> web.Response:
        """``GET authenticate_app_v2``: Bearer in, single-use biscuit out (§4.1 step 1)."""
        authorization = request.headers.get("Authorization")
        self._state.account_for_bearer(authorization)
        method = request.headers.get("X-Original-Method", "").strip().upper()
        if method not in ORIGINAL_METHODS:
            raise Rejection(400, "invalid_header", "X-Original-Method must name an HTTP method")
        url = canonical_url(request.headers.get("X-Original-Url", "").strip())
        if url is None:
            raise Rejection(400, "invalid_header", "X-Original-Url must be an absolute http(s) URL")
        biscuit = self._state.mint_biscuit(authorization, method, url)
        return web.json_response(
            {"ok": True, "expires_in": self._biscuit_ttl_seconds},
            headers={"x-openai-authorization": biscuit},
        )

    async def register_identity(self, request: web.Request) -> web.Response:
        """``POST v1/agent/register`` with a biscuit (G1, §4.1) or a Bearer (G4, §4.3)."""
        body = await json_body(request)
        runtime_id = self._state.register_identity(
            biscuit=request.headers.get("X-OpenAI-Authorization"),
            authorization=request.headers.get("Authorization"),
            url=_request_url(request),
            body=body,
            fedramp_header=fedramp_header(request),
        )
        return web.json_response({"agent_runtime_id": runtime_id})

    async def register_task(self, request: web.Request) -> web.Response:
        """``POST v1/agent/{id}/task/register``: signature-checked task registration (§5, §12.2)."""
        body = await json_body(request)
        result = self._state.register_task(
            request.match_info["agent_runtime_id"],
            biscuit=request.headers.get("X-OpenAI-Authorization"),
            url=_request_url(request),
            body=body,
        )
        return web.json_response(result)

    async def protected(self, request: web.Request) -> web.Response:
        """A protected resource: accepts a valid AgentAssertion or a known Bearer (§6, §12.3).

        ``ChatGPT-Account-ID``, when sent, must name the credential's account; an assertion of an
        identity bound to a FedRAMP account also needs ``X-OpenAI-Fedramp: true`` (§6.2). When the
        account has a workspace route, the call must arrive at the route's origin with its routing
        header (§16, :mod:`cb_emulator.routing`).
        """
        verified = self._state.verify(
            request.headers.get("Authorization"),
            request.headers.get("ChatGPT-Account-ID"),
            fedramp_header=fedramp_header(request),
            arrival=Arrival(_local_port(request), request.headers.get(ROUTING_HEADER)),
        )
        payload: dict[str, object] = {
            "scheme": verified.scheme,
            "account_id": verified.account.account_id,
        }
        if verified.agent_runtime_id is not None:
            payload["agent_runtime_id"] = verified.agent_runtime_id
            payload["task_id"] = verified.task_id
        return _ok(payload)

    async def accounts_check(self, request: web.Request) -> web.Response:
        """``GET wham/accounts/check``: the Bearer's account's workspace route (§16)."""
        answer = self._state.accounts_check(
            request.headers.get("Authorization"),
            request.headers.get("ChatGPT-Account-ID"),
            fedramp_header=fedramp_header(request),
        )
        return web.json_response(answer)


class ControlRoutes:
    """Test controls under ``/_emulator/``, so other processes can drive the emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def install(self, app: web.Application) -> None:
        """Add the control routes."""
        router = app.router
        router.add_get("/_emulator/stats", self.stats)
        router.add_post("/_emulator/faults", self.faults)
        router.add_post("/_emulator/revoke", self.revoke)
        router.add_post("/_emulator/reset", self.reset)
        router.add_get("/_emulator/tasks", self.tasks)
        router.add_get("/_emulator/identities", self.identities)

    async def stats(self, _request: web.Request) -> web.Response:
        """Counters since start or the last reset."""
        return web.json_response(self._state.stats().to_json())

    async def faults(self, request: web.Request) -> web.Response:
        """Queue a fault (see :class:`cb_emulator.faults.Fault`)."""
        try:
            fault = Fault.from_json(await json_body(request))
        except (TypeError, ValueError) as exc:
            raise Rejection(400, "invalid_fault", str(exc)) from exc
        self._state.faults.add(fault)
        return _ok({"pending": len(self._state.faults)})

    async def revoke(self, request: web.Request) -> web.Response:
        """Revoke a task: later assertions for it are refused with ``task_revoked``."""
        body = await json_body(request)
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if not isinstance(task_id, str):
            raise Rejection(400, "invalid_field", "task_id must be a string")
        if not self._state.revoke_task(task_id):
            raise Rejection(404, "unknown_task", "the task is not registered")
        return _ok({"task_id": task_id})

    async def reset(self, request: web.Request) -> web.Response:
        """Clear faults and counters; with ``{"state": true}`` also identities, tasks and biscuits."""
        body = await json_body(request, empty_ok=True)
        state = body.get("state", False) if isinstance(body, dict) else None
        if not isinstance(state, bool):
            raise Rejection(400, "invalid_field", "state must be a boolean")
        self._state.reset(state=state)
        return _ok({"state": state})

    async def tasks(self, _request: web.Request) -> web.Response:
        """Every task as ``{agent_runtime_id, task_id, revoked}``."""
        return web.json_response(
            [
                {"agent_runtime_id": t.agent_runtime_id, "task_id": t.task_id, "revoked": t.revoked}
                for t in self._state.tasks()
            ]
        )

    async def identities(self, _request: web.Request) -> web.Response:
        """Every identity with its binding and how it was authorised."""
        return web.json_response(
            [
                {
                    "agent_runtime_id": i.agent_runtime_id,
                    "account_id": i.account_id,
                    "user_id": i.user_id,
                    "authorised_by": i.authorised_by,
                    "capabilities": list(i.capabilities),
                    "fedramp_header": i.fedramp_header,
                    "registered_via": i.registered_via,
                    "fedramp_account": i.fedramp_account,
                }
                for i in self._state.identities()
            ]
        )


def _local_port(request: web.Request) -> int | None:
    """The local port the request's connection arrived on (which listener took it), if known."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        return sockname[1]
    return None


def _request_url(request: web.Request) -> str:
    # request.url is rebuilt from the Host header, exactly what a client puts in X-Original-Url.
    return canonical_url(str(request.url)) or ""
