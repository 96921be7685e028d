"""Key parsing, task-id opening and assertion parsing refuse bad input precisely (protocol §2, §5, §6)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from broker.core.protocol.assertion import build_assertion, parse_assertion, verify_assertion
from broker.core.protocol.keys import AgentKey, parse_ssh_public_key
from broker.core.protocol.task_id import open_encrypted_task_id, seal_task_id, task_id_from_response
from broker.core.protocol.timestamps import format_timestamp, parse_timestamp
from broker.errors import (
    AssertionFormatError,
    KeyFormatError,
    ProtocolError,
    RuntimeMismatch,
    SignatureInvalid,
    TaskIdError,
)

SEED = bytes([7]) * 32
NOW = datetime(2026, 4, 13, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(name="key")
def fixture_key() -> AgentKey:
    return AgentKey.from_seed(SEED)


class TestKeyParsing:
    def test_not_base64(self) -> None:
        """A key that is not base64 is refused with the reference wording."""
        with pytest.raises(KeyFormatError, match="not valid base64"):
            AgentKey.from_pkcs8_base64("not base64 !!")

    def test_wrong_length(self) -> None:
        """A DER document of another length is refused, naming the lengths."""
        with pytest.raises(KeyFormatError, match="got 10 bytes"):
            AgentKey.from_pkcs8_base64(base64.b64encode(b"0123456789").decode())

    def test_other_algorithm(self, key: AgentKey) -> None:
        """A v1 layout whose OID is not Ed25519 is refused."""
        der = bytearray(key.to_pkcs8_der(v2=False))
        der[10] = 0x6E  # 1.3.101.110 is X25519
        with pytest.raises(KeyFormatError, match="not valid PKCS#8"):
            AgentKey.from_pkcs8_der(bytes(der))

    def test_v2_public_key_mismatch(self, key: AgentKey) -> None:
        """A v2 document whose embedded public key does not match the seed is refused."""
        der = bytearray(key.to_pkcs8_der())
        der[-1] ^= 0x01
        with pytest.raises(KeyFormatError, match="does not match"):
            AgentKey.from_pkcs8_der(bytes(der))

    def test_repr_hides_seed(self, key: AgentKey) -> None:
        """Neither repr nor str show private key material."""
        for text in (repr(key), str(key), f"{key}"):
            assert key.to_pkcs8_base64() not in text
            assert SEED.hex() not in text
            assert "ssh-ed25519" in text

    def test_generate_is_deterministic_in_its_input(self) -> None:
        """The G4 derivation depends only on the injected random bytes."""
        assert AgentKey.generate(b"\x01" * 64) == AgentKey.generate(b"\x01" * 64)
        assert AgentKey.generate(b"\x01" * 64) != AgentKey.generate(b"\x02" * 64)

    def test_generate_needs_64_bytes(self) -> None:
        """Too little randomness is refused."""
        with pytest.raises(KeyFormatError):
            AgentKey.generate(b"\x01" * 32)

    @pytest.mark.parametrize(
        "text",
        ["ssh-rsa AAAA", "ssh-ed25519", "ssh-ed25519 !!!", "ssh-ed25519 " + "QUJD"],
    )
    def test_bad_ssh_public_key(self, text: str) -> None:
        """Malformed OpenSSH strings are refused."""
        with pytest.raises(KeyFormatError):
            parse_ssh_public_key(text)


class TestTaskIds:
    def test_plaintext_wins(self, key: AgentKey) -> None:
        """Plaintext task_id takes precedence over the sealed form (§5.2)."""
        body = {"task_id": "plain", "encrypted_task_id": seal_task_id(key.public_key_bytes, "x")}
        assert task_id_from_response(key, body) == "plain"

    def test_camel_case(self, key: AgentKey) -> None:
        """The camelCase spellings are accepted too."""
        sealed = seal_task_id(key.public_key_bytes, "t-1")
        assert task_id_from_response(key, {"encryptedTaskId": sealed}) == "t-1"
        assert task_id_from_response(key, {"taskId": "t-2"}) == "t-2"

    def test_missing(self, key: AgentKey) -> None:
        """A response with no task id is refused."""
        with pytest.raises(TaskIdError, match="missing"):
            task_id_from_response(key, {"something": 1})

    def test_bad_base64(self, key: AgentKey) -> None:
        """A sealed id that is not base64 is refused with the reference wording."""
        with pytest.raises(TaskIdError, match="not valid base64"):
            open_encrypted_task_id(key, "%%%")

    def test_sealed_to_another_key(self, key: AgentKey) -> None:
        """A box sealed to another identity fails to decrypt."""
        other = AgentKey.from_seed(bytes([8]) * 32)
        with pytest.raises(TaskIdError, match="failed to decrypt"):
            open_encrypted_task_id(key, seal_task_id(other.public_key_bytes, "task"))

    def test_not_utf8(self, key: AgentKey) -> None:
        """A decrypted id that is not UTF-8 is refused."""
        import nacl.public

        box = nacl.public.SealedBox(nacl.public.PublicKey(key.curve25519_public()))
        sealed = base64.b64encode(box.encrypt(b"\xff\xfe")).decode()
        with pytest.raises(TaskIdError, match="not valid UTF-8"):
            open_encrypted_task_id(key, sealed)


class TestAssertionParsing:
    def test_runtime_mismatch(self, key: AgentKey) -> None:
        """Signing for a task of another runtime is refused (§6.1 step 1)."""
        with pytest.raises(RuntimeMismatch, match="does not match"):
            build_assertion(key, "agent-1", "agent-2", "task", NOW)

    @pytest.mark.parametrize(
        ("header", "message"),
        [
            ("Bearer abc", "scheme"),
            ("AgentAssertion ", "empty"),
            ("AgentAssertion %%%%", "base64url"),
            ("AgentAssertion " + base64.urlsafe_b64encode(b"\xff").decode(), "JSON"),
            ("AgentAssertion " + base64.urlsafe_b64encode(b"[1]").decode(), "object"),
            ("AgentAssertion " + base64.urlsafe_b64encode(b'{"task_id":1}').decode(), "lacks"),
        ],
    )
    def test_malformed(self, header: str, message: str) -> None:
        """Malformed headers are refused with a message naming the problem."""
        with pytest.raises(AssertionFormatError, match=message):
            parse_assertion(header)

    def test_missing_padding_tolerated(self, key: AgentKey) -> None:
        """A token is accepted with or without base64 padding (§12.3)."""
        envelope = build_assertion(key, "agent-1", "agent-1", "task-1", NOW)
        token = envelope.token()
        padded = token + "=" * (-len(token) % 4)
        assert parse_assertion("AgentAssertion " + padded) == envelope

    def test_wrong_key(self, key: AgentKey) -> None:
        """An assertion does not verify under another public key."""
        envelope = build_assertion(key, "agent-1", "agent-1", "task-1", NOW)
        other = AgentKey.from_seed(bytes([8]) * 32)
        with pytest.raises(SignatureInvalid):
            verify_assertion(envelope, other.public_key_bytes)


class TestTimestamps:
    def test_whole_seconds_z(self) -> None:
        """Fractions are dropped and UTC is written as Z."""
        assert format_timestamp(NOW.replace(microsecond=999_999)) == "2026-04-13T12:00:00Z"

    def test_fractional_and_offsets_parse(self) -> None:
        """Fractional seconds and offsets parse to the same instant (§5.1)."""
        assert parse_timestamp("2026-04-13T14:00:00.000+02:00") == NOW

    @pytest.mark.parametrize("text", ["2026-04-13", "2026-04-13T12:00:00", "yesterday", "x" * 100])
    def test_refused(self, text: str) -> None:
        """Dates without time or zone, and garbage, are refused."""
        with pytest.raises(ProtocolError):
            parse_timestamp(text)

    def test_naive_datetime_refused(self) -> None:
        """A naive datetime cannot become a protocol timestamp."""
        with pytest.raises(ProtocolError):
            format_timestamp(datetime(2026, 1, 1))
