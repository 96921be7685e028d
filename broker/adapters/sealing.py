"""Secrets at rest: sealing values with a key-encryption key (DESIGN §4 "Secrets at rest").

Every secret the broker writes outside process memory (an identity's private key, cached assertion
headers) goes through a :class:`~broker.core.credentials.ports.Sealer`. Two implementations exist:

* :class:`KekSealer` (production): XChaCha20-Poly1305 (IETF AEAD, libsodium via PyNaCl) under a
  256-bit key-encryption key (KEK). The associated data is the Redis key name the value is stored
  under, so a value copied under another key name fails to open. The sealed form is self-describing::

      b"cb1" | len(key_id) (1 byte) | key_id (ASCII) | nonce (24 bytes) | ciphertext + tag (16 bytes)

  The header (``b"cb1"``, the length and the key id) is authenticated too: it is prepended to the
  associated data. Several KEKs may be configured: the first (primary) seals, every one opens, so a
  KEK is rotated by adding a new primary line on top of the KEK file and removing the old line once
  every value sealed under it has expired or been rewritten.
* :class:`PlaintextSealer` (``BROKER_ALLOW_UNSEALED_STORE``, development only): ``b"cb0" | plaintext``; it does not
  bind the associated data.

Neither opens the other's values: a broker switched from one mode to the other reports the stored
values as unopenable (they are discarded and re-established) instead of silently serving them.

KEK file format (:func:`load_kek_file`)::

    # comments and blank lines are ignored; the first key line is the primary
    k2026-04 q6Zp4S3bV0QmXJm8Xx0p2h0U6eYt7m6o0k1mW1q8fJ4=
    k2025-10 0bq8m9wq3Kx3t+u5v2fQm8c1H3y1mA3q4G7n5m0Qm1s=

A line may also hold just the base64 key; its id is then the first 16 hex digits of the SHA-256 of
the key (``base64 -d | sha256sum | cut -c1-16``). Errors name the file and line, never key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import nacl.bindings
import nacl.exceptions
import nacl.utils

from broker.core.credentials.ports import Sealer
from broker.errors import ConfigError, SealingError, UnknownKek

__all__ = [
    "KEK_LEN",
    "KekSealer",
    "PlaintextSealer",
    "Sealer",
    "derive_key_id",
    "generate_kek_line",
    "load_kek_file",
]

KEK_LEN: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
_NONCE_LEN: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
_TAG_LEN: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
_SEALED: Final = b"cb1"
_PLAINTEXT: Final = b"cb0"
_VERSION_LEN: Final = 3
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_KEY_ID_RULE: Final = "a key id is 1-32 characters of A-Z a-z 0-9 _ . -"


def derive_key_id(key: bytes) -> str:
    """The id of a KEK given without one: the first 16 hex digits of its SHA-256.

    Args:
        key: the 32-byte KEK.

    Returns:
        A 16-character lower-case hex string (a valid key id).
    """
    return hashlib.sha256(key).hexdigest()[:16]


class KekSealer:
    """XChaCha20-Poly1305 sealing under one primary KEK, opening under any configured KEK.

    Args:
        keys: ``(key_id, key)`` pairs, primary first; ids are 1-32 characters of ``[A-Za-z0-9_.-]``
            and unique, keys are 32 bytes and distinct.

    Raises:
        ValueError: no keys, a malformed or duplicate id, or a key of the wrong length.
    """

    __slots__ = ("_keys", "_primary")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("KekSealer needs at least one key")
        table: dict[str, bytes] = {}
        for key_id, key in keys:
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(_KEY_ID_RULE)
            if len(key) != KEK_LEN:
                raise ValueError(f"KEK {key_id!r} is {len(key)} bytes, expected {KEK_LEN}")
            if key_id in table:
                raise ValueError(f"KEK id {key_id!r} is given twice")
            table[key_id] = bytes(key)
        self._keys: Final = table
        self._primary: Final = keys[0][0]

    def __repr__(self) -> str:
        return f"KekSealer(primary={self._primary!r}, key_ids={list(self._keys)!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a KekSealer holds key material and cannot be pickled")

    @property
    def primary_key_id(self) -> str:
        """The id of the KEK new values are sealed with."""
        return self._primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every KEK id that can open values, primary first."""
        return tuple(self._keys)

    @staticmethod
    def key_id_of(sealed: bytes) -> str | None:
        """The KEK id a ``cb1`` value names in its header, or ``None`` if it is not one."""
        if sealed[:_VERSION_LEN] != _SEALED or len(sealed) <= _VERSION_LEN:
            return None
        raw = sealed[_VERSION_LEN + 1 : _VERSION_LEN + 1 + sealed[_VERSION_LEN]]
        try:
            key_id = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        return key_id if _KEY_ID.fullmatch(key_id) else None

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` under the primary KEK, bound to ``associated_data``.

        Args:
            plaintext: the secret bytes.
            associated_data: the Redis key name (and field) the value is stored under.

        Returns:
            The self-describing sealed value (``b"cb1"`` format).
        """
        key_id = self._primary.encode("ascii")
        header = _SEALED + bytes([len(key_id)]) + key_id
        nonce = nacl.utils.random(_NONCE_LEN)
        ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, header + associated_data, nonce, self._keys[self._primary]
        )
        return header + nonce + ciphertext

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        """Authenticate and decrypt a value made by :meth:`seal` with any configured KEK.

        Args:
            sealed: the stored value.
            associated_data: the Redis key name (and field) it was read from.

        Returns:
            The plaintext.

        Raises:
            SealingError: not a ``cb1`` value (a plaintext ``cb0`` value included), truncated, sealed
                under an unknown KEK, or it fails authentication (wrong key, another key name, tampering).
        """
        version = sealed[:_VERSION_LEN]
        if version == _PLAINTEXT:
            raise SealingError(
                "value was stored in plaintext by a broker without a KEK; a broker with a KEK refuses it"
            )
        if version != _SEALED:
            raise SealingError("value is not in a known sealed format")
        if len(sealed) <= _VERSION_LEN:
            raise SealingError("sealed value is truncated")
        id_end = _VERSION_LEN + 1 + sealed[_VERSION_LEN]
        try:
            key_id = sealed[_VERSION_LEN + 1 : id_end].decode("ascii")
        except UnicodeDecodeError:
            raise SealingError("sealed value has a malformed key id") from None
        if len(sealed) < id_end + _NONCE_LEN + _TAG_LEN:
            raise SealingError("sealed value is truncated")
        if not _KEY_ID.fullmatch(key_id):
            raise SealingError("sealed value has a malformed key id")
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKek(f"value is sealed under KEK {key_id!r}, which is not configured")
        nonce = sealed[id_end : id_end + _NONCE_LEN]
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed[id_end + _NONCE_LEN :], sealed[:id_end] + associated_data, nonce, key
            )
        except nacl.exceptions.CryptoError:
            raise SealingError(
                "sealed value fails authentication: another key name, another KEK, or tampering"
            ) from None


class PlaintextSealer:
    """``BROKER_ALLOW_UNSEALED_STORE`` (development only): values are stored as ``b"cb0" + plaintext``.

    It refuses ``cb1`` (KEK-sealed) values, so switching a deployment to unsealed mode never serves
    (or overwrites in place) what a KEK protected; the associated data is not bound.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "PlaintextSealer()"

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Wrap ``plaintext`` unencrypted (``associated_data`` is ignored).

        Args:
            plaintext: the value.
            associated_data: unused; accepted for the Sealer interface.

        Returns:
            ``b"cb0" + plaintext``.
        """
        del associated_data
        return _PLAINTEXT + plaintext

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        """Unwrap a ``cb0`` value.

        Args:
            sealed: the stored value.
            associated_data: unused.

        Returns:
            The plaintext.

        Raises:
            SealingError: a KEK-sealed ``cb1`` value, or any other format.
        """
        del associated_data
        version = sealed[:_VERSION_LEN]
        if version == _SEALED:
            raise SealingError(
                "value is sealed with a KEK; a broker without one cannot open it (configure the KEK file)"
            )
        if version != _PLAINTEXT:
            raise SealingError("value is not in a known stored format")
        return sealed[_VERSION_LEN:]


def generate_kek_line(key_id: str | None = None) -> str:
    """A new KEK file line, ``<key-id> <base64 of 32 random bytes>``.

    Args:
        key_id: the id to give the key; by default :func:`derive_key_id` of the new key.

    Returns:
        The line, without a newline. It holds key material: write it only to the KEK file.

    Raises:
        ValueError: ``key_id`` is malformed.
    """
    if key_id is not None and not _KEY_ID.fullmatch(key_id):
        raise ValueError(_KEY_ID_RULE)
    key = nacl.utils.random(KEK_LEN)
    return f"{key_id or derive_key_id(key)} {base64.b64encode(key).decode('ascii')}"


def load_kek_file(path: str | os.PathLike[str]) -> KekSealer:
    """Read a KEK file (format in the module docstring) into a :class:`KekSealer`.

    Args:
        path: the file; its first key line is the primary.

    Returns:
        A sealer holding every key of the file.

    Raises:
        ConfigError: unreadable file, no keys, or a malformed line; the message names the file and
            line and never contains key material.
    """
    where = f"KEK file {os.fspath(path)}"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # ``from None``: the decode error holds the file's bytes, which must not reach a traceback.
        raise ConfigError(f"{where}: is not UTF-8 text") from None
    keys: list[tuple[str, bytes]] = []
    id_lines: dict[str, int] = {}
    key_lines: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        at = f"{where}, line {number}"
        if len(fields) > 2:
            raise ConfigError(
                f"{at}: expected '<key-id> <base64 key>' or a single base64 key, found {len(fields)} fields"
            )
        key = _decode_key(fields[-1], at)
        key_id = fields[0] if len(fields) == 2 else derive_key_id(key)
        if not _KEY_ID.fullmatch(key_id):
            raise ConfigError(f"{at}: malformed key id ({_KEY_ID_RULE})")
        if key_id in id_lines:
            raise ConfigError(f"{at}: key id {key_id!r} is already used on line {id_lines[key_id]}")
        if key in key_lines:
            raise ConfigError(f"{at}: the same key is already given on line {key_lines[key]}")
        id_lines[key_id] = number
        key_lines[key] = number
        keys.append((key_id, key))
    if not keys:
        raise ConfigError(
            f"{where}: holds no keys (expected '<key-id> <base64 of {KEK_LEN} bytes>' lines, "
            "the first one is the primary)"
        )
    return KekSealer(keys)


def _decode_key(text: str, at: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{at}: the key is not valid standard base64") from None
    if len(key) != KEK_LEN:
        raise ConfigError(f"{at}: the key decodes to {len(key)} bytes, expected {KEK_LEN}")
    return key


if TYPE_CHECKING:
    _kek_check: type[Sealer] = KekSealer
    _plain_check: type[Sealer] = PlaintextSealer
