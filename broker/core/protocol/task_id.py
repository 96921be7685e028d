"""Task ids in registration responses: plaintext or sealed to the identity (protocol §5.2, §5.3)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import nacl.exceptions
import nacl.public

from broker.core.protocol.keys import AgentKey, curve25519_public_from_ed25519
from broker.errors import TaskIdError


def open_encrypted_task_id(key: AgentKey, encrypted_task_id: str) -> str:
    """Open a libsodium sealed box addressed to the identity's X25519 key (§5.3).

    Raises:
        TaskIdError: bad base64, failed decryption, or plaintext that is not UTF-8.
    """
    try:
        sealed = base64.b64decode(encrypted_task_id, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaskIdError("encrypted task id is not valid base64") from exc
    box = nacl.public.SealedBox(nacl.public.PrivateKey(key.curve25519_secret()))
    try:
        plaintext = box.decrypt(sealed)
    except (
        nacl.exceptions.CryptoError,
        nacl.exceptions.ValueError,
        nacl.exceptions.TypeError,
    ) as exc:
        raise TaskIdError("failed to decrypt encrypted task id") from exc
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskIdError("decrypted task id is not valid UTF-8") from exc


def seal_task_id(public_key: bytes, task_id: str) -> str:
    """Seal ``task_id`` to the X25519 conversion of an Ed25519 public key: the server side of §5.3.

    libsodium draws the ephemeral key itself; this is the control plane's (emulator's) operation.
    """
    recipient = nacl.public.PublicKey(curve25519_public_from_ed25519(public_key))
    sealed = nacl.public.SealedBox(recipient).encrypt(task_id.encode("utf-8"))
    return base64.b64encode(sealed).decode("ascii")


def task_id_from_response(key: AgentKey, body: Mapping[str, object]) -> str:
    """Extract the task id from a registration response, in the reference priority order (§5.2).

    Plaintext ``task_id``/``taskId`` wins; otherwise ``encrypted_task_id``/``encryptedTaskId`` is
    opened with :func:`open_encrypted_task_id`.

    Raises:
        TaskIdError: neither form is present, or the sealed form cannot be opened, or the id is empty.
    """
    for name in ("task_id", "taskId"):
        value = body.get(name)
        if isinstance(value, str):
            return _non_empty(value)
    for name in ("encrypted_task_id", "encryptedTaskId"):
        value = body.get(name)
        if isinstance(value, str):
            return _non_empty(open_encrypted_task_id(key, value))
    raise TaskIdError("task id missing from the agent task registration response")


def _non_empty(task_id: str) -> str:
    if not task_id.strip():
        raise TaskIdError("task id in the registration response is empty")
    return task_id
