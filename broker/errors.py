"""The broker's exception tree.

Every error the broker raises on purpose is a :class:`BrokerError`. Each class names a stable,
machine-readable ``reason`` (sent to callers as ``google.rpc.ErrorInfo.reason``) and a ``kind`` that the
transport maps to a gRPC status code in exactly one table (``transport/grpc/status.py``). Messages are
written at the raise site, are precise, and never contain a secret: callers and logs see them verbatim.

Every deliberate error is defined here, so this is the whole tree (``reason``, kind)::

    BrokerError
    ├── AccountUnusable (REAUTH_REQUIRED, FAILED_PRECONDITION)
    ├── BootstrapRefused (BOOTSTRAP_REFUSED, FAILED_PRECONDITION)
    ├── CallerDenied (PERMISSION_DENIED, PERMISSION_DENIED)
    │   ├── BearerNotAllowed (BEARER_NOT_ALLOWED, FAILED_PRECONDITION)
    │   ├── RateLimited (RATE_LIMITED, RESOURCE_EXHAUSTED)
    │   ├── ReportRefused (REPORT_REFUSED, PERMISSION_DENIED)
    │   └── Unauthenticated (UNAUTHENTICATED, UNAUTHENTICATED)
    ├── ConfigError (INVALID_CONFIGURATION, FAILED_PRECONDITION)
    ├── ControlPlaneError (CONTROL_PLANE_ERROR, FAILED_PRECONDITION)
    │   └── ControlPlaneUnavailable (CONTROL_PLANE_UNAVAILABLE, UNAVAILABLE)
    ├── EmulatorNotInstalled (EMULATOR_NOT_INSTALLED, FAILED_PRECONDITION)
    ├── IdentityUnusable (IDENTITY_UNUSABLE, FAILED_PRECONDITION)
    │   └── AgentJwtError (AGENT_JWT_INVALID, FAILED_PRECONDITION)
    ├── InvalidArgument (INVALID_ARGUMENT, INVALID_ARGUMENT)
    ├── NoBearerToken (NO_BEARER_TOKEN, FAILED_PRECONDITION)
    ├── ProtocolError (PROTOCOL_ERROR, INVALID_ARGUMENT)
    │   ├── AssertionFormatError (ASSERTION_FORMAT, INVALID_ARGUMENT)
    │   ├── KeyFormatError (KEY_FORMAT, INVALID_ARGUMENT)
    │   ├── LoginFormatError (LOGIN_INVALID, INVALID_ARGUMENT)
    │   ├── RuntimeMismatch (RUNTIME_MISMATCH, INVALID_ARGUMENT)
    │   ├── SignatureInvalid (SIGNATURE_INVALID, INVALID_ARGUMENT)
    │   ├── TaskIdError (TASK_ID_INVALID, INVALID_ARGUMENT)
    │   └── UrlError (URL_INVALID, INVALID_ARGUMENT)
    ├── RefreshOutcomeUnknown (REFRESH_OUTCOME_UNKNOWN, UNAVAILABLE)
    ├── RefreshRejected (REAUTH_REQUIRED, FAILED_PRECONDITION)
    ├── RefreshUnavailable (REFRESH_UNAVAILABLE, UNAVAILABLE)
    ├── SealingError (SEALED_VALUE_INVALID, INTERNAL)
    │   └── UnknownKek (KEK_NOT_CONFIGURED, UNAVAILABLE)
    ├── SingleFlightTimeout (REGISTRATION_IN_PROGRESS, UNAVAILABLE)
    ├── StoreCorrupt (STORE_CORRUPT, UNAVAILABLE)
    ├── StoreUnavailable (STORE_UNAVAILABLE, UNAVAILABLE)
    ├── TaskUnavailable (TASK_REGISTRATION_UNAVAILABLE, UNAVAILABLE)
    ├── ThreadTaskBudgetExhausted (THREAD_TASK_BUDGET_EXHAUSTED, RESOURCE_EXHAUSTED)
    ├── UnknownIdentity (UNKNOWN_IDENTITY, NOT_FOUND)
    ├── WorkspaceRoutingInvalid (WORKSPACE_ROUTING_INVALID, FAILED_PRECONDITION)
    ├── WorkspaceRoutingUnauthorized (WORKSPACE_ROUTING_UNAUTHORIZED, FAILED_PRECONDITION)
    └── WorkspaceRoutingUnavailable (WORKSPACE_ROUTING_UNAVAILABLE, UNAVAILABLE)

A test (``tests/unit/test_errors.py``) keeps this drawing equal to the classes. This module imports
nothing from grpc, redis or httpx.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorKind(enum.Enum):
    """What kind of failure an error is; the transport maps each to one gRPC status."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    INTERNAL = "internal"


