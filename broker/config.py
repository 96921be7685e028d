"""Settings: environment variables, overridden by CLI flags, plus an optional TOML file.

Precedence, highest first: command-line flags, ``BROKER_*`` environment variables, the TOML file named
by ``BROKER_CONFIG``, built-in defaults. Several identities need the TOML file (``[identities.NAME]``
tables); the environment form describes one identity, named by ``BROKER_IDENTITY`` (``default``).
Every problem raises :class:`ConfigError` naming the setting, so start-up stops with one clear line.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from broker import __version__
from broker.core.callers import CallerPolicy
from broker.core.credentials.spec import IDENTITY_NAME, Profile, Source, ThreadTaskLimits
from broker.core.protocol.agent_jwt import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from broker.core.protocol.urls import host_of
from broker.errors import ConfigError, UrlError

DEFAULT_LISTEN: Final = "127.0.0.1:50051"
DEFAULT_CONTROLPLANE_URL: Final = "https://chatgpt.com/backend-api"
# The control plane's skew window; an assertion must expire well inside it (protocol §12).
SKEW_WINDOW_SECONDS: Final = 300.0
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
# How messages name the identity described by environment variables (not a [identities] table).
_ENV_WHERE: Final = "BROKER"
_INSECURE_REMOVED: Final = (
    "BROKER_INSECURE (--insecure, insecure in BROKER_CONFIG) is no longer accepted: it allowed two "
    "unrelated risks at once. Set BROKER_ALLOW_UNSEALED_STORE=true (--allow-unsealed-store, "
    "allow_unsealed_store) to keep secrets in Redis without a KEK, and/or "
    "BROKER_ALLOW_ANONYMOUS_CALLERS=true (--allow-anonymous-callers, allow_anonymous_callers) to "
    "serve a non-loopback listener without [callers]; then remove BROKER_INSECURE"
)


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
    allow_unsealed_store: bool = False
    """Redis without a KEK keeps private keys, tokens and assertions unsealed (development only)."""
    allow_anonymous_callers: bool = False
    """A non-loopback listener may run without [callers]: whoever connects is a full admin."""
    allow_cleartext_upstream: bool = False
    """Control-plane, AuthAPI, JWKS and OAuth URLs may use http:// to hosts beyond loopback."""
    cleartext_upstreams: tuple[str, ...] = ()
    """The URL settings that do use http:// beyond loopback (allowed by the setting above)."""
    assertion_ttl: float = 60.0
    refresh_margin: float = 30.0
    thread_task_ttl: float | None = 24 * 3600.0
    thread_limits: ThreadTaskLimits = field(default_factory=ThreadTaskLimits)
    log_level: str = "info"
    access_log_sample: int = 0
    """Write ``rpc.completed`` for one successful RPC in this many (0: none). Failed RPCs always
    write theirs; every RPC is counted in ``broker.stats`` and ``/metrics`` either way."""
    grace_period: float = 10.0
    stats_interval: float = 10.0
    registration_deadline: float = 45.0
    circuit_failure_threshold: int = 3
    circuit_cooldown: float = 30.0
    rejection_min_interval: float = 5.0
    callers: tuple[CallerPolicy, ...] = ()
    tls: TlsSettings | None = None
    workers: int = 1
    """Broker processes serving ``listen`` together (SO_REUSEPORT) under one supervising parent
    (``broker/supervisor.py``); 1 serves in this process, with no parent."""
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


