"""HTTP handlers of today's protocol shape: the AuthAPI, the JWKS and the JWT test controls (§15).

- ``POST /api/accounts/v1/agent/register`` (resource ``authapi_register_identity``): G4 identity
  registration (§4.3). Only ``Authorization: Bearer`` authorises it; an account that is a FedRAMP
  account must send ``X-OpenAI-Fedramp: true`` (400 ``fedramp_header_missing`` otherwise);
  ``capabilities`` must include ``responsesapi`` (400 ``invalid_capabilities``); ``ttl`` may be null.
- ``POST /api/accounts/v1/agent/{agent_runtime_id}/task/register`` (``authapi_register_task``):
  signature-only task registration (§5.1). A credential header is ignored, but counted in
  ``task_registrations_with_credential`` so tests can assert a client sends none.
- ``GET /backend-api/wham/agent-identities/jwks`` (``jwks``): the public JWK Set (§10.3, G4 rule for
  a base containing ``/backend-api``).
- ``POST /_emulator/jwt``, ``/_emulator/jwks/rotate`` and ``/_emulator/jwks/retire``: test controls
  (see :mod:`cb_emulator.jwt`).

The named resources share the fault and stats machinery of the ChatGPT-backend endpoints.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from cb_emulator.bodies import identity_fields
from cb_emulator.jwt import JwtSpec, SigningKeySet, mint_agent_identity_jwt
from cb_emulator.model import Rejection
from cb_emulator.routes import PREFIX, fedramp_header, json_body
from cb_emulator.state import EmulatorState

AUTHAPI_PREFIX: Final = "/api/accounts"
JWKS_PATH: Final = f"{PREFIX}/wham/agent-identities/jwks"
RESPONSES_API: Final = "responsesapi"
_CREDENTIAL_HEADERS: Final = ("Authorization", "X-OpenAI-Authorization")


class AuthApiRoutes:
    """The AuthAPI endpoints under ``/api/accounts`` and the JWKS (§3.3 G4, §4.3, §5.1, §10.3).

    Args:
        state: the emulator's state, shared with the ChatGPT-backend endpoints.
        keys: the RSA keys that sign Agent Identity JWTs.
    """

    def __init__(self, state: EmulatorState, keys: SigningKeySet) -> None:
        self._state = state
        self._keys = keys

    def install(self, app: web.Application) -> None:
        """Add the routes; each protocol resource is named after its fault/stats endpoint."""
        router = app.router
        router.add_resource(
            f"{AUTHAPI_PREFIX}/v1/agent/register", name="authapi_register_identity"
        ).add_route("POST", self.register_identity)
        router.add_resource(
            AUTHAPI_PREFIX + "/v1/agent/{agent_runtime_id}/task/register",
            name="authapi_register_task",
        ).add_route("POST", self.register_task)
        router.add_resource(JWKS_PATH, name="jwks").add_route("GET", self.jwks)
        router.add_post("/_emulator/jwt", self.mint_jwt)
        router.add_post("/_emulator/jwks/rotate", self.rotate)
        router.add_post("/_emulator/jwks/retire", self.retire)

    # -- protocol endpoints --------------------------------------------------------------------

    async def register_identity(self, request: web.Request) -> web.Response:
        """``POST {authapi}/v1/agent/register``: Bearer-authorised G4 registration (§4.3)."""
        body = await json_body(request)
        account = self._state.account_for_bearer(request.headers.get("Authorization"))
        fedramp = fedramp_header(request)
        if account.fedramp and not fedramp:
            raise Rejection(
                400,
                "fedramp_header_missing",
                "the account is a FedRAMP account: X-OpenAI-Fedramp: true is required",
            )
        public_key, capabilities = identity_fields(body)
        if RESPONSES_API not in capabilities:
            raise Rejection(
                400, "invalid_capabilities", f"capabilities must include {RESPONSES_API!r}"
            )
        runtime_id = self._state.add_identity(
            public_key,
            account,
            authorised_by="bearer",
            capabilities=capabilities,
            fedramp_header=fedramp,
            registered_via="authapi",
        )
        self._state.count("identity_registrations")
        return web.json_response({"agent_runtime_id": runtime_id})

    async def register_task(self, request: web.Request) -> web.Response:
        """``POST {authapi}/v1/agent/{id}/task/register``: the signature is the only proof (§5.1)."""
        if any(name in request.headers for name in _CREDENTIAL_HEADERS):
            self._state.count("task_registrations_with_credential")
        body = await json_body(request)
        result = self._state.register_task(
            request.match_info["agent_runtime_id"],
            biscuit=None,
            url="",
            body=body,
            signature_only=True,
        )
        return web.json_response(result)

    async def jwks(self, _request: web.Request) -> web.Response:
        """``GET {chatgpt}/wham/agent-identities/jwks``: the published JWK Set (§10.3)."""
        return web.json_response(self._keys.jwks())

    # -- test controls -------------------------------------------------------------------------

    async def mint_jwt(self, request: web.Request) -> web.Response:
        """Mint an Agent Identity JWT from a :class:`JwtSpec` body: ``{"jwt", "agent_runtime_id", "kid"}``."""
        try:
            spec = JwtSpec.from_json(await json_body(request))
        except (TypeError, ValueError) as exc:
            raise Rejection(400, "invalid_jwt_request", str(exc)) from exc
        minted = mint_agent_identity_jwt(self._state, self._keys, spec)
        return web.json_response(
            {
                "ok": True,
                "jwt": minted.jwt,
                "agent_runtime_id": minted.agent_runtime_id,
                "kid": minted.kid,
            }
        )

    async def rotate(self, request: web.Request) -> web.Response:
        """Add a signing key (``{"retire_old": true}`` also retires the previous one)."""
        body = await json_body(request, empty_ok=True)
        retire_old = body.get("retire_old", False) if isinstance(body, dict) else None
        if not isinstance(retire_old, bool):
            raise Rejection(400, "invalid_field", "retire_old must be a boolean")
        kid = self._keys.rotate(retire_old=retire_old)
        return web.json_response(
            {"ok": True, "kid": kid, "published_kids": self._keys.published_kids()}
        )

    async def retire(self, request: web.Request) -> web.Response:
        """Take ``{"kid": …}`` out of the JWK Set: 404 unknown, 409 for the signing key."""
        body = await json_body(request)
        kid = body.get("kid") if isinstance(body, dict) else None
        if not isinstance(kid, str):
            raise Rejection(400, "invalid_field", "kid must be a string")
        try:
            self._keys.retire(kid)
        except KeyError as exc:
            raise Rejection(404, "unknown_kid", "no published key has this kid") from exc
        except ValueError as exc:
            raise Rejection(409, "signing_key", str(exc)) from exc
        return web.json_response(
            {"ok": True, "kid": kid, "published_kids": self._keys.published_kids()}
        )
