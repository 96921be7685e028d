"""Ed25519 key material of an agent identity (protocol §2).

An :class:`AgentKey` wraps the 32-byte Ed25519 seed. It loads and dumps the two PKCS#8 layouts the
protocol meets (§2.2), renders the OpenSSH public key string (§2.3) and derives the X25519 pair used to
open sealed task ids (§2.4). Its ``repr``/``str`` never show key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing

from broker.errors import KeyFormatError

SEED_LEN: Final = 32
PUBLIC_KEY_LEN: Final = 32

# PKCS#8 v1 (PrivateKeyInfo, RFC 5208/8410): version 0, OID 1.3.101.112, seed in a nested OCTET STRING.
_PKCS8_V1_PREFIX: Final = bytes.fromhex("302e020100300506032b657004220420")
# PKCS#8 v2 (OneAsymmetricKey, RFC 5958): version 1 and the public key as [1] IMPLICIT BIT STRING.
_PKCS8_V2_PREFIX: Final = bytes.fromhex("3051020101300506032b657004220420")
_PKCS8_V2_PUBLIC_TAG: Final = bytes.fromhex("812100")
_PKCS8_V1_LEN: Final = len(_PKCS8_V1_PREFIX) + SEED_LEN  # 48
_PKCS8_V2_LEN: Final = len(_PKCS8_V2_PREFIX) + SEED_LEN + len(_PKCS8_V2_PUBLIC_TAG) + PUBLIC_KEY_LEN

_SSH_KEY_TYPE: Final = b"ssh-ed25519"
_G4_SEED_DOMAIN: Final = b"codex-agent-identity-ed25519-v1"


def _b64decode_strict(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"{what} is not valid base64") from exc


class AgentKey:
    """An agent identity's Ed25519 signing key.

    Construct with :meth:`from_seed`, :meth:`generate` or :meth:`from_pkcs8_base64`.
    """

    __slots__ = ("_signing_key",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key

    def __repr__(self) -> str:
        return f"AgentKey(public_key={self.public_key_ssh!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AgentKey):
            return NotImplemented
        return self.public_key_bytes == other.public_key_bytes

    def __hash__(self) -> int:
        return hash(self.public_key_bytes)

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_seed(cls, seed: bytes) -> AgentKey:
        """Build a key from a 32-byte Ed25519 seed (protocol §2.1).

        Raises:
            KeyFormatError: the seed is not 32 bytes.
        """
        if len(seed) != SEED_LEN:
            raise KeyFormatError(f"an Ed25519 seed is {SEED_LEN} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def generate(cls, random_bytes: bytes) -> AgentKey:
        """Derive a new key from 64 bytes of CSPRNG output, as the current reference does (§2.1, G4).

        The seed is the first 32 bytes of SHA-512 over the domain string and the random bytes. The
        caller supplies the randomness (``os.urandom(64)`` in production), keeping this function pure.

        Raises:
            KeyFormatError: fewer than 64 random bytes were given.
        """
        if len(random_bytes) < 64:
            raise KeyFormatError("key generation needs at least 64 random bytes")
        seed = hashlib.sha512(_G4_SEED_DOMAIN + random_bytes).digest()[:SEED_LEN]
        return cls.from_seed(seed)

    @classmethod
    def from_pkcs8_der(cls, der: bytes) -> AgentKey:
        """Parse a PKCS#8 DER document in the v1 (48-byte) or v2 (83-byte) layout (§2.2).

        The v2 layout embeds the public key; it must match the seed.

        Raises:
            KeyFormatError: any other layout, algorithm, or a public key that does not match.
        """
        if len(der) == _PKCS8_V1_LEN and der.startswith(_PKCS8_V1_PREFIX):
            return cls.from_seed(der[len(_PKCS8_V1_PREFIX) :])
        if len(der) == _PKCS8_V2_LEN and der.startswith(_PKCS8_V2_PREFIX):
            seed_end = len(_PKCS8_V2_PREFIX) + SEED_LEN
            if der[seed_end : seed_end + len(_PKCS8_V2_PUBLIC_TAG)] != _PKCS8_V2_PUBLIC_TAG:
                raise KeyFormatError("stored agent identity private key is not valid PKCS#8")
            key = cls.from_seed(der[len(_PKCS8_V2_PREFIX) : seed_end])
            if der[seed_end + len(_PKCS8_V2_PUBLIC_TAG) :] != key.public_key_bytes:
                raise KeyFormatError(
                    "stored agent identity private key is not valid PKCS#8: "
                    "embedded public key does not match the private key"
                )
            return key
        raise KeyFormatError(
            "stored agent identity private key is not valid PKCS#8: expected an Ed25519 "
            f"PrivateKeyInfo of {_PKCS8_V1_LEN} bytes or OneAsymmetricKey of {_PKCS8_V2_LEN} bytes, "
            f"got {len(der)} bytes"
        )

    @classmethod
    def from_pkcs8_base64(cls, text: str) -> AgentKey:
        """Parse standard base64 of a PKCS#8 document, either layout (§2.2).

        Raises:
            KeyFormatError: not base64, or not an Ed25519 PKCS#8 document.
        """
        return cls.from_pkcs8_der(_b64decode_strict(text, "stored agent identity private key"))

    # -- encodings ---------------------------------------------------------------------------------

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed. Handle with care: it is the identity."""
        return bytes(self._signing_key)

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return bytes(self._signing_key.verify_key)

    def to_pkcs8_der(self, *, v2: bool = True) -> bytes:
        """Encode as PKCS#8 DER: v2 with the public key (what the reference writes) or v1 (§2.2)."""
        if not v2:
            return _PKCS8_V1_PREFIX + self.seed
        return _PKCS8_V2_PREFIX + self.seed + _PKCS8_V2_PUBLIC_TAG + self.public_key_bytes

    def to_pkcs8_base64(self, *, v2: bool = True) -> str:
        """Standard base64 (padded) of :meth:`to_pkcs8_der` (§2.2)."""
        return base64.b64encode(self.to_pkcs8_der(v2=v2)).decode("ascii")

    @property
    def public_key_ssh(self) -> str:
        """The OpenSSH one-line public key, ``ssh-ed25519 <base64>`` with no comment (§2.3)."""
        return encode_ssh_public_key(self.public_key_bytes)

    # -- operations --------------------------------------------------------------------------------

    def sign(self, message: bytes) -> bytes:
        """Pure Ed25519 signature (RFC 8032, deterministic) of ``message`` (§2.1)."""
        return self._signing_key.sign(message).signature

    def curve25519_secret(self) -> bytes:
        """The X25519 secret derived from the seed exactly as Ed25519 derives its scalar (§2.4)."""
        return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(self.seed + self.public_key_bytes)

    def curve25519_public(self) -> bytes:
        """The X25519 public key matching :meth:`curve25519_secret` (§2.4)."""
        return curve25519_public_from_ed25519(self.public_key_bytes)


