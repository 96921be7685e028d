"""Identities the broker does not register: Agent Identity JWTs and imported records (DESIGN §5).

Both implement the ``IdentitySource`` port and re-read their file when it changes (checked at most
once a second), so a replaced JWT or record takes effect without a restart. A JWT is verified against
the control plane's JWKS (protocol §10.2); the JWKS is cached for ``ttl`` and fetched again at once
for an unknown ``kid``, at most once per ``min_refetch`` seconds (5 s), with a 10 s timeout. A JWKS
answer is read up to :data:`MAX_JWKS_BYTES`; a larger one is refused like an unreachable JWKS (the
keys fetched before stay in use).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
import structlog

from broker.adapters.body_limit import BodyTooLargeError, read_limited
from broker.adapters.watched_file import WatchedFile
from broker.core.credentials.model import IdentityRecord
from broker.core.credentials.ports import Clock
from broker.core.protocol import agent_jwt
from broker.core.protocol.keys import AgentKey
from broker.errors import AgentJwtError, ControlPlaneUnavailable, IdentityUnusable, KeyFormatError
from broker.events import Event
from broker.secret import Secret

log = structlog.get_logger("broker.identity_sources")

MAX_JWKS_BYTES: Final = 256 * 1024
"""Largest JWKS answer read (a JWK Set of a few keys is a few KiB)."""


async def _read(file: WatchedFile, what: str) -> tuple[Secret, bool]:
    """The file's content and whether it changed; a missing or unreadable file is unusable."""
    state = await file.read()
    if state.text is None:
        raise IdentityUnusable(f"{what} file {str(file.path)!r}: {state.error}")
    return state.text, state.changed


class JwksCache:
    """The control plane's JWK Set, fetched over HTTP and cached (§10.3)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        clock: Clock,
        *,
        ttl: float = 300.0,
        min_refetch: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self._http = http
        self._url = url
        self._clock = clock
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._timeout = timeout
        self._keys: dict[str, Any] | None = None
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    def _kids(self) -> set[str]:
        return {
            str(k.get("kid")) for k in (self._keys or {}).get("keys", []) if isinstance(k, dict)
        }

    async def keyset(self, kid: str) -> dict[str, Any]:
        """A JWK Set that contains ``kid`` if the control plane publishes it.

        Raises:
            ControlPlaneUnavailable: the JWKS cannot be fetched and nothing is cached.
        """
        async with self._lock:
            now = self._clock.monotonic()
            age = None if self._fetched_at is None else now - self._fetched_at
            stale = age is None or age >= self._ttl
            unknown = kid not in self._kids()
            if stale or (unknown and (age is None or age >= self._min_refetch)):
                await self._fetch()
            assert self._keys is not None  # noqa: S101  (_fetch sets it or raises)
            return self._keys

    async def _fetch(self) -> None:
        try:
            status, content = await self._get()
        except (httpx.HTTPError, BodyTooLargeError) as exc:
            if self._keys is not None:
                return
            why = str(exc) if isinstance(exc, BodyTooLargeError) else type(exc).__name__
            raise ControlPlaneUnavailable(
                f"cannot fetch the JWKS from {self._url}: {why}", operation="jwks"
            ) from None
        if status != 200:
            if self._keys is not None:
                return
            raise ControlPlaneUnavailable(
                f"the JWKS at {self._url} answered HTTP {status}",
                operation="jwks",
                status=status,
            )
        try:
            document = json.loads(content)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ControlPlaneUnavailable(
                f"the JWKS at {self._url} is not a JWK Set", operation="jwks"
            )
        self._keys = document
        self._fetched_at = self._clock.monotonic()

    async def _get(self) -> tuple[int, bytes]:
        """The JWKS answer's status, and its body when it is a 200 (read up to the limit)."""
        request = self._http.build_request("GET", self._url, timeout=self._timeout)
        response = await self._http.send(request, stream=True)
        try:
            if response.status_code != 200:
                return response.status_code, b""
            return 200, await read_limited(response, limit=MAX_JWKS_BYTES)
        finally:
            await response.aclose()