class BrokerError(Exception):
    """Base of every deliberate broker error.

    Attributes:
        reason: stable upper-snake-case identifier for machines (ErrorInfo.reason).
        kind: the failure class, mapped to a gRPC status at the edge.
        message: human-readable text, free of secrets.
    """

    reason: ClassVar[str] = "BROKER_ERROR"
    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(BrokerError):
    """A setting is missing or invalid; the message names the setting."""

    reason = "INVALID_CONFIGURATION"
    kind = ErrorKind.FAILED_PRECONDITION


class InvalidArgument(BrokerError):
    """A request field is malformed; the message names the field."""

    reason = "INVALID_ARGUMENT"
    kind = ErrorKind.INVALID_ARGUMENT


class ProtocolError(BrokerError):
    """Input does not follow the agent-identity protocol (bad key, envelope, task id...)."""

    reason = "PROTOCOL_ERROR"
    kind = ErrorKind.INVALID_ARGUMENT


class KeyFormatError(ProtocolError):
    """A private or public key is not in a form the protocol allows (protocol §2)."""

    reason = "KEY_FORMAT"


class AssertionFormatError(ProtocolError):
    """An AgentAssertion header or envelope is malformed (protocol §6, §12.3)."""

    reason = "ASSERTION_FORMAT"


class SignatureInvalid(ProtocolError):
    """A signature does not verify against the public key (protocol §5, §6)."""

    reason = "SIGNATURE_INVALID"


class RuntimeMismatch(ProtocolError):
    """A task belongs to another agent runtime than the identity signing for it (protocol §6.1)."""

    reason = "RUNTIME_MISMATCH"


class TaskIdError(ProtocolError):
    """A task registration response carries no usable task id (protocol §5.2, §5.3)."""

    reason = "TASK_ID_INVALID"


class UrlError(ProtocolError):
    """A control-plane base URL cannot be used (protocol §3)."""

    reason = "URL_INVALID"


class EmulatorNotInstalled(BrokerError):
    """A development command needs the control-plane emulator, which is not installed."""

    reason = "EMULATOR_NOT_INSTALLED"
    kind = ErrorKind.FAILED_PRECONDITION


class UnknownIdentity(BrokerError):
    """No identity with this name is configured."""

    reason = "UNKNOWN_IDENTITY"
    kind = ErrorKind.NOT_FOUND


class IdentityUnusable(BrokerError):
    """The identity cannot produce an assertion and no Bearer fallback is possible."""

    reason = "IDENTITY_UNUSABLE"
    kind = ErrorKind.FAILED_PRECONDITION


class BootstrapRefused(BrokerError):
    """The control plane refused to bootstrap the identity for good (a 4xx other than 429, §8.5)."""

    reason = "BOOTSTRAP_REFUSED"
    kind = ErrorKind.FAILED_PRECONDITION


class NoBearerToken(BrokerError):
    """A Bearer was required but the account's token is missing or empty."""

    reason = "NO_BEARER_TOKEN"
    kind = ErrorKind.FAILED_PRECONDITION


class TaskUnavailable(BrokerError):
    """A thread's task could not be registered; thread calls never fall back to Bearer (§8.3)."""

    reason = "TASK_REGISTRATION_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class ThreadTaskBudgetExhausted(BrokerError):
    """A new thread task was refused: a fleet-wide budget or the cap on live thread tasks is spent.

    Attributes:
        limit: which limit refused (``identity``, ``caller:<name>``, ``live_thread_tasks``).
        retry_after: seconds until the same request would be admitted (sent as RetryInfo).
    """

    reason = "THREAD_TASK_BUDGET_EXHAUSTED"
    kind = ErrorKind.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, limit: str, retry_after: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class ControlPlaneError(BrokerError):
    """The control plane answered with an error, or could not be reached.

    Attributes:
        status: the HTTP status, or ``None`` when no response arrived.
        body_excerpt: at most 512 characters of the response body.
        operation: which call failed (``mint_biscuit``, ``register_identity``, ``register_task``).
    """

    reason = "CONTROL_PLANE_ERROR"
    kind = ErrorKind.FAILED_PRECONDITION

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        status: int | None = None,
        body_excerpt: str = "",
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.status = status
        self.body_excerpt = body_excerpt


