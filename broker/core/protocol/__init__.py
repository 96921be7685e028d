"""The agent-identity protocol as pure functions: no I/O, no clock reads, no hidden randomness.

Section numbers (§) refer to the protocol note, ``agent-identity.md``.
"""

from __future__ import annotations

from broker.core.protocol.assertion import (
    AssertionEnvelope,
    build_assertion,
    parse_assertion,
    verify_assertion,
)
from broker.core.protocol.keys import AgentKey, encode_ssh_public_key, parse_ssh_public_key
from broker.core.protocol.task_id import open_encrypted_task_id, seal_task_id, task_id_from_response
from broker.core.protocol.task_registration import (
    task_registration_body,
    verify_task_registration,
)
from broker.core.protocol.timestamps import format_timestamp, parse_timestamp
from broker.core.protocol.urls import is_supported_host, normalize_chatgpt_base_url

__all__ = [
    "AgentKey",
    "AssertionEnvelope",
    "build_assertion",
    "encode_ssh_public_key",
    "format_timestamp",
    "is_supported_host",
    "normalize_chatgpt_base_url",
    "open_encrypted_task_id",
    "parse_assertion",
    "parse_ssh_public_key",
    "parse_timestamp",
    "seal_task_id",
    "task_id_from_response",
    "task_registration_body",
    "verify_assertion",
    "verify_task_registration",
]
