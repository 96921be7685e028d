"""Settings: environment variables, overridden by CLI flags, plus an optional TOML file.

Precedence, highest first: command-line flags, ``BROKER_*`` environment variables, the TOML file named
by ``BROKER_CONFIG``, built-in defaults. Several identities need the TOML file (``[identities.NAME]``
tables); the environment form describes one identity, named by ``BROKER_IDENTITY`` (``default``).
Every problem raises :class:`ConfigError` naming the setting, so start-up stops with one clear line.

Each setting is declared once, on the field of :class:`Settings` (broker-wide) or
:class:`IdentitySettings` (per identity, with the source and account classes) that holds it:
variable, key, default, parser and meaning. Loading, the README's settings section
(``python -m broker.config --write``) and ``serve --help`` are derived from those declarations.
"""

from broker.config._docs import flag_help, render_section, serve_epilog, serve_flags
from broker.config._identity import (
    DEFAULT_CONTROLPLANE_URL,
    AccountSettings,
    IdentitySettings,
    ImportSource,
    JwtFileSource,
    OAuthAccount,
    RegisterSource,
    SourceSettings,
    TokenFileAccount,
)
from broker.config._parsers import SKEW_WINDOW_SECONDS, is_loopback
from broker.config._settings import (
    DEFAULT_LISTEN,
    Settings,
    TlsSettings,
    available_cpus,
    load_settings,
)
from broker.config._table import Setting, rows_of
from broker.core.protocol.urls import is_loopback_host

__all__ = [
    "DEFAULT_CONTROLPLANE_URL",
    "DEFAULT_LISTEN",
    "SKEW_WINDOW_SECONDS",
    "AccountSettings",
    "IdentitySettings",
    "ImportSource",
    "JwtFileSource",
    "OAuthAccount",
    "RegisterSource",
    "Setting",
    "Settings",
    "SourceSettings",
    "TlsSettings",
    "TokenFileAccount",
    "available_cpus",
    "flag_help",
    "is_loopback",
    "is_loopback_host",
    "load_settings",
    "render_section",
    "rows_of",
    "serve_epilog",
    "serve_flags",
]