class ControlPlaneUnavailable(ControlPlaneError):
    """Retryable control-plane failure (429, 5xx, timeout, connection error) after all attempts."""

    reason = "CONTROL_PLANE_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class StoreUnavailable(BrokerError):
    """The shared state store (Redis) cannot be reached and nothing valid is cached."""

    reason = "STORE_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class StoreCorrupt(BrokerError):
    """A stored value cannot be opened or parsed; it is discarded and re-established."""

    reason = "STORE_CORRUPT"
    kind = ErrorKind.UNAVAILABLE


class SealingError(BrokerError):
    """A sealed value cannot be opened: wrong key, wrong Redis key name, or tampering."""

    reason = "SEALED_VALUE_INVALID"
    kind = ErrorKind.INTERNAL


class UnknownKek(SealingError):
    """A value names a KEK this replica does not hold (a rotation in progress): not corrupt."""

    reason = "KEK_NOT_CONFIGURED"
    kind = ErrorKind.UNAVAILABLE


class RefreshRejected(BrokerError):
    """The provider refused the refresh token (``invalid_grant``): the login must be redone."""

    reason = "REAUTH_REQUIRED"
    kind = ErrorKind.FAILED_PRECONDITION


class RefreshOutcomeUnknown(BrokerError):
    """A refresh request may have reached the provider but its answer was lost."""

    reason = "REFRESH_OUTCOME_UNKNOWN"
    kind = ErrorKind.UNAVAILABLE


class RefreshUnavailable(BrokerError):
    """The provider could not be asked (nothing consumed); a later refresh may succeed."""

    reason = "REFRESH_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class AccountUnusable(BrokerError):
    """The account's login cannot give a Bearer (re-login needed, or not imported)."""

    reason = "REAUTH_REQUIRED"
    kind = ErrorKind.FAILED_PRECONDITION


class WorkspaceRoutingUnavailable(BrokerError):
    """The account's workspace route could not be discovered now (backend unreachable, or another
    replica's discovery outlasted the wait): calls that need it fail closed, never to a guessed
    origin."""

    reason = "WORKSPACE_ROUTING_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class WorkspaceRoutingInvalid(BrokerError):
    """The backend's routing answer cannot be used (an invalid origin, an unknown override, an
    entry naming another account, or an error status)."""

    reason = "WORKSPACE_ROUTING_INVALID"
    kind = ErrorKind.FAILED_PRECONDITION


class WorkspaceRoutingUnauthorized(BrokerError):
    """Route discovery refused the account's Bearer (401), also after re-reading it."""

    reason = "WORKSPACE_ROUTING_UNAUTHORIZED"
    kind = ErrorKind.FAILED_PRECONDITION


# -- the caller's policy ------------------------------------------------------------------------


class CallerDenied(BrokerError):
    """A caller was refused; ``rule`` names the policy rule (for the ``caller.denied`` event)."""

    reason: ClassVar[str] = "PERMISSION_DENIED"
    kind: ClassVar[ErrorKind] = ErrorKind.PERMISSION_DENIED

    def __init__(self, message: str, *, rule: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.retry_after = retry_after


class Unauthenticated(CallerDenied):
    """No credential, or one that names no configured caller."""

    reason = "UNAUTHENTICATED"
    kind = ErrorKind.UNAUTHENTICATED


class RateLimited(CallerDenied):
    """The caller exceeded its rate limit; retry after ``retry_after`` seconds."""

    reason = "RATE_LIMITED"
    kind = ErrorKind.RESOURCE_EXHAUSTED


class ReportRefused(CallerDenied):
    """A rejection report named a header this broker did not issue (forged, or another key's)."""

    reason = "REPORT_REFUSED"
    kind = ErrorKind.PERMISSION_DENIED


class BearerNotAllowed(CallerDenied):
    """A Bearer fallback was due but the caller may not receive the account's token."""

    reason = "BEARER_NOT_ALLOWED"
    kind = ErrorKind.FAILED_PRECONDITION


# -- registration, the Agent Identity JWT and the login record ---------------------------------


class SingleFlightTimeout(BrokerError):
    """Another replica held the registration lock for longer than this caller could wait."""

    reason = "REGISTRATION_IN_PROGRESS"
    kind = ErrorKind.UNAVAILABLE


class AgentJwtError(IdentityUnusable):
    """The Agent Identity JWT is malformed, untrusted or expired; the message says which."""

    reason = "AGENT_JWT_INVALID"


class LoginFormatError(ProtocolError):
    """A login record or token is malformed; the message names the field."""

    reason = "LOGIN_INVALID"