def _ops_listen(value: str) -> str:
    """HOST:PORT, or a bare PORT meaning loopback: the ops listener goes wider only when named."""
    if value.isdigit():
        value = f"127.0.0.1:{value}"
    return _listen("BROKER_OPS_LISTEN", value)


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
    jwt_file, import_file = table.get("jwt_file"), table.get("import_file")
    if table.get("jwt") is not None:
        raise ConfigError(
            f"{_setting_name(where, 'jwt')}: an Agent Identity JWT carries the identity's private "
            "key, so it is read only from a file (a value in the environment or in the "
            "configuration file travels further: child processes, container inspection, crash "
            "reports, configuration repositories); write it to a file only the broker can read "
            f"and set {_setting_name(where, 'jwt_file')} instead"
        )
    if source is Source.JWT and not jwt_file:
        raise ConfigError(
            f"{_setting_name(where, 'jwt_file')}: source 'jwt' needs the Agent Identity JWT file"
        )
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
        "share_threads",
    }
)
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def _caller(name: str, table: Mapping[str, Any]) -> CallerPolicy:
    where = f"callers.{name}"
    if not name.isprintable() or not 0 < len(name) <= 64:
        raise ConfigError(f"{where}: a caller name is 1 to 64 printable characters")
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
        share_threads=_bool(f"{where}.share_threads", table.get("share_threads", False)),
    )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost``, in 127.0.0.0/8 or ``::1`` (brackets allowed)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listen address is on the loopback interface only."""
    return is_loopback_host(listen.rpartition(":")[0])


def _setting_name(where: str, key: str) -> str:
    """How a message names one identity setting: its variable for the environment's identity."""
    if where == _ENV_WHERE:
        for variable, setting in _ENV_IDENTITY_KEYS.items():
            if setting == key:
                return variable
    return f"{where}.{key}"


def _cleartext_urls(identity: IdentitySettings, where: str) -> list[tuple[str, str]]:
    """(setting, host) of each upstream URL that is http:// to a host beyond loopback."""
    urls = {
        "controlplane_url": identity.controlplane_url,
        "authapi_url": identity.authapi_url,
        "jwks_url": identity.jwks_url,
        "oauth_issuer": identity.oauth_issuer,
    }
    found = []
    for key, url in urls.items():
        parts = urlsplit(url or "")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            found.append((_setting_name(where, key), parts.hostname or ""))
    return found


def _unique_credentials(callers: tuple[CallerPolicy, ...]) -> None:
    """Refuse one token hash or certificate name for two callers.

    The registry would authenticate such a credential as whichever caller matched last, so a plain
    caller's token could act with an admin's rights.
    """
    by_token: dict[str, str] = {}
    by_cert_name: dict[str, str] = {}
    for caller in callers:
        if caller.token_sha256 is not None:
            other = by_token.setdefault(caller.token_sha256, caller.name)
            if other != caller.name:
                raise ConfigError(
                    f"callers.{caller.name}.token_sha256: callers.{other} has the same token hash, "
                    "so one token would authenticate as either; give each caller its own token "
                    "(credential-broker caller new-token)"
                )
        for name in caller.cert_names:
            other = by_cert_name.setdefault(name, caller.name)
            if other != caller.name:
                raise ConfigError(
                    f"callers.{caller.name}.cert_names: {name!r} also names callers.{other}; a "
                    "client certificate name must belong to exactly one caller"
                )


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
    "BROKER_ALLOW_UNSEALED_STORE": "allow_unsealed_store",
    "BROKER_ALLOW_ANONYMOUS_CALLERS": "allow_anonymous_callers",
    "BROKER_ALLOW_CLEARTEXT_UPSTREAM": "allow_cleartext_upstream",
    # Read only to be refused with a pointer to the two settings above that replace it.
    "BROKER_INSECURE": "insecure",
    "BROKER_ASSERTION_TTL": "assertion_ttl",
    "BROKER_REFRESH_MARGIN": "refresh_margin",
    "BROKER_THREAD_TASK_TTL": "thread_task_ttl",
    "BROKER_THREAD_TASK_RATE_PER_CALLER": "thread_task_rate_per_caller",
    "BROKER_THREAD_TASK_BURST_PER_CALLER": "thread_task_burst_per_caller",
    "BROKER_THREAD_TASK_RATE_PER_IDENTITY": "thread_task_rate_per_identity",
    "BROKER_THREAD_TASK_BURST_PER_IDENTITY": "thread_task_burst_per_identity",
    "BROKER_MAX_LIVE_THREAD_TASKS": "max_live_thread_tasks",
    "BROKER_LOG_LEVEL": "log_level",
    "BROKER_ACCESS_LOG_SAMPLE": "access_log_sample",
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
    "BROKER_WORKERS": "workers",
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


