"""Base-URL normalisation, the supported-host rule and endpoint URLs (protocol §3)."""

from __future__ import annotations

import pytest

from broker.core.protocol.urls import (
    PRODUCTION_AUTHAPI,
    STAGING_AUTHAPI,
    authapi_base_for,
    authenticate_app_url,
    is_supported_host,
    normalize_chatgpt_base_url,
    register_identity_url,
    register_task_url,
)
from broker.errors import UrlError


class TestNormalisation:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ("https://chatgpt.com/codex", "https://chatgpt.com/backend-api"),
            ("https://chatgpt.com/backend-api/", "https://chatgpt.com/backend-api"),
            ("https://chatgpt.com", "https://chatgpt.com/backend-api"),
            ("https://chat.openai.com/", "https://chat.openai.com/backend-api"),
            ("http://localhost:8080/api/codex", "http://localhost:8080/api/codex"),
            ("https://chatgpt.com/api/codex", "https://chatgpt.com/api/codex"),
            (
                "https://chatgpt.com/backend-api/wham/remote/control/server/enroll",
                "https://chatgpt.com/backend-api",
            ),
            ("https://chatgpt.com/wham/remote/control/server", "https://chatgpt.com/backend-api"),
            ("http://127.0.0.1:9/backend-api", "http://127.0.0.1:9/backend-api"),
        ],
    )
    def test_examples(self, given: str, expected: str) -> None:
        """Each reference example normalises as the final crate does (§3.1)."""
        assert normalize_chatgpt_base_url(given) == expected


class TestSupportedHosts:
    @pytest.mark.parametrize(
        "url",
        [
            "https://chatgpt.com/backend-api",
            "https://chat.openai.com",
            "https://chatgpt-staging.com/backend-api",
            "https://eu.chatgpt.com/backend-api",
            "https://a.b.chatgpt-staging.com",
        ],
    )
    def test_reference_hosts(self, url: str) -> None:
        """The reference hosts and their subdomains are supported (§3.2)."""
        assert is_supported_host(url)

    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8080/backend-api",
            "https://evilchatgpt.com",
            "https://chatgpt.com.evil.example",
            "not a url",
            "https://openai.com",
        ],
    )
    def test_other_hosts(self, url: str) -> None:
        """Anything else gets no background assertion (§3.2)."""
        assert not is_supported_host(url)

    def test_operator_hosts(self) -> None:
        """Operators can add exact hosts and, with a leading dot, subdomains."""
        assert is_supported_host("http://127.0.0.1:9/backend-api", ["127.0.0.1"])
        assert is_supported_host("https://cp.corp.example", [".corp.example"])
        assert not is_supported_host("https://corp.example.org", [".corp.example"])


class TestEndpoints:
    def test_g1_urls(self) -> None:
        """G1 endpoints hang off the normalised ChatGPT base (§3.3)."""
        base = "https://chatgpt.com/"
        assert authenticate_app_url(base) == "https://chatgpt.com/backend-api/authenticate_app_v2"
        assert register_identity_url(base) == "https://chatgpt.com/backend-api/v1/agent/register"
        assert (
            register_task_url(base, "agent-1")
            == "https://chatgpt.com/backend-api/v1/agent/agent-1/task/register"
        )

    @pytest.mark.parametrize("runtime_id", ["", ".", "..", "a/b", "a?b", "a#b"])
    def test_runtime_id_cannot_change_the_path(self, runtime_id: str) -> None:
        """A runtime id that would change the URL's path is refused."""
        with pytest.raises(UrlError):
            register_task_url("https://chatgpt.com", runtime_id)

    @pytest.mark.parametrize(
        ("base", "expected"),
        [
            ("https://chatgpt.com", PRODUCTION_AUTHAPI),
            ("https://chatgpt.com/backend-api/codex", PRODUCTION_AUTHAPI),
            ("https://chat.openai.com/codex", PRODUCTION_AUTHAPI),
            ("https://chatgpt-staging.com/backend-api", STAGING_AUTHAPI),
        ],
    )
    def test_authapi_mapping(self, base: str, expected: str) -> None:
        """Production and staging ChatGPT bases map to their AuthAPI (§3.4)."""
        assert authapi_base_for(base) == expected

    def test_authapi_custom_base_needs_override(self) -> None:
        """A custom base is refused unless an AuthAPI override is given (§15)."""
        with pytest.raises(UrlError):
            authapi_base_for("http://127.0.0.1:9/backend-api")
        assert authapi_base_for("http://x/backend-api", "http://y/api/") == "http://y/api"
