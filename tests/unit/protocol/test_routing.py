"""Reading a workspace-route discovery answer (protocol §16): the origin and override rules."""

from __future__ import annotations

import pytest

from broker.core.protocol.routing import Route, origin_of, parse_accounts_check, parse_origin
from broker.errors import ProtocolError


def answer(**entry: object) -> dict[str, object]:
    return {"accounts": [{"id": "acct-1", **entry}], "account_ordering": ["acct-1"]}


class TestOrigin:
    @pytest.mark.parametrize(
        ("value", "origin"),
        [
            ("https://eu.chatgpt.com", "https://eu.chatgpt.com"),
            ("https://EU.ChatGPT.com/", "https://eu.chatgpt.com"),
            ("https://eu.chatgpt.com:443", "https://eu.chatgpt.com"),
            ("https://eu.chatgpt.com:8443", "https://eu.chatgpt.com:8443"),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://localhost:80", "http://localhost"),
            ("http://[::1]:9000", "http://[::1]:9000"),
        ],
    )
    def test_accepted(self, value: str, origin: str) -> None:
        assert parse_origin(value) == origin

    @pytest.mark.parametrize(
        ("value", "why"),
        [
            ("http://eu.chatgpt.com", "must be https"),
            ("ftp://eu.chatgpt.com", "must be https"),
            ("eu.chatgpt.com", "has no host"),
            ("https://", "has no host"),
            ("https://user:pw@eu.chatgpt.com", "user info"),
            ("https://user@eu.chatgpt.com", "user info"),
            ("https://eu.chatgpt.com/backend-api", "origin only"),
            ("https://eu.chatgpt.com?x=1", "origin only"),
            ("https://eu.chatgpt.com#frag", "origin only"),
            ("https://eu.chatgpt.com:99999", "not a URL"),
            ("http://10.0.0.1:9000", "must be https"),
        ],
    )
    def test_refused(self, value: str, why: str) -> None:
        with pytest.raises(ProtocolError, match=why):
            parse_origin(value)

    def test_a_huge_value_is_not_echoed_whole(self) -> None:
        with pytest.raises(ProtocolError) as caught:
            parse_origin("https://eu.chatgpt.com/" + "a" * 10_000)
        assert len(caught.value.message) < 400

    def test_origin_of_a_base_url(self) -> None:
        assert origin_of("https://chatgpt.com/backend-api") == "https://chatgpt.com"
        assert origin_of("http://127.0.0.1:8080/backend-api") == "http://127.0.0.1:8080"


class TestAnswer:
    @pytest.mark.parametrize("override", ["us", "us_cr"])
    def test_a_routed_account(self, override: str) -> None:
        found = parse_accounts_check(
            answer(
                workspace_backend_origin="https://us.chatgpt.com", account_routing_override=override
            ),
            "acct-1",
        )
        assert found == Route(origin="https://us.chatgpt.com", override=override)

    @pytest.mark.parametrize(
        "entry",
        [
            {
                "workspace_backend_origin": "NO_CONSTRAINT",
                "account_routing_override": "NO_CONSTRAINT",
            },
            {"account_routing_override": "NO_CONSTRAINT"},
            {"workspace_backend_origin": None, "account_routing_override": None},
            {},
        ],
    )
    def test_no_constraint(self, entry: dict[str, object]) -> None:
        assert parse_accounts_check(answer(**entry), "acct-1") == Route(None, None)

    def test_the_selected_account_among_several(self) -> None:
        data = {
            "accounts": [
                {"id": "acct-0", "workspace_backend_origin": "https://a.chatgpt.com"},
                {"id": "acct-1", "account_routing_override": "us"},
            ]
        }
        assert parse_accounts_check(data, "acct-1") == Route(None, "us")

    def test_an_answer_for_another_account(self) -> None:
        data = {"accounts": [{"id": "acct-2", "account_routing_override": "us"}]}
        with pytest.raises(ProtocolError, match="acct-2, not the selected account acct-1"):
            parse_accounts_check(data, "acct-1")

    @pytest.mark.parametrize(
        ("data", "why"),
        [
            ({}, "no 'accounts' list"),
            ({"accounts": {"id": "acct-1"}}, "no 'accounts' list"),
            ({"accounts": []}, "no entry for the selected account"),
            ({"accounts": ["acct-1"]}, "no entry for the selected account"),
            (answer(account_routing_override="eu"), "'eu' is not one of"),
            (answer(account_routing_override=1), "is not one of"),
            (answer(workspace_backend_origin=7), "not a string"),
            (answer(workspace_backend_origin="https://x.chatgpt.com/path"), "origin only"),
        ],
    )
    def test_unusable_answers(self, data: dict[str, object], why: str) -> None:
        with pytest.raises(ProtocolError, match=why):
            parse_accounts_check(data, "acct-1")
