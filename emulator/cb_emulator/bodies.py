"""Request bodies of the registration endpoints, checked as the emulator's policy says (§4, §12.1).

Unknown members are ignored everywhere (the reference ignores unknown response fields and sends new
request fields over time, §12.1).
"""

from __future__ import annotations

from broker.core.protocol.keys import parse_ssh_public_key
from broker.errors import KeyFormatError
from cb_emulator.model import Rejection


def identity_fields(body: object) -> tuple[bytes, tuple[str, ...]]:
    """The public key and capabilities of an identity registration body (§4.1, §4.3, §12.1).

    Unknown members are ignored; ``ttl`` may be absent, null or a positive integer.

    Raises:
        Rejection: 400 ``invalid_body``, ``invalid_field`` or ``invalid_public_key``.
    """
    fields = json_object(body)
    public_key_text = fields.get("agent_public_key")
    if not isinstance(public_key_text, str):
        raise Rejection(400, "invalid_field", "agent_public_key must be a string")
    try:
        public_key = parse_ssh_public_key(public_key_text)
    except KeyFormatError as exc:
        raise Rejection(400, "invalid_public_key", exc.message) from exc
    if not isinstance(fields.get("abom"), dict):
        raise Rejection(400, "invalid_field", "abom must be an object")
    capabilities = fields.get("capabilities")
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise Rejection(400, "invalid_field", "capabilities must be an array of strings")
    ttl = fields.get("ttl")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
        raise Rejection(400, "invalid_field", "ttl must be null or a positive integer")
    return public_key, tuple(capabilities)


def json_object(body: object) -> dict[str, object]:
    """The body as a JSON object with string keys.

    Raises:
        Rejection: 400 ``invalid_body`` when it is not an object.
    """
    if not isinstance(body, dict):
        raise Rejection(400, "invalid_body", "the request body must be a JSON object")
    return {str(k): v for k, v in body.items()}
