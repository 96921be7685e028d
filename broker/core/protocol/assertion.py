"""The AgentAssertion header: build, parse and verify (protocol §6, §12.3)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from broker.core.protocol.keys import AgentKey, verify_signature
from broker.core.protocol.timestamps import format_timestamp, parse_timestamp
from broker.errors import AssertionFormatError, RuntimeMismatch, SignatureInvalid

SCHEME: Final = "AgentAssertion"
_FIELDS: Final = ("agent_runtime_id", "signature", "task_id", "timestamp")
# A header far beyond any real envelope is refused before decoding (a runtime id, a task id and a
# timestamp, base64url-encoded, stay well under 4 KiB).
MAX_TOKEN_LEN: Final = 8192
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+={0,2}")


@dataclass(frozen=True, slots=True)
class AssertionEnvelope:
    """The four string members of an assertion envelope (§6.1)."""

    agent_runtime_id: str
    task_id: str
    timestamp: str
    signature: str

    def signed_payload(self) -> bytes:
        """``<agent_runtime_id>:<task_id>:<timestamp>`` as UTF-8: what the signature covers (§6.1)."""
        return assertion_payload(self.agent_runtime_id, self.task_id, self.timestamp)

    def to_json(self) -> str:
        """Compact JSON, keys in byte order, only ``"``, ``\\`` and controls escaped (§6.1 step 5)."""
        return json.dumps(
            {
                "agent_runtime_id": self.agent_runtime_id,
                "signature": self.signature,
                "task_id": self.task_id,
                "timestamp": self.timestamp,
            },
            separators=(",", ":"),
            sort_keys=True,
            ensure_ascii=False,
        )

    def token(self) -> str:
        """Base64url without padding of the envelope JSON (§6.1 step 6)."""
        return base64.urlsafe_b64encode(self.to_json().encode()).rstrip(b"=").decode("ascii")

    def header_value(self) -> str:
        """``AgentAssertion <token>``, the ``Authorization`` value (§6.1 step 7)."""
        return f"{SCHEME} {self.token()}"

    def issued_at(self) -> datetime:
        """The envelope's timestamp as an aware UTC datetime."""
        return parse_timestamp(self.timestamp)


def assertion_payload(agent_runtime_id: str, task_id: str, timestamp: str) -> bytes:
    """The signed bytes of an assertion (§6.1 step 3)."""
    return f"{agent_runtime_id}:{task_id}:{timestamp}".encode()


def build_assertion(
    key: AgentKey,
    identity_runtime_id: str,
    task_runtime_id: str,
    task_id: str,
    now: datetime,
) -> AssertionEnvelope:
    """Sign an assertion for ``task_id`` at ``now`` (§6.1).

    Args:
        key: the identity's signing key.
        identity_runtime_id: the runtime id of the identity that holds ``key``.
        task_runtime_id: the runtime id the task was registered under.
        task_id: the registered task.
        now: the current time (injected).

    Raises:
        RuntimeMismatch: the task belongs to another runtime (§6.1 step 1).
    """
    if task_runtime_id != identity_runtime_id:
        raise RuntimeMismatch(
            f"agent task runtime {task_runtime_id} does not match stored agent identity "
            f"{identity_runtime_id}"
        )
    timestamp = format_timestamp(now)
    signature = key.sign(assertion_payload(identity_runtime_id, task_id, timestamp))
    return AssertionEnvelope(
        agent_runtime_id=identity_runtime_id,
        task_id=task_id,
        timestamp=timestamp,
        signature=base64.b64encode(signature).decode("ascii"),
    )


def parse_assertion(header_value: str) -> AssertionEnvelope:
    """Decode an ``AgentAssertion <token>`` header into its envelope, without verifying it (§12.3).

    Missing base64 padding is tolerated; the JSON must be an object whose four members are strings.

    Raises:
        AssertionFormatError: wrong scheme, bad base64url, bad JSON or missing/non-string members.
    """
    prefix = SCHEME + " "
    if not header_value.startswith(prefix):
        raise AssertionFormatError("authorization scheme is not 'AgentAssertion '")
    token = header_value[len(prefix) :].strip()
    if not token or len(token) > MAX_TOKEN_LEN:
        raise AssertionFormatError("assertion token is empty or too long")
    if not _BASE64URL.fullmatch(token):
        raise AssertionFormatError("assertion token is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(token.rstrip("=") + "=" * (-len(token.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as exc:
        raise AssertionFormatError("assertion token is not valid base64url") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AssertionFormatError("assertion envelope is not UTF-8 JSON") from exc
    if not isinstance(data, dict):
        raise AssertionFormatError("assertion envelope is not a JSON object")
    values = {name: data.get(name) for name in _FIELDS}
    missing = [name for name, value in values.items() if not isinstance(value, str)]
    if missing:
        raise AssertionFormatError(
            f"assertion envelope lacks string member(s): {', '.join(missing)}"
        )
    return AssertionEnvelope(
        agent_runtime_id=str(values["agent_runtime_id"]),
        task_id=str(values["task_id"]),
        timestamp=str(values["timestamp"]),
        signature=str(values["signature"]),
    )


def verify_assertion(envelope: AssertionEnvelope, public_key: bytes) -> None:
    """Verify the envelope's signature over the payload rebuilt from its own fields (§6.1, §12.3).

    Freshness (the skew window) and task liveness are the verifier's policy, not checked here.

    Raises:
        AssertionFormatError: the signature is not base64 or the timestamp is not RFC 3339.
        SignatureInvalid: the signature does not verify.
    """
    parse_timestamp(envelope.timestamp)
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AssertionFormatError("assertion signature is not valid base64") from exc
    if not verify_signature(public_key, envelope.signed_payload(), signature):
        raise SignatureInvalid("assertion signature does not verify")
