"""The settings table: each setting declared once, and what is derived from it.

Loading, the README's settings section and ``serve --help`` all read the same declarations; these
tests hold the declarations consistent and the derived text current.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from broker import cli
from broker.app import identity_spec
from broker.config import (
    IdentitySettings,
    ImportSource,
    JwtFileSource,
    OAuthAccount,
    RegisterSource,
    Settings,
    TokenFileAccount,
    load_settings,
    rows_of,
    serve_epilog,
    serve_flags,
)
from broker.config.__main__ import main as config_main
from broker.config._docs import BEGIN, END, render_section
from broker.config._table import RESOLVED, Names, Needed, build, parse_rows, row
from broker.core.credentials.spec import IdentitySpec, Source
from broker.errors import ConfigError
from broker.hardening import secret_files

ROWS = (*rows_of(Settings), *rows_of(IdentitySettings))


class TestDeclarations:
    def test_variables_are_unique(self) -> None:
        """No environment variable names two settings."""
        variables = [r.env for r in ROWS if r.env]
        assert len(variables) == len(set(variables))

    def test_keys_are_unique_per_table(self) -> None:
        """No key names two settings of the same table (top level, or an identity's)."""
        for cls in (Settings, IdentitySettings):
            keys = [k for r in rows_of(cls) for k in (r.key, *r.aliases)]
            assert len(keys) == len(set(keys)), cls

    def test_every_variable_is_a_broker_variable(self) -> None:
        """Every variable is BROKER_* in upper case."""
        for r in ROWS:
            assert r.env is None or (r.env.startswith("BROKER_") and r.env.isupper()), r.env

    def test_worked_out_defaults_are_documented(self) -> None:
        """A default that load_settings works out says in the docs what it is."""
        for r in ROWS:
            if r.default is RESOLVED:
                assert r.shown, r.key

    def test_refresh_margin_has_one_default(self) -> None:
        """The refresh margin defaults to half the TTL, whatever the TTL, and nowhere to a number."""
        (margin,) = [r for r in rows_of(Settings) if r.key == "refresh_margin"]
        assert margin.default is RESOLVED
        assert load_settings({}).refresh_margin == 30
        assert load_settings({"BROKER_ASSERTION_TTL": "20"}).refresh_margin == 10
        field_default = {f.name: f.default for f in dataclasses.fields(Settings)}
        assert field_default["refresh_margin"] is dataclasses.MISSING

    def test_thread_limit_defaults_are_the_cores(self) -> None:
        """The thread-task limits default to the core's ThreadTaskLimits, not to copies of it."""
        assert (
            load_settings({}).thread_limits
            == Settings.__dataclass_fields__["thread_limits"].default
        )


class TestCore:
    def test_core_names_are_identity_spec_fields(self) -> None:
        """Each identity setting handed to the core names a distinct IdentitySpec field."""
        spec_fields = {f.name for f in dataclasses.fields(IdentitySpec)}
        names = [r.key if r.core is True else r.core for r in rows_of(IdentitySettings) if r.core]
        assert len(names) == len(set(names))
        assert set(names) <= spec_fields

    def test_identity_spec_takes_the_settings(self, tmp_path: Path) -> None:
        """identity_spec fills the spec from the identity's settings and the broker-wide ones."""
        jwt_file = tmp_path / "agent.jwt"
        jwt_file.write_text("x")
        settings = load_settings(
            {
                "BROKER_PROTOCOL": "authapi",
                "BROKER_ACCOUNT_ID": "acct",
                "BROKER_USER_ID": "user",
                "BROKER_FEDRAMP": "1",
                "BROKER_SUPPORTED_HOSTS": "a.example",
                "BROKER_BOOTSTRAP_COOLDOWN": "7",
                "BROKER_USE_AGENT_IDENTITY": "0",
                "BROKER_IDENTITY_SOURCE": "jwt",
                "BROKER_AGENT_IDENTITY_JWT_FILE": str(jwt_file),
                "BROKER_ASSERTION_TTL": "40",
            }
        )
        spec = identity_spec(settings, settings.identity("default"))
        assert spec.account_id == "acct"
        assert spec.user_id == "user"
        assert spec.fedramp is True
        assert spec.extra_hosts == ("a.example",)
        assert spec.bootstrap_cooldown == 7
        assert spec.enabled is False
        assert spec.source is Source.JWT
        assert spec.refresh_margin == 20
        assert spec.thread_limits == settings.thread_limits


class TestVariants:
    def test_defaults(self) -> None:
        """By default the broker registers the key and reads the token from a file (if any)."""
        identity = load_settings({}).identity("default")
        assert identity.source == RegisterSource()
        assert identity.account == TokenFileAccount(bearer_token_file=None)

    def test_jwt_source(self, tmp_path: Path) -> None:
        """Source jwt holds its file, JWKS URL, issuer and audience."""
        jwt_file = tmp_path / "agent.jwt"
        jwt_file.write_text("x")
        config = tmp_path / "broker.toml"
        config.write_text(
            f'[identities.a]\nsource = "jwt"\njwt_file = "{jwt_file}"\n'
            'jwks_url = "https://j.example/"\njwt_issuer = "iss"\njwt_audience = "aud"\n'
        )
        source = load_settings({"BROKER_CONFIG": str(config)}).identity("a").source
        assert source == JwtFileSource(
            jwt_file=jwt_file, jwks_url="https://j.example", jwt_issuer="iss", jwt_audience="aud"
        )

    def test_import_source(self, tmp_path: Path) -> None:
        """Source import holds its record file."""
        record = tmp_path / "record.json"
        record.write_text("{}")
        env = {"BROKER_IDENTITY_SOURCE": "import", "BROKER_IMPORT_FILE": str(record)}
        assert load_settings(env).identity("default").source == ImportSource(import_file=record)

    def test_login_account(self, tmp_path: Path) -> None:
        """Account login holds its issuer, client id, margin and seed file."""
        seed = tmp_path / "auth.json"
        seed.write_text("{}")
        env = {
            "BROKER_ACCOUNT_SOURCE": "login",
            "BROKER_OAUTH_CLIENT_ID": "app_x",
            "BROKER_ACCOUNT_FILE": str(seed),
        }
        assert load_settings(env).identity("default").account == OAuthAccount(
            account_file=seed,
            oauth_issuer="https://auth.openai.com",
            oauth_client_id="app_x",
            account_refresh_margin=300.0,
        )

    @pytest.mark.parametrize(
        ("env", "message"),
        [
            ({"BROKER_IDENTITY_SOURCE": "jwt"}, "BROKER_AGENT_IDENTITY_JWT_FILE: source 'jwt'"),
            ({"BROKER_IDENTITY_SOURCE": "import"}, "BROKER: source 'import' needs import_file"),
            ({"BROKER_ACCOUNT_SOURCE": "login"}, "BROKER.oauth_client_id: an account login"),
            ({"BROKER_IDENTITY_SOURCE": "nope"}, "BROKER.source: expected one of register, jwt"),
            ({"BROKER_ACCOUNT_SOURCE": "x"}, "BROKER.account: expected token_file or login"),
        ],
    )
    def test_missing_or_unknown(self, env: dict[str, str], message: str) -> None:
        """A source without what it needs, or an unknown source, is refused naming the setting."""
        with pytest.raises(ConfigError, match=message):
            load_settings(env)

    def test_unused_settings_are_still_checked(self) -> None:
        """A setting of a source not chosen is still validated (a typo does not pass silently)."""
        with pytest.raises(ConfigError, match=r"BROKER\.jwt_file: file"):
            load_settings({"BROKER_AGENT_IDENTITY_JWT_FILE": "/nonexistent/agent.jwt"})
        with pytest.raises(ConfigError, match="BROKER_OAUTH_ISSUER: http://"):
            load_settings({"BROKER_OAUTH_ISSUER": "http://issuer.example"})

    def test_secret_files_include_unused_ones(self, tmp_path: Path) -> None:
        """Every file setting given is mode-checked, also one its chosen source does not read."""
        token, seed = tmp_path / "token", tmp_path / "auth.json"
        token.write_text("t")
        seed.write_text("{}")
        env = {
            "BROKER_BEARER_TOKEN_FILE": str(token),
            "BROKER_ACCOUNT_SOURCE": "login",
            "BROKER_OAUTH_CLIENT_ID": "app_x",
            "BROKER_ACCOUNT_FILE": str(seed),
        }
        settings = load_settings(env)
        assert isinstance(settings.identity("default").account, OAuthAccount)
        assert secret_files(settings) == [
            ("identities.default.bearer_token_file", token),
            ("identities.default.account_file", seed),
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Example:
    """A class with settings declared the way Settings and IdentitySettings declare theirs."""

    size: int = field(
        default=3, metadata=row(env="EXAMPLE_SIZE", parse=lambda _, v: int(str(v)), doc="d")
    )
    name: str = field(
        metadata=row(env=None, parse=lambda _, v: str(v), doc="d", needed="{where}: name")
    )


class TestMachinery:
    def test_one_field_is_one_setting(self) -> None:
        """A field with row metadata is read, defaulted and built with no other declaration."""
        (size, name) = rows_of(_Example)
        assert (size.key, size.env, size.default) == ("size", "EXAMPLE_SIZE", 3)
        assert isinstance(name.default, Needed)
        values = parse_rows(rows_of(_Example), {"name": "x"}, lambda r: r.key)
        assert build(_Example, values, Names("example")) == _Example(size=3, name="x")
        with pytest.raises(ConfigError, match="example: name"):
            build(_Example, parse_rows(rows_of(_Example), {}, lambda r: r.key), Names("example"))


class TestReadme:
    def test_readme_is_current(self) -> None:
        """The README's settings section is what the settings generate."""
        assert config_main(["--check"]) == 0

    def test_check_and_write(self, tmp_path: Path) -> None:
        """--check fails on a stale section and passes once --write has rewritten it."""
        readme = tmp_path / "README.md"
        readme.write_text(f"# title\n\n{BEGIN}\nold\n{END}\n\n## after\n", encoding="utf-8")
        assert config_main(["--check", "--path", str(readme)]) == 1
        assert config_main(["--write", "--path", str(readme)]) == 0
        assert config_main(["--check", "--path", str(readme)]) == 0
        text = readme.read_text(encoding="utf-8")
        assert text.startswith("# title\n\n")
        assert text.endswith("\n## after\n")
        assert render_section() in text

    def test_markers_missing(self, tmp_path: Path) -> None:
        """A README without the markers is refused rather than rewritten."""
        readme = tmp_path / "README.md"
        readme.write_text("# title\n", encoding="utf-8")
        assert config_main(["--write", "--path", str(readme)]) == 1
        assert readme.read_text(encoding="utf-8") == "# title\n"

    def test_every_setting_is_listed(self) -> None:
        """Each variable and key appears in the section."""
        section = render_section()
        for r in ROWS:
            assert f"`{r.key}`" in section
            assert r.env is None or f"`{r.env}`" in section


class TestHelp:
    def test_epilog_lists_every_setting(self) -> None:
        """serve --help ends with every variable and key."""
        epilog = serve_epilog()
        for r in ROWS:
            assert r.key in epilog
            assert r.env is None or r.env in epilog

    def test_flags_become_overrides(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Each declared flag parses into the setting it overrides, and its help names the variable."""
        args = cli._parser().parse_args(
            ["serve", "--listen", "127.0.0.1:7", "--account-id", "a", "--allow-unsealed-store"]
        )
        assert (args.listen, args.account_id, args.allow_unsealed_store) == (
            "127.0.0.1:7",
            "a",
            True,
        )
        assert args.allow_anonymous_callers is None
        with pytest.raises(SystemExit):
            cli._parser().parse_args(["serve", "--help"])
        out = capsys.readouterr().out
        for flag, r in serve_flags():
            assert flag in out
            assert f"{r.env}" in out
