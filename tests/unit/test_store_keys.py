"""The key schema: ordinary ids keep the keys they always had; no id can change a key's kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.adapters.store import keys
from broker.adapters.store.keys import KeyKind, decode_part, encode_part, parse_key
from broker.core.credentials.model import BACKGROUND

UUID = "0b5f9a2e-8c1d-4e8f-9a57-3f2b6c1d9e40"


class TestUnchangedForOrdinaryIds:
    @pytest.mark.parametrize(
        ("key", "written_before"),
        [
            (keys.identity_key("default"), "cb:{default}:identity"),
            (
                keys.task_key("default", "agent-1f2e", BACKGROUND),
                "cb:{default}:agent-1f2e:task:background",
            ),
            (
                keys.task_key("default", "agent-1f2e", f"thread:{UUID}"),
                f"cb:{{default}}:agent-1f2e:task:thread:{UUID}",
            ),
            (
                keys.task_key("a.b_c-1", "agent-1f2e", "thread:thread-42"),
                "cb:{a.b_c-1}:agent-1f2e:task:thread:thread-42",
            ),
            (
                keys.task_key("default", "r", "thread:AZaz09!\"#$&'()*+,-./;<=>?@[\\]^_`|~"),
                "cb:{default}:r:task:thread:AZaz09!\"#$&'()*+,-./;<=>?@[\\]^_`|~",
            ),
            (
                keys.assertion_key("default", "task-0767d9a15b0247d212c88c94"),
                "cb:{default}:assertion:task-0767d9a15b0247d212c88c94",
            ),
            (
                keys.assertion_key("default", "dGFzay1pZA=="),
                "cb:{default}:assertion:dGFzay1pZA==",
            ),
            (keys.lock_key("default", "r:task:background"), "cb:{default}:lock:r:task:background"),
        ],
    )
    def test_same_key_as_before(self, key: str, written_before: str) -> None:
        """Ids without ``%``, ``:``, ``{``, ``}`` or non-printables map to the pre-encoding keys."""
        assert key == written_before


class TestEncoding:
    @pytest.mark.parametrize(
        ("value", "segment"),
        [
            ("a:assertion:b", "a%3Aassertion%3Ab"),
            ("{x}", "%7Bx%7D"),
            ("100%", "100%25"),
            ("a b\tc\n", "a%20b%09c%0A"),
            ("é", "%C3%A9"),
        ],
    )
    def test_special_characters_are_escaped(self, value: str, segment: str) -> None:
        assert encode_part(value) == segment
        assert decode_part(segment) == value

    @given(st.text(min_size=1))
    def test_one_segment_and_round_trip(self, value: str) -> None:
        """Whatever the id, its segment holds no separator or brace and decodes back to it."""
        segment = encode_part(value)
        assert not set(segment) & set(":{} \t\r\n")
        assert decode_part(segment) == value

    @pytest.mark.parametrize("segment", ["", "a:b", "{x", "50%", "%3a", "%41", "%FF", "a b"])
    def test_non_canonical_segments_are_refused(self, segment: str) -> None:
        """Only what encode_part writes decodes, so a value has exactly one key."""
        assert decode_part(segment) is None


class TestParse:
    @pytest.mark.parametrize(
        "thread", ["a:assertion:b", "x:identity", "y:account", "z{q}:%41", UUID]
    )
    def test_task_keys_stay_task_keys(self, thread: str) -> None:
        parsed = parse_key(keys.task_key("default", "agent-1", f"thread:{thread}"))
        assert parsed == keys.ParsedKey(
            KeyKind.TASK, "default", agent_runtime_id="agent-1", slot=f"thread:{thread}"
        )
        assert parsed.thread_id == thread

    @given(
        runtime=st.text(min_size=1),
        thread=st.text(min_size=1),
        task_id=st.text(min_size=1),
    )
    def test_every_written_key_parses_as_its_kind(
        self, runtime: str, thread: str, task_id: str
    ) -> None:
        """Ids from callers and the control plane never change what a key is read as."""
        task = parse_key(keys.task_key("id-1", runtime, f"thread:{thread}"))
        assert task is not None
        assert (task.kind, task.agent_runtime_id, task.thread_id) == (KeyKind.TASK, runtime, thread)
        background = parse_key(keys.task_key("id-1", runtime, BACKGROUND))
        assert background is not None
        assert (background.kind, background.slot) == (KeyKind.TASK, BACKGROUND)
        assertion = parse_key(keys.assertion_key("id-1", task_id))
        assert assertion is not None
        assert (assertion.kind, assertion.task_id) == (KeyKind.ASSERTION, task_id)
        lock = parse_key(keys.lock_key("id-1", f"{runtime}:task:thread:{thread}"))
        assert lock is not None
        assert lock.kind is KeyKind.LOCK

    def test_fixed_and_named_keys(self) -> None:
        assert parse_key(keys.identity_key("d")) == keys.ParsedKey(KeyKind.IDENTITY, "d")
        assert parse_key(keys.account_key("d")) == keys.ParsedKey(KeyKind.ACCOUNT, "d")
        cooldown = parse_key(keys.cooldown_key("d", "bootstrap"))
        assert cooldown == keys.ParsedKey(KeyKind.COOLDOWN, "d", name="bootstrap")

    @pytest.mark.parametrize(
        "key",
        [
            "cb:{d}:r:task:thread:a:assertion:b",  # an older broker's key for a hostile thread id
            "cb:{d}:r:task:thread:",
            "cb:{d}:r:task:other",
            "cb:{d}:assertion:a:b",
            "cb:{d}:assertion:",
            "cb:{d}:lock:",
            "cb:{d}:identity:x",
            "cb:{d}:whatever",
            "cb:{d}:",
            "cb:{bad name}:identity",
            "cb:d:identity",
            "other:{d}:identity",
        ],
    )
    def test_names_outside_the_schema(self, key: str) -> None:
        assert parse_key(key) is None
