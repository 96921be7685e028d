"""Every deterministic value of the shared protocol test vectors, reproduced (protocol §13)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.public
import pytest

from broker.core.protocol.assertion import build_assertion, parse_assertion, verify_assertion
from broker.core.protocol.keys import AgentKey, parse_ssh_public_key
from broker.core.protocol.task_id import open_encrypted_task_id, task_id_from_response
from broker.core.protocol.task_registration import (
    task_registration_body,
    task_registration_payload,
    verify_task_registration,
)
from broker.core.protocol.timestamps import parse_timestamp

VECTORS_PATH = Path(__file__).parents[2] / "vectors" / "agent-identity-test-vectors.json"
SHARED_VECTORS_PATH = Path(__file__).parents[4] / "shared" / "protocol" / "test-vectors.json"


@pytest.fixture(name="vectors", scope="module")
def fixture_vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text())  # type: ignore[no-any-return]


@pytest.fixture(name="key", scope="module")
def fixture_key(vectors: dict[str, Any]) -> AgentKey:
    return AgentKey.from_seed(bytes.fromhex(vectors["inputs"]["ed25519_seed_hex"]))


@pytest.fixture(name="now", scope="module")
def fixture_now(vectors: dict[str, Any]) -> datetime:
    return parse_timestamp(vectors["inputs"]["timestamp"])


class TestVendoredCopy:
    def test_copy_matches_shared_vectors(self) -> None:
        """The vendored vectors equal the shared ones whenever the shared folder is beside the repo."""
        if not SHARED_VECTORS_PATH.exists():
            pytest.skip("shared/protocol is not beside this checkout")
        assert json.loads(VECTORS_PATH.read_text()) == json.loads(SHARED_VECTORS_PATH.read_text())


class TestKeys:
    def test_public_key(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """The seed yields the vector's Ed25519 public key."""
        assert key.public_key_bytes.hex() == vectors["keys"]["ed25519_public_key_hex"]

    def test_pkcs8_v2_dump(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """Dumping writes the 83-byte v2 form byte-for-byte as the reference does."""
        assert key.to_pkcs8_base64() == vectors["keys"]["private_key_pkcs8_base64"]
        assert key.to_pkcs8_der().hex() == vectors["keys"]["private_key_pkcs8_der_hex"]

    def test_pkcs8_v1_dump(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """The v1 form is the 48-byte PrivateKeyInfo of the vectors."""
        assert key.to_pkcs8_base64(v2=False) == vectors["keys"]["private_key_pkcs8_v1_base64"]

    @pytest.mark.parametrize("field", ["private_key_pkcs8_base64", "private_key_pkcs8_v1_base64"])
    def test_pkcs8_load(self, key: AgentKey, vectors: dict[str, Any], field: str) -> None:
        """Both PKCS#8 forms load back to the same seed."""
        assert AgentKey.from_pkcs8_base64(vectors["keys"][field]).seed == key.seed

    def test_ssh_public_key(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """The OpenSSH string matches and parses back to the raw key."""
        assert key.public_key_ssh == vectors["keys"]["public_key_ssh"]
        assert parse_ssh_public_key(key.public_key_ssh) == key.public_key_bytes

    def test_curve25519_pair(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """The X25519 pair derived from the seed matches the vectors (§2.4)."""
        assert key.curve25519_secret().hex() == vectors["keys"]["curve25519_secret_key_hex"]
        assert key.curve25519_public().hex() == vectors["keys"]["curve25519_public_key_hex"]


class TestTaskRegistration:
    def test_payload(self, vectors: dict[str, Any]) -> None:
        """The signed payload is runtime id, colon, timestamp."""
        inputs = vectors["inputs"]
        payload = task_registration_payload(inputs["agent_runtime_id"], inputs["timestamp"])
        assert payload.decode() == vectors["task_registration"]["signed_payload"]

    def test_body(self, key: AgentKey, now: datetime, vectors: dict[str, Any]) -> None:
        """The body carries the vector's timestamp and signature."""
        body = task_registration_body(key, vectors["inputs"]["agent_runtime_id"], now)
        expected = json.loads(vectors["task_registration"]["request_body_json"])
        assert body == expected
        assert body["signature"] == vectors["task_registration"]["signature_base64"]

    def test_verifies(self, key: AgentKey, now: datetime, vectors: dict[str, Any]) -> None:
        """A control plane accepts the vector's body."""
        body = json.loads(vectors["task_registration"]["request_body_json"])
        moment = verify_task_registration(
            key.public_key_bytes, vectors["inputs"]["agent_runtime_id"], body
        )
        assert moment == now


class TestAssertion:
    def test_envelope_token_header(
        self, key: AgentKey, now: datetime, vectors: dict[str, Any]
    ) -> None:
        """Signature, envelope JSON, token and header value equal the vectors byte-for-byte."""
        inputs, expected = vectors["inputs"], vectors["agent_assertion"]
        envelope = build_assertion(
            key, inputs["agent_runtime_id"], inputs["agent_runtime_id"], inputs["task_id"], now
        )
        assert envelope.signed_payload().decode() == expected["signed_payload"]
        assert envelope.signature == expected["signature_base64"]
        assert envelope.to_json() == expected["envelope_json"]
        assert envelope.token() == expected["token_base64url_nopad"]
        assert envelope.header_value() == expected["authorization_header"]

    def test_parse_and_verify(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """The vector header parses back and verifies with the public key."""
        envelope = parse_assertion(vectors["agent_assertion"]["authorization_header"])
        assert envelope.task_id == vectors["inputs"]["task_id"]
        verify_assertion(envelope, key.public_key_bytes)


class TestSealedBox:
    def test_deterministic_box_opens(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """The deterministic sealed box opens to the plaintext task id."""
        sealed = vectors["sealed_box"]["deterministic"]
        assert open_encrypted_task_id(key, sealed["encrypted_task_id_base64"]) == "task-123"

    def test_deterministic_box_is_reproduced(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """Rebuilding the box with the fixed ephemeral secret gives the vector's ciphertext."""
        det = vectors["sealed_box"]["deterministic"]
        eph_sk = bytes.fromhex(det["ephemeral_secret_hex"])
        eph_pk = nacl.bindings.crypto_scalarmult_base(eph_sk)
        assert eph_pk.hex() == det["ephemeral_public_hex"]
        recipient = key.curve25519_public()
        nonce = nacl.bindings.crypto_generichash_blake2b_salt_personal(
            eph_pk + recipient, digest_size=24
        )
        box = nacl.bindings.crypto_box(b"task-123", nonce, recipient, eph_sk)
        assert base64.b64encode(eph_pk + box).decode() == det["encrypted_task_id_base64"]

    def test_randomized_box_opens(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """The randomized sealed box of the vectors run opens too."""
        sealed = vectors["sealed_box"]["randomized"]
        assert open_encrypted_task_id(key, sealed["encrypted_task_id_base64"]) == "task-123"

    def test_response_example(self, key: AgentKey, vectors: dict[str, Any]) -> None:
        """A registration response with only encrypted_task_id yields the task id."""
        body = vectors["sealed_box"]["register_task_response_example"]
        assert task_id_from_response(key, body) == "task-123"

    def test_pynacl_sealed_box_agrees(self, key: AgentKey) -> None:
        """PyNaCl's SealedBox to the converted key opens with our derived secret."""
        sealed = nacl.public.SealedBox(nacl.public.PublicKey(key.curve25519_public())).encrypt(b"x")
        assert open_encrypted_task_id(key, base64.b64encode(sealed).decode()) == "x"
