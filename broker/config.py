"""Settings: environment variables, overridden by CLI flags, plus an optional TOML file.

Precedence, highest first: command-line flags, ``BROKER_*`` environment variables, the TOML file named
by ``BROKER_CONFIG``, built-in defaults. Several identities need the TOML file (``[identities.NAME]``
tables); the environment form describes one identity, named by ``BROKER_IDENTITY`` (``default``).
Every problem raises :class:`ConfigError` naming the setting, so start-up stops with one clear line.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker import __version__
from broker.core.callers import CallerPolicy
from broker.core.credentials.spec import IDENTITY_NAME, Profile, Source
from broker.core.protocol.agent_jwt import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from broker.core.protocol.urls import host_of
from broker.errors import ConfigError, UrlError
from broker.secrets import Secret

DEFAULT_LISTEN: Final = "127.0.0.1:50051"
DEFAULT_CONTROLPLANE_URL: Final = "https://chatgpt.com/backend-api"
# The control plane's skew window; an assertion must expire well inside it (protocol §12).
SKEW_WINDOW_SECONDS: Final = 300.0
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """One configured identity (see ``broker.core.credentials.spec.IdentitySpec``)."""

    name: str
    controlplane_url: str = DEFAULT_CONTROLPLANE_URL
    profile: Profile = Profile.CHATGPT_BACKEND
    enabled: bool = True
    account_id: str | None = None
    user_id: str | None = None
    fedramp: bool = False
    supported_hosts: tuple[str, ...] = ()
    bearer_token_file: Path | None = None
    authapi_url: str | None = None
    source: Source = Source.REGISTER
    jwt_file: Path | None = None
    jwt_value: Secret | None = None
    import_file: Path | None = None
    jwks_url: str | None = None
    jwt_issuer: str = DEFAULT_ISSUER
    jwt_audience: str = DEFAULT_AUDIENCE
    bootstrap_cooldown: float = 3600.0
    account_source: str = "token_file"
    account_file: Path | None = None
    oauth_issuer: str = "https://auth.openai.com"
    oauth_client_id: str | None = None
    account_refresh_margin: float = 300.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Server certificate, and the CA that client certificates must chain to (mTLS) if set."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the composition root needs."""

    identities: tuple[IdentitySettings, ...]
    default_identity: str
    listen: str = DEFAULT_LISTEN
    ops_listen: str | None = None
    redis_url: str | None = None
    kek_file: Path | None = None
    insecure: bool = False
    assertion_ttl: float = 60.0
    refresh_margin: float = 30.0
    thread_task_ttl: float | None = 24 * 3600.0
    log_level: str = "info"
    grace_period: float = 10.0
    stats_interval: float = 60.0
    registration_deadline: float = 45.0
    circuit_failure_threshold: int = 3
    circuit_cooldown: float = 30.0
    rejection_min_interval: float = 5.0
    callers: tuple[CallerPolicy, ...] = ()
    tls: TlsSettings | None = None
    agent_version: str = __version__
    extra: Mapping[str, str] = field(default_factory=dict)

    def identity(self, name: str) -> IdentitySettings:
        """The identity called ``name``."""
        for identity in self.identities:
            if identity.name == name:
                return identity
        raise ConfigError(f"identity {name!r} is not configured")


# -- value parsers ---------------------------------------------------------------------------------


def _bool(setting: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{setting}: expected true or false, got {value!r}")


def _seconds(setting: str, value: object, *, minimum: float = 0.0) -> float:
    try:
        seconds = float(str(value).strip().removesuffix("s"))
    except ValueError as exc:
        raise ConfigError(f"{setting}: expected a number of seconds, got {value!r}") from exc
    if not seconds > minimum or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"{setting}: must be a finite number greater than {minimum:g}")
    return seconds


