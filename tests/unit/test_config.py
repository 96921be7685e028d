"""Settings load from environment, flags and TOML, and refuse bad values naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_settings
from broker.core.credentials.spec import Profile
from broker.errors import ConfigError


class TestDefaults:
    def test_defaults(self) -> None:
        """With nothing set the broker listens on loopback with one default identity."""
        settings = load_settings({})
        assert settings.listen == "127.0.0.1:50051"
        assert settings.redis_url is None
        assert settings.assertion_ttl == 60
        assert settings.refresh_margin == 30
        assert settings.default_identity == "default"
        identity = settings.identity("default")
        assert identity.controlplane_url == "https://chatgpt.com/backend-api"
        assert identity.profile is Profile.CHATGPT_BACKEND

    def test_flags_override_environment(self) -> None:
        """A command-line flag wins over the environment variable."""
        settings = load_settings(
            {"BROKER_LISTEN": "127.0.0.1:1", "BROKER_ACCOUNT_ID": "env"},
            {"listen": "127.0.0.1:2", "account_id": "flag"},
        )
        assert settings.listen == "127.0.0.1:2"
        assert settings.identity("default").account_id == "flag"

    def test_supported_hosts_list(self) -> None:
        """BROKER_SUPPORTED_HOSTS is a comma-separated list added to the reference hosts."""
        settings = load_settings({"BROKER_SUPPORTED_HOSTS": "a.example, B.example ,"})
        assert settings.identity("default").supported_hosts == ("a.example", "b.example")


class TestRefusals:
    @pytest.mark.parametrize(
        ("env", "setting"),
        [
            ({"BROKER_ASSERTION_TTL": "300"}, "BROKER_ASSERTION_TTL"),
            ({"BROKER_ASSERTION_TTL": "301"}, "BROKER_ASSERTION_TTL"),
            ({"BROKER_ASSERTION_TTL": "abc"}, "BROKER_ASSERTION_TTL"),
            ({"BROKER_ASSERTION_TTL": "-5"}, "BROKER_ASSERTION_TTL"),
            ({"BROKER_ASSERTION_TTL": "nan"}, "BROKER_ASSERTION_TTL"),
            ({"BROKER_REFRESH_MARGIN": "90"}, "BROKER_REFRESH_MARGIN"),
            ({"BROKER_LISTEN": "nowhere"}, "BROKER_LISTEN"),
            ({"BROKER_LISTEN": "127.0.0.1:99999"}, "BROKER_LISTEN"),
            ({"BROKER_REDIS_URL": "http://x"}, "BROKER_REDIS_URL"),
            ({"BROKER_CONTROLPLANE_URL": "ftp://x"}, "controlplane_url"),
            ({"BROKER_LOG_LEVEL": "loud"}, "BROKER_LOG_LEVEL"),
            ({"BROKER_PROTOCOL": "g9"}, "profile"),
            ({"BROKER_KEK_FILE": "/nonexistent/kek"}, "BROKER_KEK_FILE"),
            ({"BROKER_BEARER_TOKEN_FILE": "/nonexistent/t"}, "bearer_token_file"),
            ({"BROKER_USE_AGENT_IDENTITY": "maybe"}, "enabled"),
            ({"BROKER_IDENTITY": "bad name"}, "identity name"),
        ],
    )
    def test_invalid_value_names_setting(self, env: dict[str, str], setting: str) -> None:
        """Each invalid value stops start-up with a message naming the setting."""
        with pytest.raises(ConfigError, match=setting):
            load_settings(env)


class TestToml:
    def test_several_identities(self, tmp_path: Path) -> None:
        """A TOML file configures several identities and the default one."""
        config = tmp_path / "broker.toml"
        config.write_text(
            'default_identity = "b"\nassertion_ttl = 30\n'
            '[identities.a]\ncontrolplane_url = "https://chatgpt.com"\naccount_id = "acct-a"\n'
            '[identities.b]\ncontrolplane_url = "https://chatgpt.com"\nprofile = "authapi"\n'
        )
        settings = load_settings({"BROKER_CONFIG": str(config)})
        assert settings.default_identity == "b"
        assert settings.assertion_ttl == 30
        assert settings.identity("a").account_id == "acct-a"
        assert settings.identity("b").profile is Profile.AUTHAPI

    def test_unknown_key_refused(self, tmp_path: Path) -> None:
        """A misspelt setting in the file is refused, not ignored."""
        config = tmp_path / "broker.toml"
        config.write_text("asertion_ttl = 30\n")
        with pytest.raises(ConfigError, match="asertion_ttl"):
            load_settings({"BROKER_CONFIG": str(config)})

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A file that is not TOML is refused naming BROKER_CONFIG."""
        config = tmp_path / "broker.toml"
        config.write_text("= nope")
        with pytest.raises(ConfigError, match="BROKER_CONFIG"):
            load_settings({"BROKER_CONFIG": str(config)})

    def test_env_identity_with_file_identities_is_ambiguous(self, tmp_path: Path) -> None:
        """Per-identity variables next to file identities are refused as ambiguous."""
        config = tmp_path / "broker.toml"
        config.write_text('[identities.a]\naccount_id = "x"\n')
        with pytest.raises(ConfigError, match="ambiguous"):
            load_settings({"BROKER_CONFIG": str(config), "BROKER_ACCOUNT_ID": "y"})