class JwtIdentitySource:
    """An identity defined by an Agent Identity JWT from a file or a fixed value (§10)."""

    def __init__(
        self,
        name: str,
        jwks: JwksCache,
        clock: Clock,
        *,
        path: Path | None = None,
        value: Secret | None = None,
        issuer: str = agent_jwt.DEFAULT_ISSUER,
        audience: str = agent_jwt.DEFAULT_AUDIENCE,
    ) -> None:
        if (path is None) == (value is None):
            raise ValueError("give exactly one of path and value")
        self._name = name
        self._jwks = jwks
        self._clock = clock
        self._file = WatchedFile(path, clock) if path is not None else None
        self._value = value
        self._issuer = issuer
        self._audience = audience
        self._record: IdentityRecord | None = None
        self._expires_at: datetime | None = None

    async def load(self) -> IdentityRecord:
        """The identity of the current JWT, verified when it changes; expiry checked every time."""
        if self._file is not None:
            token, changed = await _read(self._file, "agent identity JWT")
            if changed:
                self._record = None
        else:
            assert self._value is not None  # noqa: S101  (constructor guarantees one)
            token = self._value
        now = self._clock.now()
        if self._record is None:
            text = token.reveal()
            kid = agent_jwt.key_id(text)
            keyset = await self._jwks.keyset(kid)
            claims = agent_jwt.verify(
                text, keyset, now=now, issuer=self._issuer, audience=self._audience
            )
            self._record = IdentityRecord(
                name=self._name,
                agent_runtime_id=claims.agent_runtime_id,
                key=claims.key,
                account_id=claims.account_id,
                user_id=claims.user_id,
                registered_at=now.replace(microsecond=0),
                source="jwt",
                fedramp=claims.fedramp,
            )
            self._expires_at = claims.expires_at
            log.info(
                Event.IDENTITY_LOADED,
                identity=self._name,
                agent_runtime_id=claims.agent_runtime_id,
                source="jwt",
                expires_at=claims.expires_at.isoformat(),
            )
        assert self._expires_at is not None  # noqa: S101  (set with the record)
        if now.timestamp() > self._expires_at.timestamp() + agent_jwt.EXP_LEEWAY_SECONDS:
            raise AgentJwtError(
                f"the agent identity JWT of identity {self._name!r} expired at "
                f"{self._expires_at.isoformat()}; replace it"
            )
        return self._record


_IMPORT_FIELDS: Final = ("agent_runtime_id", "agent_private_key", "account_id")


class ImportIdentitySource:
    """An identity record imported from a JSON file (runtime id, PKCS#8 key, binding; §9.2, §9.4)."""

    def __init__(self, name: str, path: Path, clock: Clock) -> None:
        self._name = name
        self._file = WatchedFile(path, clock)
        self._clock = clock
        self._record: IdentityRecord | None = None

    async def load(self) -> IdentityRecord:
        """The record, parsed and validated when the file changes.

        Raises:
            IdentityUnusable: unreadable file, bad JSON, or a field that fails validation (named).
        """
        text, changed = await _read(self._file, "identity record")
        if self._record is None or changed:
            self._record = self._parse(text.reveal())
        return self._record

    def _parse(self, text: str) -> IdentityRecord:
        try:
            data = json.loads(text)
        except ValueError:
            raise IdentityUnusable(f"identity {self._name!r}: the record is not JSON") from None
        if not isinstance(data, dict):
            raise IdentityUnusable(f"identity {self._name!r}: the record is not a JSON object")
        for field in _IMPORT_FIELDS:
            if not isinstance(data.get(field), str) or not data[field]:
                raise IdentityUnusable(
                    f"identity {self._name!r}: record field {field!r} is missing or not a string"
                )
        try:
            key = AgentKey.from_pkcs8_base64(data["agent_private_key"])
        except KeyFormatError as exc:
            raise IdentityUnusable(
                f"identity {self._name!r}: record field 'agent_private_key': {exc.message}"
            ) from None
        user = data.get("chatgpt_user_id")
        fedramp = data.get("chatgpt_account_is_fedramp", False)
        if user is not None and not isinstance(user, str):
            raise IdentityUnusable(f"identity {self._name!r}: 'chatgpt_user_id' is not a string")
        if not isinstance(fedramp, bool):
            raise IdentityUnusable(
                f"identity {self._name!r}: 'chatgpt_account_is_fedramp' is not true/false"
            )
        return IdentityRecord(
            name=self._name,
            agent_runtime_id=data["agent_runtime_id"],
            key=key,
            account_id=data["account_id"],
            user_id=user or None,
            registered_at=self._clock.now().replace(microsecond=0),
            source="import",
            fedramp=fedramp,
        )
