"""Settings load from environment, flags and TOML, and refuse bad values naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.adapters.store._redis_client import Topology, parse_topology
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


class TestRedisTopologies:
    """Sentinel and Cluster URLs, in the forms the store's client parses (``_redis_client``)."""

    @pytest.mark.parametrize(
        ("url", "topology"),
        [
            (
                "redis+sentinel://127.0.0.1:26379/mymaster",
                Topology("sentinel", (("127.0.0.1", 26379),), "mymaster"),
            ),
            (
                "redis+sentinel://s1:26380,s2,[::1]:26381/main/3",
                Topology("sentinel", (("s1", 26380), ("s2", 26379), ("::1", 26381)), "main", 3),
            ),
            (
                "redis+sentinel://ops:p%40ss@s1/main/0",
                Topology("sentinel", (("s1", 26379),), "main", 0, "ops", "p@ss"),
            ),
            (
                "redis+sentinel://:secret@s1:26379/main",
                Topology("sentinel", (("s1", 26379),), "main", password="secret"),
            ),
            (
                "redis+cluster://10.0.0.1:7000",
                Topology("cluster", (("10.0.0.1", 7000),)),
            ),
            (
                "redis+cluster://n1:7000,n2,[::1]:7002/0",
                Topology("cluster", (("n1", 7000), ("n2", 6379), ("::1", 7002))),
            ),
            (
                "redis+cluster://ops:p%40ss@n1:7000,n2:7001",
                Topology("cluster", (("n1", 7000), ("n2", 7001)), username="ops", password="p@ss"),
            ),
        ],
    )
    def test_url_is_accepted_and_parses(self, url: str, topology: Topology) -> None:
        """BROKER_REDIS_URL keeps a Sentinel or Cluster URL as given, and it names the topology."""
        settings = load_settings({"BROKER_REDIS_URL": url})
        assert settings.redis_url == url
        assert parse_topology(settings.redis_url) == topology

    @pytest.mark.parametrize(
        ("url", "kind"),
        [
            ("redis+sentinel://127.0.0.1:26379,127.0.0.2/mymaster/1", "sentinel"),
            ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "cluster"),
        ],
    )
    def test_url_from_file_and_flag(self, tmp_path: Path, url: str, kind: str) -> None:
        """The TOML file's redis_url and the --redis-url flag take the same URLs as the variable."""
        config = tmp_path / "broker.toml"
        config.write_text(f'redis_url = "{url}"\n')
        from_file = load_settings({"BROKER_CONFIG": str(config)})
        from_flag = load_settings({"BROKER_REDIS_URL": "redis://127.0.0.1:1/0"}, {"redis_url": url})
        for settings in (from_file, from_flag):
            assert settings.redis_url == url
            parsed = parse_topology(settings.redis_url)
            assert parsed is not None
            assert parsed.kind == kind


class TestCallers:
    def test_non_loopback_without_callers_refused(self) -> None:
        """Listening beyond loopback with no caller authentication needs its own explicit setting."""
        with pytest.raises(ConfigError, match="not a loopback address"):
            load_settings({"BROKER_LISTEN": "0.0.0.0:50051"})
        env = {"BROKER_LISTEN": "0.0.0.0:50051", "BROKER_ALLOW_ANONYMOUS_CALLERS": "1"}
        assert load_settings(env).allow_anonymous_callers

    @pytest.mark.parametrize("listen", ["127.0.0.1:1", "127.9.9.9:1", "[::1]:1", "localhost:1"])
    def test_loopback_needs_nothing(self, listen: str) -> None:
        """Loopback addresses are fine without callers (development)."""
        assert load_settings({"BROKER_LISTEN": listen}).listen == listen

    def test_callers_from_toml(self, tmp_path: Path) -> None:
        """Callers are read with their hashes and rights."""
        config = tmp_path / "broker.toml"
        config.write_text(
            'listen = "0.0.0.0:50051"\n[callers.w]\ntoken_sha256 = "' + "ab" * 32 + '"\n'
            'identities = ["a"]\nrate_limit = 5\n'
        )
        settings = load_settings({"BROKER_CONFIG": str(config)})
        (caller,) = settings.callers
        assert caller.identities == frozenset({"a"})
        assert caller.rate_per_second == 5
        assert not caller.bearer_fallback

    @pytest.mark.parametrize(
        ("table", "message"),
        [
            ('token_sha256 = "short"', "64 hex digits"),
            ("admin = true", "token_sha256 or cert_names"),
            ('token_sha256 = "' + "ab" * 32 + '"\nrole = "x"', "unknown setting"),
            ('cert_names = ["w.example"]', "mutual TLS"),
        ],
    )
    def test_bad_callers(self, tmp_path: Path, table: str, message: str) -> None:
        """Malformed caller tables are refused with a precise message."""
        config = tmp_path / "broker.toml"
        config.write_text("[callers.w]\n" + table + "\n")
        with pytest.raises(ConfigError, match=message):
            load_settings({"BROKER_CONFIG": str(config)})
