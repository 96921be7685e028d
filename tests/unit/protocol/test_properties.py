"""Property tests: sign→verify round-trips; any single-byte change breaks verification (§6)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from broker.core.protocol.assertion import build_assertion, parse_assertion, verify_assertion
from broker.core.protocol.keys import AgentKey
from broker.errors import ProtocolError

ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=":"),
    min_size=1,
    max_size=64,
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


class TestAssertionProperties:
    @given(seed=st.binary(min_size=32, max_size=32), runtime=ids, task=ids, now=moments)
    def test_round_trip(self, seed: bytes, runtime: str, task: str, now: datetime) -> None:
        """Any built assertion parses back to itself and verifies with its key."""
        key = AgentKey.from_seed(seed)
        envelope = build_assertion(key, runtime, runtime, task, now)
        parsed = parse_assertion(envelope.header_value())
        assert parsed == envelope
        verify_assertion(parsed, key.public_key_bytes)

    @given(
        seed=st.binary(min_size=32, max_size=32),
        runtime=ids,
        task=ids,
        now=moments,
        data=st.data(),
    )
    def test_any_single_byte_change_fails(
        self, seed: bytes, runtime: str, task: str, now: datetime, data: st.DataObject
    ) -> None:
        """Changing any one byte of the envelope JSON makes the assertion unusable."""
        key = AgentKey.from_seed(seed)
        raw = bytearray(build_assertion(key, runtime, runtime, task, now).to_json().encode())
        index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        delta = data.draw(st.integers(min_value=1, max_value=255))
        raw[index] = (raw[index] + delta) % 256
        token = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        try:
            tampered = parse_assertion("AgentAssertion " + token)
            verify_assertion(tampered, key.public_key_bytes)
        except ProtocolError:
            return
        # The only byte changes that still verify would have to leave every signed field and the
        # signature intact, i.e. change nothing the verifier reads. That cannot happen for a
        # compact envelope of four members, so reaching here is a failure.
        raise AssertionError(f"tampered envelope still verified: {bytes(raw)!r}")
