"""The emulated control plane's state and rules, without HTTP (protocol §4, §5, §12).

Theory of operation: the HTTP layer (:mod:`cb_emulator.routes`, :mod:`cb_emulator.authapi`)
turns each request into one call here with plain values (header strings, the decoded JSON body, the
canonical request URL) and turns the result, or a :class:`Rejection`, into a response. The rules the
emulator enforces live in this module: which credentials authorise which call, biscuit binding and
single use, signature and skew checks, task ownership and revocation, the FedRAMP header, workspace routes (:mod:`cb_emulator.routing`). The AuthAPI's
own body rules (§4.3) are in :mod:`cb_emulator.authapi` and Agent Identity JWTs in
:mod:`cb_emulator.jwt`; both act through the public methods here. All state is in memory and is only touched from the event loop with no
``await`` between reading and writing it, so each call is atomic.

The emulator's policy where the protocol leaves the server unspecified (§12, §14.3): a ±``skew_seconds``
window on every signed timestamp, single-use biscuits valid ``biscuit_ttl_seconds``, 404 for an unknown
runtime, 401 for bad or stale credentials, 403 when an authenticated caller acts on another account's
identity, ``ChatGPT-Account-ID`` (when sent) must name the identity's account, and assertions of an
identity bound to a FedRAMP account must come with ``X-OpenAI-Fedramp: true`` (§6.2, §15).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from broker.core.credentials.ports import Clock
from broker.core.protocol.assertion import SCHEME as ASSERTION_SCHEME
from broker.core.protocol.assertion import parse_assertion, verify_assertion
from broker.core.protocol.task_id import seal_task_id
from broker.core.protocol.task_registration import verify_task_registration
from broker.errors import ProtocolError, SignatureInvalid
from cb_emulator.biscuits import BiscuitBook
from cb_emulator.bodies import identity_fields, json_object
from cb_emulator.faults import ENDPOINTS, Fault, FaultQueue
from cb_emulator.model import (
    EmulatorAccount,
    EmulatorIdentity,
    EmulatorStats,
    EmulatorTask,
    Rejection,
    Verified,
)
from cb_emulator.oauth import LoginBook
from cb_emulator.routing import Arrival, RouteBook

COUNTERS: Final = (
    "biscuits_minted",
    "identity_registrations",
    "task_registrations",
    "verifications_ok",
    "verifications_failed",
    "faults_applied",
    "task_registrations_with_credential",
    "jwts_minted",
)


@dataclass(frozen=True, slots=True)
class _Identity:
    public_key: bytes
    account: EmulatorAccount
    view: EmulatorIdentity


@dataclass(slots=True)
class _Task:
    agent_runtime_id: str
    revoked: bool = False


@dataclass(slots=True)
class _Counters:
    values: Counter[str] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)


class EmulatorState:
    """Identities, tasks, biscuits, faults and counters of one emulator, with the checks of §12.

    Args:
        tokens: bearer token → account it logs in as.
        clock: time source for biscuit expiry and the skew window.
        skew_seconds: accepted distance between a signed timestamp and the clock (§12.2, §12.3).
        biscuit_ttl_seconds: how long a minted biscuit stays usable (§4.1).
        plaintext_task_ids: answer task registrations with ``task_id`` instead of a sealed id (§5.2).
        require_biscuit: refuse task registrations that carry no biscuit (G1; G2-G4 send none, §5.1).
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, EmulatorAccount],
        clock: Clock,
        skew_seconds: float,
        biscuit_ttl_seconds: float,
        plaintext_task_ids: bool,
        require_biscuit: bool,
    ) -> None:
        self._tokens = dict(tokens)
        self._clock = clock
        self._skew = timedelta(seconds=skew_seconds)
        self._plaintext_task_ids = plaintext_task_ids
        self._require_biscuit = require_biscuit
        self._identities: dict[str, _Identity] = {}
        self._tasks: dict[str, _Task] = {}
        self._biscuits = BiscuitBook(clock, biscuit_ttl_seconds)
        self._counters = _Counters()
        self.faults = FaultQueue()
        self.logins = LoginBook(clock)
        self.routes = RouteBook()

    def now(self) -> datetime:
        """The emulator clock's current time."""
        return self._clock.now()

    # -- credentials ---------------------------------------------------------------------------

    def account_for_bearer(self, authorization: str | None) -> EmulatorAccount:
        """The account of an ``Authorization: Bearer <token>`` header.

        Raises:
            Rejection: 401 ``missing`` or ``unknown_token``.
        """
        if not authorization:
            raise Rejection(401, "missing", "Authorization: Bearer <token> is required")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejection(401, "unknown_token", "Authorization is not a Bearer token")
        account = self._tokens.get(token.strip()) or self.logins.account_for(token.strip())
        if account is None:
            raise Rejection(401, "unknown_token", "the bearer token is not known")
        return account

    def mint_biscuit(self, authorization: str | None, method: str, url: str) -> str:
        """Mint a single-use biscuit for one ``method`` + ``url`` call (§4.1 step 1).

        Raises:
            Rejection: 401 for a missing or unknown bearer token.
        """
        value = self._biscuits.mint(self.account_for_bearer(authorization), method, url)
        self._counters.values["biscuits_minted"] += 1
        return value

    def consume_biscuit(self, value: str, method: str, url: str) -> EmulatorAccount:
        """Spend a biscuit on ``method`` + ``url``; it is gone afterwards whatever the outcome.

        Raises:
            Rejection: 401 ``unknown_biscuit``, ``biscuit_expired`` or ``biscuit_mismatch``.
        """
        return self._biscuits.consume(value, method, url)

    # -- registration --------------------------------------------------------------------------

    def register_identity(
        self,
        *,
        biscuit: str | None,
        authorization: str | None,
        url: str,
        body: object,
        fedramp_header: bool,
    ) -> str:
        """Register an agent public key; return the new ``agent_runtime_id`` (§4.1, §4.3, §12.1).

        A biscuit minted for ``POST`` + ``url`` (G1) or a known Bearer token (G4) authorises it.

        Raises:
            Rejection: 401 for credentials, 400 for a malformed body or public key.
        """
        if biscuit:
            account, via = self.consume_biscuit(biscuit, "POST", url), "biscuit"
        else:
            account, via = self.account_for_bearer(authorization), "bearer"
        public_key, capabilities = identity_fields(body)
        runtime_id = self.add_identity(
            public_key,
            account,
            authorised_by=via,
            capabilities=capabilities,
            fedramp_header=fedramp_header,
        )
        self._counters.values["identity_registrations"] += 1
        return runtime_id

    def add_identity(
        self,
        public_key: bytes,
        account: EmulatorAccount,
        *,
        authorised_by: str,
        capabilities: tuple[str, ...],
        fedramp_header: bool,
        registered_via: str = "backend-api",
    ) -> str:
        """Store an identity whose caller is already authorised; return its new runtime id (§12.1).

        Counts nothing: each registration path counts what it did.
        """
        runtime_id = "agent-" + secrets.token_hex(12)
        view = EmulatorIdentity(
            agent_runtime_id=runtime_id,
            account_id=account.account_id,
            user_id=account.user_id,
            authorised_by=authorised_by,
            capabilities=capabilities,
            fedramp_header=fedramp_header,
            registered_via=registered_via,
            fedramp_account=account.fedramp,
        )
        self._identities[runtime_id] = _Identity(public_key, account, view)
        return runtime_id

    def register_task(
        self,
        agent_runtime_id: str,
        *,
        biscuit: str | None,
        url: str,
        body: object,
        signature_only: bool = False,
    ) -> dict[str, str]:
        """Verify a signed task registration and mint a task (§5.1, §5.2, §12.2).

        With ``signature_only`` (the AuthAPI, G2-G4) no biscuit is consumed or required: the
        signature is the only proof.

        Raises:
            Rejection: 401 (credential, signature, skew), 403 (biscuit of another account),
                404 (unknown runtime), 400 (malformed body).
        """
        account: EmulatorAccount | None = None
        if biscuit and not signature_only:
            account = self.consume_biscuit(biscuit, "POST", url)
        elif self._require_biscuit and not signature_only:
            raise Rejection(401, "biscuit_required", "X-OpenAI-Authorization is required")
        identity = self._identities.get(agent_runtime_id)
        if identity is None:
            raise Rejection(404, "unknown_runtime", "no agent identity has this runtime id")
        if account is not None and account != identity.account:
            raise Rejection(403, "account_mismatch", "the identity belongs to another account")
        fields = json_object(body)
        try:
            moment = verify_task_registration(identity.public_key, agent_runtime_id, fields)
        except SignatureInvalid as exc:
            raise Rejection(401, "bad_signature", exc.message) from exc
        except ProtocolError as exc:
            raise Rejection(400, "invalid_field", exc.message) from exc
        self._check_skew(moment)
        task_id = "task-" + secrets.token_hex(12)
        self._tasks[task_id] = _Task(agent_runtime_id)
        self._counters.values["task_registrations"] += 1
        if self._plaintext_task_ids:
            return {"task_id": task_id}
        return {"encrypted_task_id": seal_task_id(identity.public_key, task_id)}

    # -- workspace routing ---------------------------------------------------------------------

    def accounts_check(
        self, authorization: str | None, account_header: str | None, *, fedramp_header: bool
    ) -> object:
        """The workspace-route discovery answer for the Bearer's account (§16).

        Args:
            authorization: the ``Authorization`` header (a Bearer).
            account_header: the ``ChatGPT-Account-ID`` header.
            fedramp_header: whether ``X-OpenAI-Fedramp: true`` was sent.

        Raises:
            Rejection: 401 for a missing or unknown Bearer; 400 ``missing_account_header``, or
                ``fedramp_header_missing`` for a FedRAMP account; 403 ``account_mismatch``.
        """
        account = self.account_for_bearer(authorization)
        if account_header is None or not account_header.strip():
            raise Rejection(400, "missing_account_header", "ChatGPT-Account-ID is required")
        if account_header.strip() != account.account_id:
            raise Rejection(403, "account_mismatch", "ChatGPT-Account-ID names another account")
        if account.fedramp and not fedramp_header:
            raise Rejection(
                400,
                "fedramp_header_missing",
                "the account is a FedRAMP account: X-OpenAI-Fedramp: true is required",
            )
        return self.routes.answer(account.account_id)

    # -- verification --------------------------------------------------------------------------

    def verify(
        self,
        authorization: str | None,
        account_header: str | None,
        *,
        fedramp_header: bool = False,
        arrival: Arrival | None = None,
    ) -> Verified:
        """Check the ``Authorization`` of a call to a protected endpoint (§6, §12.3).

        Args:
            authorization: the ``Authorization`` header.
            account_header: the ``ChatGPT-Account-ID`` header, if sent.
            fedramp_header: whether ``X-OpenAI-Fedramp: true`` was sent (§6.2).
            arrival: where the call arrived and its routing header; when given, the route of the
                credential's account, if it has one, is enforced (§16).

        Raises:
            Rejection: 401 with the reason the credential was refused; 421 or 403 when the call
                breaks its account's route.
        """
        try:
            verified = self._verify(authorization, account_header, fedramp_header)
            if arrival is not None:
                self.routes.check(verified.account.account_id, arrival)
        except Rejection:
            self._counters.values["verifications_failed"] += 1
            raise
        self._counters.values["verifications_ok"] += 1
        return verified

    def _verify(
        self, authorization: str | None, account_header: str | None, fedramp_header: bool
    ) -> Verified:
        verified = self._verify_credential(authorization)
        if account_header is not None and account_header != verified.account.account_id:
            raise Rejection(401, "account_mismatch", "ChatGPT-Account-ID names another account")
        if verified.scheme == ASSERTION_SCHEME and verified.account.fedramp and not fedramp_header:
            raise Rejection(
                401,
                "fedramp_header_missing",
                "the identity's account is a FedRAMP account: X-OpenAI-Fedramp: true is required",
            )
        return verified

    def _verify_credential(self, authorization: str | None) -> Verified:
        if not authorization or not authorization.strip():
            raise Rejection(401, "missing", "no Authorization header")
        scheme = authorization.strip().partition(" ")[0]
        if scheme.lower() == "bearer":
            return Verified("Bearer", self.account_for_bearer(authorization))
        if scheme != ASSERTION_SCHEME:
            raise Rejection(401, "unsupported_scheme", "Authorization scheme is not supported")
        try:
            envelope = parse_assertion(authorization)
        except ProtocolError as exc:
            raise Rejection(401, "malformed", exc.message) from exc
        identity = self._identities.get(envelope.agent_runtime_id)
        if identity is None:
            raise Rejection(401, "unknown_runtime", "no agent identity has this runtime id")
        try:
            verify_assertion(envelope, identity.public_key)
        except SignatureInvalid as exc:
            raise Rejection(401, "bad_signature", exc.message) from exc
        except ProtocolError as exc:
            raise Rejection(401, "malformed", exc.message) from exc
        self._check_skew(envelope.issued_at())
        task = self._tasks.get(envelope.task_id)
        if task is None:
            raise Rejection(401, "unknown_task", "the task is not registered")
        if task.agent_runtime_id != envelope.agent_runtime_id:
            raise Rejection(401, "task_runtime_mismatch", "the task belongs to another runtime")
        if task.revoked:
            raise Rejection(401, "task_revoked", "the task has been revoked")
        return Verified(
            ASSERTION_SCHEME, identity.account, envelope.agent_runtime_id, envelope.task_id
        )

    def _check_skew(self, moment: datetime) -> None:
        if abs(self._clock.now() - moment) > self._skew:
            raise Rejection(
                401, "stale_timestamp", "the signed timestamp is outside the accepted window"
            )

    # -- test controls -------------------------------------------------------------------------

    def count_request(self, endpoint: str) -> None:
        """Count one request that reached a protocol endpoint."""
        self._counters.by_endpoint[endpoint] += 1

    def count(self, counter: str) -> None:
        """Add one to a counter of :class:`EmulatorStats` (one of :data:`COUNTERS`).

        Raises:
            KeyError: no such counter.
        """
        if counter not in COUNTERS:
            raise KeyError(counter)
        self._counters.values[counter] += 1

    def take_fault(self, endpoint: str) -> Fault | None:
        """The injected fault that answers this request, if any (counted as applied)."""
        fault = self.faults.take(endpoint)
        if fault is not None:
            self._counters.values["faults_applied"] += 1
        return fault

    def stats(self) -> EmulatorStats:
        """A snapshot of the counters."""
        values = self._counters.values
        return EmulatorStats(
            biscuits_minted=values["biscuits_minted"],
            identity_registrations=values["identity_registrations"],
            task_registrations=values["task_registrations"],
            verifications_ok=values["verifications_ok"],
            verifications_failed=values["verifications_failed"],
            faults_applied=values["faults_applied"],
            requests_by_endpoint={name: self._counters.by_endpoint[name] for name in ENDPOINTS},
            task_registrations_with_credential=values["task_registrations_with_credential"],
            jwts_minted=values["jwts_minted"],
            oauth=self.logins.stats(),
        )

    def revoke_task(self, task_id: str) -> bool:
        """Revoke a task; report whether it existed."""
        task = self._tasks.get(task_id)
        if task is None:
            return False
        task.revoked = True
        return True

    def tasks(self) -> list[EmulatorTask]:
        """Every registered task, in registration order."""
        return [EmulatorTask(t.agent_runtime_id, tid, t.revoked) for tid, t in self._tasks.items()]

    def identities(self) -> list[EmulatorIdentity]:
        """Every registered identity, in registration order."""
        return [identity.view for identity in self._identities.values()]

    def reset(self, *, state: bool = False) -> None:
        """Clear faults, counters and queued discovery answers; with ``state`` also the state.

        ``state`` also forgets identities, tasks, biscuits, logins and workspace routes.
        """
        self.faults.clear()
        self._counters = _Counters()
        self.logins.reset(state=state)
        self.routes.reset(state=state)
        if state:
            self._identities.clear()
            self._tasks.clear()
            self._biscuits.clear()