def _count(setting: str, value: object, *, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{setting}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{setting}: must be at least {minimum}, got {number}")
    return number


def _rate(setting: str, value: object) -> float:
    """A rate per second; 0 switches the limit off."""
    try:
        rate = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{setting}: expected a number per second, got {value!r}") from None
    if not 0 <= rate < float("inf"):
        raise ConfigError(f"{setting}: must be a finite number, 0 or more (0 switches it off)")
    return rate


def _thread_limits(values: Mapping[str, Any]) -> ThreadTaskLimits:
    """The fleet-wide limits on new thread tasks (a rate of 0 switches that budget off)."""
    default = ThreadTaskLimits()
    return ThreadTaskLimits(
        per_caller_rate=_rate(
            "BROKER_THREAD_TASK_RATE_PER_CALLER",
            values.get("thread_task_rate_per_caller", default.per_caller_rate),
        ),
        per_caller_burst=_count(
            "BROKER_THREAD_TASK_BURST_PER_CALLER",
            values.get("thread_task_burst_per_caller", default.per_caller_burst),
            minimum=1,
        ),
        per_identity_rate=_rate(
            "BROKER_THREAD_TASK_RATE_PER_IDENTITY",
            values.get("thread_task_rate_per_identity", default.per_identity_rate),
        ),
        per_identity_burst=_count(
            "BROKER_THREAD_TASK_BURST_PER_IDENTITY",
            values.get("thread_task_burst_per_identity", default.per_identity_burst),
            minimum=1,
        ),
        max_live=_count(
            "BROKER_MAX_LIVE_THREAD_TASKS",
            values.get("max_live_thread_tasks", default.max_live),
            minimum=1,
        ),
    )


_CGROUP_CPU_MAX: Final = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA: Final = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD: Final = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cpu_limit() -> float | None:
    """CPUs' worth of time this container may use (cgroup v2 ``cpu.max``, or v1's CFS quota);
    ``None`` when unlimited or unknown."""
    try:
        quota, _, period = _CGROUP_CPU_MAX.read_text().partition(" ")
    except OSError:
        try:
            quota, period = _CGROUP_V1_QUOTA.read_text(), _CGROUP_V1_PERIOD.read_text()
        except OSError:
            return None
    try:
        limit = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):  # "max": no limit
        return None
    return limit if limit > 0 else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a container's CPU limit (cgroup).

    ``os.cpu_count()`` alone would count every CPU of a 64-core node for a container limited to 2.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity outside Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def _workers(value: object, *, redis_url: str | None, listen: str, ops_listen: str | None) -> int:
    """``BROKER_WORKERS``: ``auto`` (the default) is one worker per available CPU wherever several
    can work (a shared store, a named port, Linux), else 1; an explicit number is checked."""
    text = "auto" if value is None else str(value).strip().lower()
    port = int(listen.rpartition(":")[2])
    linux = sys.platform.startswith("linux")
    if text in ("", "auto"):
        workers = available_cpus() if redis_url and port and linux else 1
    else:
        workers = _count("BROKER_WORKERS", value, minimum=1)
    if workers == 1:
        return 1
    if not redis_url:
        raise ConfigError(
            f"BROKER_WORKERS: {workers} workers need a shared store (BROKER_REDIS_URL): on the "
            "embedded store each worker would keep its own identity, tasks and assertions, so "
            "each would register its own at the control plane, and a restarted worker would lose "
            "them; set BROKER_REDIS_URL, or BROKER_WORKERS=1"
        )
    if not port:
        raise ConfigError(
            f"BROKER_WORKERS: {workers} workers share one port, so BROKER_LISTEN must name it "
            f"({listen} asks each process for a free port of its own)"
        )
    if not linux:
        raise ConfigError(
            f"BROKER_WORKERS: {workers} workers need Linux, where SO_REUSEPORT spreads connections "
            f"over every process listening on the port; on {sys.platform} run one worker per "
            "process and more replicas"
        )
    if ops_listen is not None:
        ops_port = int(ops_listen.rpartition(":")[2])
        if ops_port and ops_port + workers - 1 > 65535:
            raise ConfigError(
                f"BROKER_OPS_LISTEN: worker i serves on port {ops_port} + i, and {workers} "
                "workers would pass 65535; choose a lower port"
            )
    return workers


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
    if values.get("insecure") is not None:
        raise ConfigError(_INSECURE_REMOVED)
    default_name = str(values.get("default_identity", "") or "")
    if identity_tables:
        if env_identity:
            raise ConfigError(
                "BROKER_CONFIG defines [identities]; per-identity environment variables "
                f"({', '.join(sorted(env_identity))}) would be ambiguous, set them in the file"
            )
        wheres = {name: f"identities.{name}" for name in identity_tables}
        identities = tuple(
            _identity(name, table, wheres[name]) for name, table in identity_tables.items()
        )
        default_name = default_name or identities[0].name
    else:
        default_name = default_name or "default"
        wheres = {default_name: _ENV_WHERE}
        identities = (_identity(default_name, env_identity, _ENV_WHERE),)
    if default_name not in {i.name for i in identities}:
        raise ConfigError(f"BROKER_IDENTITY: {default_name!r} is not a configured identity")
    allow_cleartext = _bool(
        "BROKER_ALLOW_CLEARTEXT_UPSTREAM", values.get("allow_cleartext_upstream", False)
    )
    cleartext = [c for i in identities for c in _cleartext_urls(i, wheres[i.name])]
    if cleartext and not allow_cleartext:
        setting, host = cleartext[0]
        raise ConfigError(
            f"{setting}: http:// to {host!r}, which is not loopback, would send credentials (or "
            "fetch the keys that verify them) in cleartext; use https://, or set "
            "BROKER_ALLOW_CLEARTEXT_UPSTREAM=true (allow_cleartext_upstream in BROKER_CONFIG) "
            "on a network you trust"
        )

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
        (
            "redis://",
            "rediss://",
            "unix://",
            "redis+sentinel://",
            "rediss+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        )
    ):
        raise ConfigError(
            "BROKER_REDIS_URL: expected a redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL"
        )
    kek = values.get("kek_file")
    listen = _listen("BROKER_LISTEN", str(values.get("listen", DEFAULT_LISTEN)))
    ops_listen = str(values.get("ops_listen") or "").strip()
    allow_anonymous = _bool(
        "BROKER_ALLOW_ANONYMOUS_CALLERS", values.get("allow_anonymous_callers", False)
    )
    callers = tuple(_caller(name, table) for name, table in caller_tables.items())
    _unique_credentials(callers)
    workers = _workers(
        values.get("workers"),
        redis_url=redis_url,
        listen=listen,
        ops_listen=_ops_listen(ops_listen) if ops_listen else None,
    )
    tls = _tls(values)
    if any(c.cert_names for c in callers) and (tls is None or tls.client_ca_file is None):
        raise ConfigError(
            "callers with cert_names need mutual TLS: set BROKER_TLS_CLIENT_CA_FILE "
            "(with BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE)"
        )
    if not callers and not is_loopback(listen) and not allow_anonymous:
        raise ConfigError(
            f"BROKER_LISTEN: {listen} is not a loopback address and no [callers] are configured; "
            "refusing to hand out credentials to anyone who connects (configure [callers], or set "
            "BROKER_ALLOW_ANONYMOUS_CALLERS=true, --allow-anonymous-callers, on a network you "
            "trust: every peer would be an admin)"
        )
    return Settings(
        identities=identities,
        default_identity=default_name,
        listen=listen,
        ops_listen=_ops_listen(ops_listen) if ops_listen else None,
        redis_url=redis_url,
        kek_file=_path("BROKER_KEK_FILE", kek) if kek else None,
        allow_unsealed_store=_bool(
            "BROKER_ALLOW_UNSEALED_STORE", values.get("allow_unsealed_store", False)
        ),
        allow_anonymous_callers=allow_anonymous,
        allow_cleartext_upstream=allow_cleartext,
        cleartext_upstreams=tuple(setting for setting, _ in cleartext),
        callers=callers,
        tls=tls,
        workers=workers,
        assertion_ttl=ttl,
        refresh_margin=margin,
        thread_task_ttl=thread_ttl,
        thread_limits=_thread_limits(values),
        log_level=log_level,
        access_log_sample=_count(
            "BROKER_ACCESS_LOG_SAMPLE", values.get("access_log_sample", 0), minimum=0
        ),
        grace_period=_seconds("BROKER_GRACE_PERIOD", values.get("grace_period", 10)),
        stats_interval=_seconds("BROKER_STATS_INTERVAL", values.get("stats_interval", 10)),
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