def _listen(setting: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {value!r}")
    return value


def _url(setting: str, value: str) -> str:
    try:
        host_of(value)
    except UrlError as exc:
        raise ConfigError(f"{setting}: {exc.message}") from exc
    return value.rstrip("/")


def _hosts(setting: str, value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{setting}: expected a list of host names")
    hosts = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for host in hosts:
        if "/" in host or ":" in host or " " in host:
            raise ConfigError(f"{setting}: {host!r} is not a host name")
    return hosts


def _path(setting: str, value: object, *, must_exist: bool = True) -> Path:
    path = Path(str(value)).expanduser()
    if must_exist and not path.is_file():
        raise ConfigError(f"{setting}: file {str(path)!r} does not exist")
    return path


def _identity(name: str, table: Mapping[str, Any], where: str) -> IdentitySettings:
    if not IDENTITY_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: identity name {name!r} must be 1-64 characters of [A-Za-z0-9_.-]"
        )
    known = {
        "controlplane_url",
        "profile",
        "enabled",
        "use_agent_identity",
        "account_id",
        "user_id",
        "fedramp",
        "supported_hosts",
        "bearer_token_file",
        "authapi_url",
        "source",
        "jwt_file",
        "jwt",
        "import_file",
        "jwks_url",
        "jwt_issuer",
        "jwt_audience",
        "bootstrap_cooldown",
        "account",
        "account_file",
        "oauth_issuer",
        "oauth_client_id",
        "account_refresh_margin",
    }
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    profile_text = str(table.get("profile", Profile.CHATGPT_BACKEND.value))
    try:
        profile = Profile(profile_text)
    except ValueError as exc:
        choices = ", ".join(p.value for p in Profile)
        raise ConfigError(
            f"{where}.profile: expected one of {choices}, got {profile_text!r}"
        ) from exc
    source_text = str(table.get("source", Source.REGISTER.value))
    try:
        source = Source(source_text)
    except ValueError:
        choices = ", ".join(s.value for s in Source)
        raise ConfigError(
            f"{where}.source: expected one of {choices}, got {source_text!r}"
        ) from None
    jwt_file, jwt_text, import_file = (
        table.get("jwt_file"),
        table.get("jwt"),
        table.get("import_file"),
    )
    if source is Source.JWT and bool(jwt_file) == bool(jwt_text):
        raise ConfigError(f"{where}: source 'jwt' needs exactly one of jwt_file or jwt")
    if source is Source.IMPORT and not import_file:
        raise ConfigError(f"{where}: source 'import' needs import_file")
    jwks = table.get("jwks_url")
    account_source = str(table.get("account", "token_file"))
    if account_source not in ("token_file", "login"):
        raise ConfigError(f"{where}.account: expected token_file or login, got {account_source!r}")
    if account_source == "login" and not table.get("oauth_client_id"):
        raise ConfigError(f"{where}.oauth_client_id: an account login needs the OAuth client id")
    account_file = table.get("account_file")
    enabled = table.get("enabled", table.get("use_agent_identity", True))
    token_file = table.get("bearer_token_file")
    authapi = table.get("authapi_url")
    return IdentitySettings(
        name=name,
        controlplane_url=_url(
            f"{where}.controlplane_url",
            str(table.get("controlplane_url", DEFAULT_CONTROLPLANE_URL)),
        ),
        profile=profile,
        enabled=_bool(f"{where}.enabled", enabled),
        account_id=str(table["account_id"]).strip() or None if table.get("account_id") else None,
        user_id=str(table["user_id"]).strip() or None if table.get("user_id") else None,
        fedramp=_bool(f"{where}.fedramp", table.get("fedramp", False)),
        supported_hosts=_hosts(f"{where}.supported_hosts", table.get("supported_hosts", ())),
        bearer_token_file=_path(f"{where}.bearer_token_file", token_file) if token_file else None,
        authapi_url=_url(f"{where}.authapi_url", str(authapi)) if authapi else None,
        source=source,
        jwt_file=_path(f"{where}.jwt_file", jwt_file) if jwt_file else None,
        jwt_value=Secret(str(jwt_text).strip()) if jwt_text else None,
        import_file=_path(f"{where}.import_file", import_file) if import_file else None,
        jwks_url=_url(f"{where}.jwks_url", str(jwks)) if jwks else None,
        jwt_issuer=str(table.get("jwt_issuer", DEFAULT_ISSUER)),
        jwt_audience=str(table.get("jwt_audience", DEFAULT_AUDIENCE)),
        bootstrap_cooldown=_seconds(
            f"{where}.bootstrap_cooldown", table.get("bootstrap_cooldown", 3600)
        ),
        account_source=account_source,
        account_file=_path(f"{where}.account_file", account_file) if account_file else None,
        oauth_issuer=_url(
            f"{where}.oauth_issuer", str(table.get("oauth_issuer", "https://auth.openai.com"))
        ),
        oauth_client_id=str(table["oauth_client_id"]) if table.get("oauth_client_id") else None,
        account_refresh_margin=_seconds(
            f"{where}.account_refresh_margin", table.get("account_refresh_margin", 300)
        ),
    )


_CALLER_KEYS: Final = frozenset(
    {
        "token_sha256",
        "cert_names",
        "identities",
        "bearer_fallback",
        "bearer_only",
        "admin",
        "rate_limit",
        "burst",
    }
)
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def _caller(name: str, table: Mapping[str, Any]) -> CallerPolicy:
    where = f"callers.{name}"
    unknown = sorted(set(table) - _CALLER_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    token_hash = table.get("token_sha256")
    if token_hash is not None and not _SHA256_HEX.fullmatch(str(token_hash).lower()):
        raise ConfigError(
            f"{where}.token_sha256: expected 64 hex digits (credential-broker caller hash-token)"
        )
    cert_names = table.get("cert_names", [])
    if not isinstance(cert_names, list) or not all(isinstance(n, str) and n for n in cert_names):
        raise ConfigError(f"{where}.cert_names: expected a list of certificate CN/SAN names")
    if token_hash is None and not cert_names:
        raise ConfigError(f"{where}: set token_sha256 or cert_names so the caller can authenticate")
    identities = table.get("identities", ["*"])
    if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
        raise ConfigError(f'{where}.identities: expected a list of identity names or ["*"]')
    rate = table.get("rate_limit")
    return CallerPolicy(
        name=name,
        identities=None if "*" in identities else frozenset(identities),
        bearer_fallback=_bool(f"{where}.bearer_fallback", table.get("bearer_fallback", False)),
        bearer_only=_bool(f"{where}.bearer_only", table.get("bearer_only", False)),
        admin=_bool(f"{where}.admin", table.get("admin", False)),
        rate_per_second=_seconds(f"{where}.rate_limit", rate) if rate is not None else None,
        burst=_seconds(f"{where}.burst", table.get("burst", rate or 1))
        if rate is not None
        else 0.0,
        token_sha256=str(token_hash).lower() if token_hash is not None else None,
        cert_names=tuple(cert_names),
    )


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listen address is on the loopback interface only."""
    host = listen.rpartition(":")[0].strip("[]").lower()
    if host == "localhost" or host == "::1":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- loading ---------------------------------------------------------------------------------------

_ENV_IDENTITY_KEYS: Final = {
    "BROKER_CONTROLPLANE_URL": "controlplane_url",
    "BROKER_PROTOCOL": "profile",
    "BROKER_USE_AGENT_IDENTITY": "enabled",
    "BROKER_ACCOUNT_ID": "account_id",
    "BROKER_USER_ID": "user_id",
    "BROKER_FEDRAMP": "fedramp",
    "BROKER_SUPPORTED_HOSTS": "supported_hosts",
    "BROKER_BEARER_TOKEN_FILE": "bearer_token_file",
    "BROKER_AUTHAPI_URL": "authapi_url",
    "BROKER_IDENTITY_SOURCE": "source",
    "BROKER_AGENT_IDENTITY_JWT_FILE": "jwt_file",
    "BROKER_AGENT_IDENTITY_JWT": "jwt",
    "BROKER_IMPORT_FILE": "import_file",
    "BROKER_JWKS_URL": "jwks_url",
    "BROKER_BOOTSTRAP_COOLDOWN": "bootstrap_cooldown",
    "BROKER_ACCOUNT_SOURCE": "account",
    "BROKER_ACCOUNT_FILE": "account_file",
    "BROKER_OAUTH_ISSUER": "oauth_issuer",
    "BROKER_OAUTH_CLIENT_ID": "oauth_client_id",
    "BROKER_ACCOUNT_REFRESH_MARGIN": "account_refresh_margin",
}
_ENV_GLOBAL_KEYS: Final = {
    "BROKER_LISTEN": "listen",
    "BROKER_OPS_LISTEN": "ops_listen",
    "BROKER_REDIS_URL": "redis_url",
    "BROKER_KEK_FILE": "kek_file",
    "BROKER_INSECURE": "insecure",
    "BROKER_ASSERTION_TTL": "assertion_ttl",
    "BROKER_REFRESH_MARGIN": "refresh_margin",
    "BROKER_THREAD_TASK_TTL": "thread_task_ttl",
    "BROKER_LOG_LEVEL": "log_level",
    "BROKER_GRACE_PERIOD": "grace_period",
    "BROKER_STATS_INTERVAL": "stats_interval",
    "BROKER_IDENTITY": "default_identity",
    "BROKER_REGISTRATION_DEADLINE": "registration_deadline",
    "BROKER_CIRCUIT_COOLDOWN": "circuit_cooldown",
    "BROKER_CIRCUIT_FAILURES": "circuit_failure_threshold",
    "BROKER_REJECTION_MIN_INTERVAL": "rejection_min_interval",
    "BROKER_TLS_CERT_FILE": "tls_cert_file",
    "BROKER_TLS_KEY_FILE": "tls_key_file",
    "BROKER_TLS_CLIENT_CA_FILE": "tls_client_ca_file",
}


def load_settings(
    env: Mapping[str, str], overrides: Mapping[str, object] | None = None
) -> Settings:
    """Build :class:`Settings` from the environment, the TOML file and CLI ``overrides``.

    Args:
        env: the process environment (``os.environ``).
        overrides: values from command-line flags, keyed by setting name (``listen``, ``redis_url``…);
            ``None`` values are ignored.

    Raises:
        ConfigError: a setting is invalid; the message names it.
    """
    values: dict[str, Any] = {}
    identity_tables: dict[str, dict[str, Any]] = {}
    caller_tables: dict[str, dict[str, Any]] = {}
    config_path = env.get("BROKER_CONFIG")
    if config_path:
        path = _path("BROKER_CONFIG", config_path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"BROKER_CONFIG: {path} is not valid TOML: {exc}") from exc
        identities = document.pop("identities", {})
        if not isinstance(identities, dict):
            raise ConfigError("BROKER_CONFIG: [identities] must be a table of tables")
        for name, table in identities.items():
            if not isinstance(table, dict):
                raise ConfigError(f"BROKER_CONFIG: identities.{name} must be a table")
            identity_tables[name] = table
        callers = document.pop("callers", {})
        if not isinstance(callers, dict) or not all(isinstance(t, dict) for t in callers.values()):
            raise ConfigError("BROKER_CONFIG: [callers] must be a table of tables")
        caller_tables.update(callers)
        values.update(document)
    for variable, setting in _ENV_GLOBAL_KEYS.items():
        if env.get(variable, "") != "":
            values[setting] = env[variable]
    env_identity: dict[str, Any] = {
        setting: env[variable]
        for variable, setting in _ENV_IDENTITY_KEYS.items()
        if env.get(variable, "") != ""
    }
    for setting, value in (overrides or {}).items():
        if value is not None:
            (env_identity if setting in _ENV_IDENTITY_KEYS.values() else values)[setting] = value
    return _build(values, identity_tables, env_identity, caller_tables)


def _tls(values: Mapping[str, Any]) -> TlsSettings | None:
    cert, key = values.get("tls_cert_file"), values.get("tls_key_file")
    client_ca = values.get("tls_client_ca_file")
    if not cert and not key:
        if client_ca:
            raise ConfigError("BROKER_TLS_CLIENT_CA_FILE: needs BROKER_TLS_CERT_FILE and _KEY_FILE")
        return None
    if not cert or not key:
        raise ConfigError("BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE must be set together")
    return TlsSettings(
        cert_file=_path("BROKER_TLS_CERT_FILE", cert),
        key_file=_path("BROKER_TLS_KEY_FILE", key),
        client_ca_file=_path("BROKER_TLS_CLIENT_CA_FILE", client_ca) if client_ca else None,
    )


def _build(
    values: Mapping[str, Any],
    identity_tables: Mapping[str, Mapping[str, Any]],
    env_identity: Mapping[str, Any],
    caller_tables: Mapping[str, Mapping[str, Any]],
) -> Settings:
    known = set(_ENV_GLOBAL_KEYS.values())
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"BROKER_CONFIG: unknown setting(s) {', '.join(unknown)}")
    default_name = str(values.get("default_identity", "") or "")
    if identity_tables:
        if env_identity:
            raise ConfigError(
                "BROKER_CONFIG defines [identities]; per-identity environment variables "
                f"({', '.join(sorted(env_identity))}) would be ambiguous, set them in the file"
            )
        identities = tuple(
            _identity(name, table, f"identities.{name}") for name, table in identity_tables.items()
        )
        default_name = default_name or identities[0].name
    else:
        default_name = default_name or "default"
        identities = (_identity(default_name, env_identity, "BROKER"),)
    if default_name not in {i.name for i in identities}:
        raise ConfigError(f"BROKER_IDENTITY: {default_name!r} is not a configured identity")

    ttl = _seconds("BROKER_ASSERTION_TTL", values.get("assertion_ttl", 60))
    if ttl >= SKEW_WINDOW_SECONDS:
        raise ConfigError(
            f"BROKER_ASSERTION_TTL: {ttl:g}s is at or above the control plane's "
            f"{SKEW_WINDOW_SECONDS:g}s skew window; use a shorter TTL"
        )
    if ttl < 2:
        raise ConfigError("BROKER_ASSERTION_TTL: must be at least 2 seconds")
    margin = _seconds("BROKER_REFRESH_MARGIN", values.get("refresh_margin", ttl / 2))
    if margin >= ttl:
        raise ConfigError("BROKER_REFRESH_MARGIN: must be shorter than BROKER_ASSERTION_TTL")
    thread_ttl_raw = values.get("thread_task_ttl", 24 * 3600)
    thread_ttl = (
        None
        if str(thread_ttl_raw).strip().lower() in ("0", "none", "never")
        else _seconds("BROKER_THREAD_TASK_TTL", thread_ttl_raw)
    )
    log_level = str(values.get("log_level", "info")).lower()
    if log_level not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(
            f"BROKER_LOG_LEVEL: expected debug, info, warning or error, got {log_level!r}"
        )
    redis_url = str(values.get("redis_url") or "").strip() or None
    if redis_url and not redis_url.startswith(
        ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
    ):
        raise ConfigError(
            "BROKER_REDIS_URL: expected a redis://, rediss://, unix://, redis+sentinel:// or "
            "redis+cluster:// URL"
        )
    kek = values.get("kek_file")
    listen = _listen("BROKER_LISTEN", str(values.get("listen", DEFAULT_LISTEN)))
    ops_listen = str(values.get("ops_listen") or "").strip()
    insecure = _bool("BROKER_INSECURE", values.get("insecure", False))
    callers = tuple(_caller(name, table) for name, table in caller_tables.items())
    tls = _tls(values)
    if any(c.cert_names for c in callers) and (tls is None or tls.client_ca_file is None):
        raise ConfigError(
            "callers with cert_names need mutual TLS: set BROKER_TLS_CLIENT_CA_FILE "
            "(with BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE)"
        )
    if not callers and not is_loopback(listen) and not insecure:
        raise ConfigError(
            f"BROKER_LISTEN: {listen} is not a loopback address and no [callers] are configured; "
            "refusing to hand out credentials to anyone who connects (configure callers, or pass "
            "--insecure for a trusted network)"
        )
    return Settings(
        identities=identities,
        default_identity=default_name,
        listen=listen,
        ops_listen=_listen("BROKER_OPS_LISTEN", ops_listen) if ops_listen else None,
        redis_url=redis_url,
        kek_file=_path("BROKER_KEK_FILE", kek) if kek else None,
        insecure=insecure,
        callers=callers,
        tls=tls,
        assertion_ttl=ttl,
        refresh_margin=margin,
        thread_task_ttl=thread_ttl,
        log_level=log_level,
        grace_period=_seconds("BROKER_GRACE_PERIOD", values.get("grace_period", 10)),
        stats_interval=_seconds("BROKER_STATS_INTERVAL", values.get("stats_interval", 60)),
        registration_deadline=_seconds(
            "BROKER_REGISTRATION_DEADLINE", values.get("registration_deadline", 45)
        ),
        circuit_failure_threshold=int(
            _seconds("BROKER_CIRCUIT_FAILURES", values.get("circuit_failure_threshold", 3))
        ),
        circuit_cooldown=_seconds("BROKER_CIRCUIT_COOLDOWN", values.get("circuit_cooldown", 30)),
        rejection_min_interval=_seconds(
            "BROKER_REJECTION_MIN_INTERVAL", values.get("rejection_min_interval", 5)
        ),
    )
