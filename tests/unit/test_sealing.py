"""Secrets at rest: the KEK sealer, the unsealed plaintext mode, and the KEK file."""

from __future__ import annotations

import base64
import hashlib
import pickle
from pathlib import Path

import pytest

from broker.adapters.sealing import (
    KekSealer,
    PlaintextSealer,
    derive_key_id,
    generate_kek_line,
    load_kek_file,
)
from broker.errors import ConfigError, SealingError

AD = b"cb:{alpha}:assertion:task-1"
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


@pytest.fixture(name="sealer")
def fixture_sealer() -> KekSealer:
    return KekSealer([("a", KEY_A)])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kek"
    path.write_text(text)
    return path


class TestKekSealer:
    def test_round_trip(self, sealer: KekSealer) -> None:
        """A sealed value opens to the plaintext under the same associated data."""
        assert sealer.open(sealer.seal(b"secret bytes", AD), AD) == b"secret bytes"

    def test_ciphertext_hides_plaintext(self, sealer: KekSealer) -> None:
        """The sealed form contains neither the plaintext nor the key."""
        sealed = sealer.seal(b"AgentAssertion very-secret", AD)
        assert b"very-secret" not in sealed
        assert KEY_A not in sealed

    def test_format_is_versioned(self, sealer: KekSealer) -> None:
        """Sealed values start with cb1 and the key id, and each seal uses a fresh nonce."""
        first, second = sealer.seal(b"x", AD), sealer.seal(b"x", AD)
        assert first.startswith(b"cb1\x01a")
        assert first != second

    def test_other_associated_data_fails(self, sealer: KekSealer) -> None:
        """A value copied under another key name does not open."""
        sealed = sealer.seal(b"secret", AD)
        with pytest.raises(SealingError, match="fails authentication"):
            sealer.open(sealed, b"cb:{alpha}:assertion:task-2")

    @pytest.mark.parametrize("position", [0, 5, 10, 40, -1])
    def test_tampering_fails(self, sealer: KekSealer, position: int) -> None:
        """Flipping any byte of a sealed value makes it unopenable."""
        sealed = bytearray(sealer.seal(b"secret", AD))
        sealed[position] ^= 0x01
        with pytest.raises(SealingError):
            sealer.open(bytes(sealed), AD)

    @pytest.mark.parametrize("length", [0, 3, 4, 5, 20, 45])
    def test_truncation_fails(self, sealer: KekSealer, length: int) -> None:
        """A truncated sealed value is refused."""
        with pytest.raises(SealingError):
            sealer.open(sealer.seal(b"secret", AD)[:length], AD)

    def test_garbage_fails(self, sealer: KekSealer) -> None:
        """Bytes in no known format are refused."""
        with pytest.raises(SealingError, match="not in a known sealed format"):
            sealer.open(b"\x00garbage value", AD)

    def test_unknown_key_id_fails(self, sealer: KekSealer) -> None:
        """A value sealed under a KEK that is not configured is refused, naming the key id."""
        other = KekSealer([("b", KEY_B)])
        with pytest.raises(SealingError, match="'b', which is not configured"):
            sealer.open(other.seal(b"secret", AD), AD)

    def test_same_id_other_key_fails(self, sealer: KekSealer) -> None:
        """A value sealed under another key with the same id fails authentication."""
        impostor = KekSealer([("a", KEY_B)])
        with pytest.raises(SealingError, match="fails authentication"):
            sealer.open(impostor.seal(b"secret", AD), AD)

    def test_rotation(self) -> None:
        """After rotation the new primary seals and the old key still opens old values."""
        old = KekSealer([("a", KEY_A)])
        rotated = KekSealer([("b", KEY_B), ("a", KEY_A)])
        old_value = old.seal(b"before", AD)
        new_value = rotated.seal(b"after", AD)
        assert rotated.open(old_value, AD) == b"before"
        assert new_value.startswith(b"cb1\x01b")
        assert rotated.primary_key_id == "b"
        assert rotated.key_ids == ("b", "a")
        with pytest.raises(SealingError):
            old.open(new_value, AD)

    def test_refuses_plaintext_values(self, sealer: KekSealer) -> None:
        """A KEK sealer refuses values written by a broker without a KEK (unsealed store)."""
        with pytest.raises(SealingError, match="plaintext"):
            sealer.open(PlaintextSealer().seal(b"secret", AD), AD)

    def test_repr_shows_no_key(self) -> None:
        """repr and str name key ids only, never key bytes or their base64."""
        sealer = KekSealer([("a", KEY_A), ("b", KEY_B)])
        for text in (repr(sealer), str(sealer)):
            assert text == "KekSealer(primary='a', key_ids=['a', 'b'])"
            assert base64.b64encode(KEY_A).decode() not in text

    def test_cannot_be_pickled(self, sealer: KekSealer) -> None:
        """Key material cannot leave through pickling."""
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(sealer)

    @pytest.mark.parametrize(
        ("keys", "message"),
        [
            ([], "at least one key"),
            ([("a", b"short")], "expected 32"),
            ([("bad id", KEY_A)], "key id is 1-32 characters"),
            ([("a", KEY_A), ("a", KEY_B)], "given twice"),
        ],
    )
    def test_constructor_validates(self, keys: list[tuple[str, bytes]], message: str) -> None:
        """Malformed key lists are refused."""
        with pytest.raises(ValueError, match=message):
            KekSealer(keys)