def encode_ssh_public_key(public_key: bytes) -> str:
    """Render a raw Ed25519 public key as ``ssh-ed25519 AAAA…`` (§2.3)."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise KeyFormatError(
            f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, got {len(public_key)}"
        )
    blob = (
        struct.pack(">I", len(_SSH_KEY_TYPE))
        + _SSH_KEY_TYPE
        + struct.pack(">I", PUBLIC_KEY_LEN)
        + public_key
    )
    return "ssh-ed25519 " + base64.b64encode(blob).decode("ascii")


def parse_ssh_public_key(text: str) -> bytes:
    """Parse ``ssh-ed25519 <base64>`` (an optional trailing comment is ignored) into 32 raw bytes (§2.3).

    Raises:
        KeyFormatError: another key type, bad base64, or a malformed blob.
    """
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise KeyFormatError("agent_public_key must be an 'ssh-ed25519 <base64>' string")
    blob = _b64decode_strict(parts[1], "agent_public_key")
    expected_len = 4 + len(_SSH_KEY_TYPE) + 4 + PUBLIC_KEY_LEN
    if len(blob) != expected_len:
        raise KeyFormatError(f"agent_public_key blob is {len(blob)} bytes, expected {expected_len}")
    (type_len,) = struct.unpack(">I", blob[:4])
    key_type = blob[4 : 4 + type_len]
    (key_len,) = struct.unpack(">I", blob[4 + len(_SSH_KEY_TYPE) : 8 + len(_SSH_KEY_TYPE)])
    if key_type != _SSH_KEY_TYPE or key_len != PUBLIC_KEY_LEN:
        raise KeyFormatError("agent_public_key blob is not an ssh-ed25519 key")
    return blob[8 + len(_SSH_KEY_TYPE) :]


def curve25519_public_from_ed25519(public_key: bytes) -> bytes:
    """Birationally convert an Ed25519 public key to X25519, as the control plane must (§2.4).

    Raises:
        KeyFormatError: the bytes are not a valid Ed25519 point.
    """
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, TypeError) as exc:
        raise KeyFormatError("public key is not a valid Ed25519 point") from exc


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``message`` (§5, §6)."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True
