"""The task-registration request: signed payload and body (protocol §5.1)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime

from broker.core.protocol.keys import AgentKey, verify_signature
from broker.core.protocol.timestamps import format_timestamp, parse_timestamp
from broker.errors import ProtocolError, SignatureInvalid


def task_registration_payload(agent_runtime_id: str, timestamp: str) -> bytes:
    """The bytes that are signed: ``<agent_runtime_id>:<timestamp>``, UTF-8, nothing else (§5.1)."""
    return f"{agent_runtime_id}:{timestamp}".encode()


def task_registration_body(key: AgentKey, agent_runtime_id: str, now: datetime) -> dict[str, str]:
    """Build the JSON body ``{"timestamp", "signature"}`` of a task registration (§5.1).

    Args:
        key: the identity's signing key.
        agent_runtime_id: the runtime id the control plane gave the identity.
        now: the current time (injected; never read here).

    Returns:
        The body, with the signature as padded standard base64.
    """
    timestamp = format_timestamp(now)
    signature = key.sign(task_registration_payload(agent_runtime_id, timestamp))
    return {"timestamp": timestamp, "signature": base64.b64encode(signature).decode("ascii")}


def verify_task_registration(
    public_key: bytes, agent_runtime_id: str, body: Mapping[str, object]
) -> datetime:
    """Check a task-registration body the way a control plane does (§12.2).

    Returns:
        The parsed timestamp, for the caller's skew check.

    Raises:
        ProtocolError: a field is missing or malformed.
        SignatureInvalid: the signature does not verify.
    """
    timestamp = body.get("timestamp")
    signature_b64 = body.get("signature")
    if not isinstance(timestamp, str) or not isinstance(signature_b64, str):
        raise ProtocolError("task registration body needs string 'timestamp' and 'signature'")
    moment = parse_timestamp(timestamp)
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("task registration signature is not valid base64") from exc
    if not verify_signature(
        public_key, task_registration_payload(agent_runtime_id, timestamp), signature
    ):
        raise SignatureInvalid("task registration signature does not verify")
    return moment