class TestPlaintextSealer:
    def test_round_trip(self) -> None:
        """The unsealed mode stores cb0 + plaintext and opens it back."""
        sealer = PlaintextSealer()
        assert sealer.seal(b"value", AD) == b"cb0value"
        assert sealer.open(b"cb0value", AD) == b"value"

    def test_refuses_sealed_values(self, sealer: KekSealer) -> None:
        """A broker on an unsealed store refuses KEK-sealed values instead of serving them."""
        with pytest.raises(SealingError, match="sealed with a KEK"):
            PlaintextSealer().open(sealer.seal(b"secret", AD), AD)

    def test_refuses_garbage(self) -> None:
        """Values in no known format are refused."""
        with pytest.raises(SealingError, match="not in a known stored format"):
            PlaintextSealer().open(b"garbage", AD)


class TestGenerateKekLine:
    def test_line_loads(self, tmp_path: Path) -> None:
        """A generated line is a valid one-key KEK file whose id derives from the key."""
        line = generate_kek_line()
        key_id, encoded = line.split(" ")
        assert key_id == derive_key_id(base64.b64decode(encoded))
        assert load_kek_file(write(tmp_path, line + "\n")).key_ids == (key_id,)

    def test_explicit_id(self) -> None:
        """An explicit key id is used verbatim."""
        assert generate_kek_line("k2026-04").startswith("k2026-04 ")

    def test_keys_are_random(self) -> None:
        """Two generated lines never share a key."""
        assert generate_kek_line() != generate_kek_line()

    def test_bad_id_refused(self) -> None:
        """A malformed key id is refused."""
        with pytest.raises(ValueError, match="key id"):
            generate_kek_line("has space")


class TestLoadKekFile:
    def test_primary_first(self, tmp_path: Path) -> None:
        """The first key line is the primary; comments and blank lines are ignored."""
        text = (
            "# rotated 2026-04\n\n"
            f"new {base64.b64encode(KEY_B).decode()}  # primary\n"
            f"old {base64.b64encode(KEY_A).decode()}\n"
        )
        sealer = load_kek_file(write(tmp_path, text))
        assert sealer.key_ids == ("new", "old")
        assert sealer.open(KekSealer([("old", KEY_A)]).seal(b"x", AD), AD) == b"x"

    def test_single_base64_line(self, tmp_path: Path) -> None:
        """A file with just a base64 key gets the SHA-256-prefix id."""
        sealer = load_kek_file(write(tmp_path, base64.b64encode(KEY_A).decode() + "\n"))
        assert sealer.key_ids == (hashlib.sha256(KEY_A).hexdigest()[:16],)

    def test_missing_file(self, tmp_path: Path) -> None:
        """An unreadable file is a ConfigError naming it."""
        path = tmp_path / "absent"
        with pytest.raises(ConfigError, match=f"KEK file {path}: cannot be read"):
            load_kek_file(path)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "holds no keys"),
            ("# only a comment\n\n", "holds no keys"),
            ("a {b64} extra\n", "line 1: expected '<key-id> <base64 key>'"),
            ("\na !!notbase64{b64}\n", "line 2: the key is not valid standard base64"),
            ("a {long}\n", "line 1: the key decodes to 35 bytes, expected 32"),
            ("a {short}\n", "line 1: the key decodes to 16 bytes, expected 32"),
            ("bad/id {b64}\n", "line 1: malformed key id"),
            ("a {b64}\na {other}\n", "line 2: key id 'a' is already used on line 1"),
            ("a {b64}\nb {b64}\n", "line 2: the same key is already given on line 1"),
        ],
    )
    def test_errors_are_precise(self, tmp_path: Path, text: str, message: str) -> None:
        """Each malformed file is a ConfigError naming the file, the line and the problem."""
        key_text = base64.b64encode(KEY_A).decode()
        other_text = base64.b64encode(KEY_B).decode()
        short = base64.b64encode(KEY_A[:16]).decode()
        long = base64.b64encode(KEY_A + b"xyz").decode()
        path = write(tmp_path, text.format(b64=key_text, other=other_text, short=short, long=long))
        with pytest.raises(ConfigError) as caught:
            load_kek_file(path)
        assert str(path) in caught.value.message
        assert message in caught.value.message
        assert key_text not in caught.value.message
        assert other_text not in caught.value.message
        assert short not in caught.value.message
        assert long not in caught.value.message

    def test_binary_file(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 text (a raw key?) is refused without echoing or chaining it."""
        path = tmp_path / "kek"
        path.write_bytes(b"\xff" + KEY_A)
        with pytest.raises(ConfigError, match="is not UTF-8 text") as caught:
            load_kek_file(path)
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

    def test_swapped_fields_do_not_echo(self, tmp_path: Path) -> None:
        """A key written where the id belongs is reported without being echoed."""
        key_text = base64.b64encode(KEY_A).decode()
        path = write(tmp_path, f"{key_text} {key_text}\n")
        with pytest.raises(ConfigError, match="line 1: malformed key id") as caught:
            load_kek_file(path)
        assert key_text not in caught.value.message
