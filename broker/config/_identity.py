"""The settings of one identity: an ``[identities.NAME]`` table, or the environment's ``BROKER_*``.

Each setting is one field below (``metadata=row(...)``); the identity and account sources are
fields whose class is chosen by one setting (``metadata=choice(...)``), each class holding the
settings only its source uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.config import _parsers as p
from broker.config._table import (
    Names,
    Refused,
    build,
    choice,
    field_values,
    parse_rows,
    row,
    rows_of,
)
from broker.core.credentials.spec import IDENTITY_NAME, Profile, Source, WorkspaceRouting
from broker.core.protocol.agent_jwt import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from broker.errors import ConfigError

DEFAULT_CONTROLPLANE_URL: Final = "https://chatgpt.com/backend-api"
DEFAULT_OAUTH_ISSUER: Final = "https://auth.openai.com"
ENV_WHERE: Final = "BROKER"
"""How messages name the identity that environment variables describe (not an [identities] table)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterSource:
    """The broker generates the identity's key and registers it at the control plane."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtFileSource:
    """An Agent Identity JWT minted elsewhere, which carries the key; no Bearer, no registration."""

    jwt_file: Path = field(
        metadata=row(
            env="BROKER_AGENT_IDENTITY_JWT_FILE",
            parse=p.optional(p.existing_file),
            needed="{jwt_file}: source 'jwt' needs the Agent Identity JWT file",
            doc="the Agent Identity JWT for source `jwt`, re-read when replaced; the JWT carries the "
            "private key, so a value in the environment (`BROKER_AGENT_IDENTITY_JWT`) or inline in "
            "the file (`jwt`) is refused",
        )
    )
    jwks_url: str | None = field(
        default=None,
        metadata=row(
            env="BROKER_JWKS_URL",
            parse=p.optional(p.url),
            shown="`{base}/wham/agent-identities/jwks`",
            upstream=True,
            doc="source `jwt`: where the JWT is verified (protocol §10.3)",
        ),
    )
    jwt_issuer: str = field(
        default=DEFAULT_ISSUER,
        metadata=row(
            env=None,
            parse=p.text,
            doc="source `jwt`: the issuer (`iss`) the JWT must name",
        ),
    )
    jwt_audience: str = field(
        default=DEFAULT_AUDIENCE,
        metadata=row(
            env=None,
            parse=p.text,
            doc="source `jwt`: the audience (`aud`) the JWT must name",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportSource:
    """A record of a registered identity (its runtime id and private key), read from a file."""

    import_file: Path = field(
        metadata=row(
            env="BROKER_IMPORT_FILE",
            parse=p.optional(p.existing_file),
            needed="{where}: source 'import' needs import_file",
            doc="source `import`: JSON record (`agent_runtime_id`, `agent_private_key`, `account_id`, "
            "`chatgpt_user_id`, `chatgpt_account_is_fedramp`)",
        )
    )


SourceSettings = RegisterSource | JwtFileSource | ImportSource
"""Where an identity's key comes from, with the settings that source uses."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenFileAccount:
    """The account's access token is read from a file that something else keeps fresh."""

    bearer_token_file: Path | None = field(
        default=None,
        metadata=row(
            env="BROKER_BEARER_TOKEN_FILE",
            flag="--bearer-token-file",
            parse=p.optional(p.existing_file),
            doc="account `token_file`: the account's access token, re-read when the file changes",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthAccount:
    """The broker owns the account's OAuth login and refreshes it once for the fleet."""

    account_file: Path | None = field(
        default=None,
        metadata=row(
            env="BROKER_ACCOUNT_FILE",
            parse=p.optional(p.existing_file),
            doc="account `login`: a login (`auth.json`) to seed the store with when it holds none",
        ),
    )
    oauth_issuer: str = field(
        default=DEFAULT_OAUTH_ISSUER,
        metadata=row(
            env="BROKER_OAUTH_ISSUER",
            parse=p.url,
            upstream=True,
            doc="account `login`: the issuer of the OAuth token endpoint",
        ),
    )
    oauth_client_id: str = field(
        metadata=row(
            env="BROKER_OAUTH_CLIENT_ID",
            parse=p.optional(p.text),
            needed="{where}.oauth_client_id: an account login needs the OAuth client id",
            doc="account `login` (required): the OAuth client id",
        )
    )
    account_refresh_margin: float = field(
        default=300.0,
        metadata=row(
            env="BROKER_ACCOUNT_REFRESH_MARGIN",
            parse=p.seconds,
            doc="account `login`: refresh this long (plus a per-account jitter) before the access "
            "token expires",
        ),
    )


AccountSettings = TokenFileAccount | OAuthAccount
"""Where the account's access token comes from, with the settings that source uses."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentitySettings:
    """One configured identity (the core's view of it is ``broker.core.credentials.spec.IdentitySpec``).

    Every field but ``name`` and ``secret_files`` is a setting.
    """

    name: str
    """The broker's name for it: its ``[identities]`` table, else ``BROKER_IDENTITY``."""
    controlplane_url: str = field(
        default=DEFAULT_CONTROLPLANE_URL,
        metadata=row(
            env="BROKER_CONTROLPLANE_URL",
            flag="--controlplane-url",
            parse=p.url,
            upstream=True,
            core=True,
            doc="control-plane (ChatGPT) base URL, normalised as protocol §3.1",
        ),
    )
    profile: Profile = field(
        default=Profile.CHATGPT_BACKEND,
        metadata=row(
            env="BROKER_PROTOCOL",
            parse=p.one_of(Profile),
            core=True,
            doc="protocol profile: `chatgpt-backend` or `authapi`",
        ),
    )
    enabled: bool = field(
        default=True,
        metadata=row(
            env="BROKER_USE_AGENT_IDENTITY",
            aliases=("use_agent_identity",),
            parse=p.boolean,
            core=True,
            doc="off: every header is Bearer, with reason `DISABLED`",
        ),
    )
    account_id: str | None = field(
        default=None,
        metadata=row(
            env="BROKER_ACCOUNT_ID",
            flag="--account-id",
            parse=p.optional(p.stripped),
            core=True,
            doc="the ChatGPT account (workspace) the identity is bound to",
        ),
    )
    user_id: str | None = field(
        default=None,
        metadata=row(
            env="BROKER_USER_ID",
            parse=p.optional(p.stripped),
            core=True,
            doc="the ChatGPT user the identity is bound to, when known",
        ),
    )
    fedramp: bool = field(
        default=False,
        metadata=row(
            env="BROKER_FEDRAMP",
            parse=p.boolean,
            core=True,
            doc="send `X-OpenAI-Fedramp: true` with every header",
        ),
    )
    supported_hosts: tuple[str, ...] = field(
        default=(),
        metadata=row(
            env="BROKER_SUPPORTED_HOSTS",
            parse=p.hosts,
            core="extra_hosts",
            doc="hosts added to the reference list for background assertions, comma-separated "
            "(`.example.com` admits subdomains)",
        ),
    )
    authapi_url: str | None = field(
        default=None,
        metadata=row(
            env="BROKER_AUTHAPI_URL",
            parse=p.optional(p.url),
            shown="production/staging mapping",
            upstream=True,
            doc="AuthAPI base for the `authapi` profile (required for custom control planes)",
        ),
    )
    bootstrap_cooldown: float = field(
        default=3600.0,
        metadata=row(
            env="BROKER_BOOTSTRAP_COOLDOWN",
            parse=p.seconds,
            core=True,
            doc="`authapi`: seconds every replica stays on Bearer after a retryable bootstrap failure",
        ),
    )
    workspace_routing: WorkspaceRouting = field(
        default=WorkspaceRouting.AUTO,
        metadata=row(
            env="BROKER_WORKSPACE_ROUTING",
            parse=p.one_of(WorkspaceRouting),
            core=True,
            doc="discover the account's workspace route and hand it out (`backend_origin` and "
            "`x-openai-account-routing-override`): `auto` (a login on a ChatGPT host), `on` (any "
            "login) or `off`",
        ),
    )
    source: SourceSettings = field(
        default=RegisterSource(),
        metadata=choice(
            env="BROKER_IDENTITY_SOURCE",
            parse=p.one_of(Source),
            choices={
                Source.REGISTER: RegisterSource,
                Source.JWT: JwtFileSource,
                Source.IMPORT: ImportSource,
            },
            core=True,
            doc="`register` (the broker registers a key), `jwt` (an Agent Identity JWT) or `import` "
            "(a record file)",
        ),
    )
    account: AccountSettings = field(
        default=TokenFileAccount(),
        metadata=choice(
            env="BROKER_ACCOUNT_SOURCE",
            parse=p.account_kind,
            choices={"token_file": TokenFileAccount, "login": OAuthAccount},
            doc="`token_file` (a file holds the access token) or `login` (the broker owns the "
            "account's OAuth login and refreshes it once for the fleet)",
        ),
    )
    secret_files: tuple[tuple[str, Path], ...] = ()
    """(key, path) of every file setting given for this identity, whether its sources use it or
    not: each holds a secret, so its permissions are checked at start."""

    def core_fields(self) -> dict[str, Any]:
        """The settings the core's ``IdentitySpec`` takes from this identity, by its field names."""
        return {
            setting.key if setting.core is True else str(setting.core): value
            for setting, value in field_values(self)
            if setting.core
        }


REFUSED: Final = (
    Refused(
        key="jwt",
        env="BROKER_AGENT_IDENTITY_JWT",
        message="{jwt}: an Agent Identity JWT carries the identity's private key, so it is read "
        "only from a file (a value in the environment or in the configuration file travels "
        "further: child processes, container inspection, crash reports, configuration "
        "repositories); write it to a file only the broker can read and set {jwt_file} instead",
    ),
)
"""Identity settings that are no longer accepted."""

ROWS: Final = rows_of(IdentitySettings)
VARIABLES: Final = {r.env: r.key for r in ROWS if r.env} | {r.env: r.key for r in REFUSED if r.env}
"""Environment variable -> key, for the identity the environment describes."""
_KEYS: Final = frozenset(
    {row.key for row in ROWS} | {a for row in ROWS for a in row.aliases} | {r.key for r in REFUSED}
)
_ENV_NAMES: Final = {key: variable for variable, key in VARIABLES.items()}


def names_for(where: str) -> Names:
    """How messages name the settings of the identity at ``where``."""
    return Names(where, _ENV_NAMES if where == ENV_WHERE else None)


def read_identity(
    name: str, table: Mapping[str, Any], where: str
) -> tuple[IdentitySettings, list[tuple[str, str]]]:
    """The identity ``name`` from its settings, and (setting, URL) of each upstream URL it sets.

    Args:
        name: the identity's name.
        table: its settings by key (its ``[identities.NAME]`` table, or the environment's).
        where: how messages name the table (``identities.NAME``, or :data:`ENV_WHERE`).

    Raises:
        ConfigError: an unknown, refused, missing or invalid setting; the message names it.
    """
    if not IDENTITY_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: identity name {name!r} must be 1-64 characters of [A-Za-z0-9_.-]"
        )
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    names = names_for(where)
    for refused in REFUSED:
        if table.get(refused.key) is not None:
            raise ConfigError(refused.message.format_map(names))
    values = parse_rows(ROWS, table, lambda row: f"{where}.{row.key}")
    upstreams = [(names[row.key], values[row.key]) for row in ROWS if row.upstream]
    files = tuple((row.key, values[row.key]) for row in ROWS if isinstance(values[row.key], Path))
    identity = build(IdentitySettings, values, names, name=name, secret_files=files)
    return identity, [(label, address) for label, address in upstreams if address]
