"""Secrets are compared in constant time: equal-prefix guesses must not answer faster or slower.

A timing difference cannot be measured reliably in a unit test on a shared machine, so these tests
show the mechanism instead: every comparison of a secret goes through :func:`hmac.compare_digest`
(spied on), whatever the values, and the comparisons still mean what they meant.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import pytest

from broker.core.callers import CallerPolicy, CallerRegistry, hash_token
from broker.secret import Secret
from tests.conftest import ManualClock

Calls = list[tuple[object, object]]


@pytest.fixture(name="compared")
def fixture_compared(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every call of ``hmac.compare_digest`` from now on, recorded (and still answered)."""
    calls: Calls = []
    real: Callable[..., bool] = hmac.compare_digest

    def spy(a: object, b: object) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


class TestSecretEquality:
    @pytest.mark.parametrize(
        ("left", "right", "equal"),
        [
            ("token-abc", "token-abc", True),
            ("token-abc", "token-abd", False),
            ("token-abc", "token-abcd", False),
            ("", "", True),
            ("jeton-é", "jeton-é", True),
            ("jeton-é", "jeton-e", False),
            ("\ud800-lone", "\ud800-lone", True),
        ],
    )
    def test_equality_goes_through_compare_digest(
        self, compared: Calls, left: str, right: str, equal: bool
    ) -> None:
        """``==`` and ``!=`` on two Secrets answer right and use a constant-time comparison."""
        assert (Secret(left) == Secret(right)) is equal
        assert (Secret(left) != Secret(right)) is not equal
        assert len(compared) == 2

    def test_other_types_are_not_compared(self, compared: Calls) -> None:
        """A Secret never equals its plain value, and no comparison runs for one."""
        assert Secret("token") != "token"
        assert compared == []

    def test_equal_secrets_hash_alike(self) -> None:
        """Equal secrets stay usable as one dict key."""
        assert {Secret("a"): 1}[Secret("a")] == 1


class TestCallerTokens:
    def test_every_caller_is_compared(self, compared: Calls, clock: ManualClock) -> None:
        """A token is compared with every caller's hash, in constant time, even after a match."""
        policies = [
            CallerPolicy(name=f"caller-{n}", token_sha256=hash_token(f"token-{n}"))
            for n in range(3)
        ]
        registry = CallerRegistry(policies, clock)
        found = registry.by_token("token-0")
        assert found is not None
        assert found.name == "caller-0"
        assert len(compared) == len(policies)
        assert registry.by_token("token-9") is None
