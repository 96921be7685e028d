"""Broker-wide settings, and :func:`load_settings`, which reads every setting and checks them together."""

from __future__ import annotations

import math
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from broker import __version__
from broker.config import _parsers as p
from broker.config._callers import read_caller, unique_credentials
from broker.config._identity import ENV_WHERE, IdentitySettings, read_identity
from broker.config._identity import VARIABLES as IDENTITY_VARIABLES
from broker.config._parsers import SKEW_WINDOW_SECONDS, is_loopback
from broker.config._table import (
    Names,
    Refused,
    Setting,
    build,
    group,
    parse_rows,
    row,
    rows_of,
)
from broker.core.callers import CallerPolicy
from broker.core.credentials.spec import ThreadTaskLimits
from broker.core.protocol.urls import is_loopback_host
from broker.errors import ConfigError

DEFAULT_LISTEN: Final = "127.0.0.1:50051"
_LIMITS: Final = ThreadTaskLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """Server certificate, and the CA that client certificates must chain to (mTLS) if set."""

    cert_file: Path
    """The server's certificate (PEM), reloaded when the file changes."""
    key_file: Path
    """Its private key (PEM)."""
    client_ca_file: Path | None = None
    """Client certificates must chain to this CA; ``None``: no client certificates asked for."""


_TLS_ROWS: Final = {
    "cert_file": Setting(
        key="tls_cert_file",
        env="BROKER_TLS_CERT_FILE",
        parse=p.optional(p.existing_file),
        doc="serve TLS with this certificate, with `BROKER_TLS_KEY_FILE` (both reloaded when "
        "the files change)",
    ),
    "key_file": Setting(
        key="tls_key_file",
        env="BROKER_TLS_KEY_FILE",
        parse=p.optional(p.existing_file),
        doc="the certificate's private key",
    ),
    "client_ca_file": Setting(
        key="tls_client_ca_file",
        env="BROKER_TLS_CLIENT_CA_FILE",
        parse=p.optional(p.existing_file),
        doc="require client certificates (mTLS) signed by this CA",
    ),
}

_THREAD_LIMIT_ROWS: Final = {
    "per_caller_rate": Setting(
        key="thread_task_rate_per_caller",
        env="BROKER_THREAD_TASK_RATE_PER_CALLER",
        parse=p.rate,
        doc="new thread tasks (each a registration upstream) one configured caller may start per "
        "second, fleet-wide; `0` switches this budget off",
    ),
    "per_caller_burst": Setting(
        key="thread_task_burst_per_caller",
        env="BROKER_THREAD_TASK_BURST_PER_CALLER",
        parse=p.at_least_one,
        doc="new thread tasks one configured caller may start at once",
    ),
    "per_identity_rate": Setting(
        key="thread_task_rate_per_identity",
        env="BROKER_THREAD_TASK_RATE_PER_IDENTITY",
        parse=p.rate,
        doc="new thread tasks per second for all callers of an identity together (an open "
        "broker's anonymous callers included); `0` switches this budget off",
    ),
    "per_identity_burst": Setting(
        key="thread_task_burst_per_identity",
        env="BROKER_THREAD_TASK_BURST_PER_IDENTITY",
        parse=p.at_least_one,
        doc="new thread tasks all callers of an identity may start at once",
    ),
    "max_live": Setting(
        key="max_live_thread_tasks",
        env="BROKER_MAX_LIVE_THREAD_TASKS",
        parse=p.at_least_one,
        doc="thread tasks of an identity alive at once; past it a new thread is refused until "
        "one expires",
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the composition root needs.

    The fields with ``metadata=row(...)`` (or ``group(...)``) are the broker-wide settings; the
    others are read from tables of ``BROKER_CONFIG`` or worked out from the settings.
    """

    listen: str = field(
        default=DEFAULT_LISTEN,
        metadata=row(
            env="BROKER_LISTEN",
            flag="--listen",
            parse=p.listen,
            doc="HOST:PORT to serve gRPC on",
        ),
    )
    ops_listen: str | None = field(
        default=None,
        metadata=row(
            env="BROKER_OPS_LISTEN",
            flag="--ops-listen",
            parse=p.ops_listen,
            shown="(off)",
            doc="`[HOST:]PORT` of the ops HTTP listener: `/metrics` (Prometheus), `/healthz`, "
            "`/readyz`; a bare port binds `127.0.0.1`",
        ),
    )
    redis_url: str | None = field(
        default=None,
        metadata=row(
            env="BROKER_REDIS_URL",
            flag="--redis-url",
            parse=p.redis_url,
            shown="(embedded store)",
            doc="shared state: `redis://`, `rediss://`, `unix://`, "
            "`redis+sentinel://h:p[,h:p]/service[/db]` or `redis+cluster://h:p[,h:p]` "
            "(`rediss+sentinel://`, `rediss+cluster://` over TLS; sentinel credentials and TLS "
            "files as query parameters, see `deploy/redis/README.md`); without it state is per "
            "process and not persistent",
        ),
    )
    kek_file: Path | None = field(
        default=None,
        metadata=row(
            env="BROKER_KEK_FILE",
            flag="--kek-file",
            parse=p.optional(p.existing_file),
            doc="key-encryption key file (`credential-broker kek generate`); required with Redis "
            "unless `BROKER_ALLOW_UNSEALED_STORE`",
        ),
    )
    allow_unsealed_store: bool = field(
        default=False,
        metadata=row(
            env="BROKER_ALLOW_UNSEALED_STORE",
            flag="--allow-unsealed-store",
            parse=p.boolean,
            doc="Redis without a KEK keeps private keys, tokens and assertions unsealed "
            "(development only; `store.unsealed` at start)",
        ),
    )
    allow_anonymous_callers: bool = field(
        default=False,
        metadata=row(
            env="BROKER_ALLOW_ANONYMOUS_CALLERS",
            flag="--allow-anonymous-callers",
            parse=p.boolean,
            doc="a non-loopback `BROKER_LISTEN` may run without `[callers]`: whoever connects is a "
            "full admin (`caller.anonymous_allowed` at start)",
        ),
    )
    allow_cleartext_upstream: bool = field(
        default=False,
        metadata=row(
            env="BROKER_ALLOW_CLEARTEXT_UPSTREAM",
            parse=p.boolean,
            doc="control-plane, AuthAPI, JWKS and OAuth URLs may use `http://` beyond loopback "
            "(`upstream.cleartext_allowed` at start); otherwise only `127.0.0.0/8`, `::1` and "
            "`localhost` may",
        ),
    )
    cleartext_upstreams: tuple[str, ...] = ()
    """The upstream URL settings that do use http:// beyond loopback (allowed by the one above)."""
    assertion_ttl: float = field(
        default=60.0,
        metadata=row(
            env="BROKER_ASSERTION_TTL",
            flag="--assertion-ttl",
            parse=p.assertion_ttl,
            doc=f"seconds an assertion is valid; must stay below the {SKEW_WINDOW_SECONDS:g} s skew "
            "window",
        ),
    )
    refresh_margin: float = field(
        metadata=row(
            env="BROKER_REFRESH_MARGIN",
            parse=p.seconds,
            shown="half of `BROKER_ASSERTION_TTL`",
            doc="an assertion is no longer handed out this long before it expires; shorter than "
            "`BROKER_ASSERTION_TTL`",
        )
    )
    thread_task_ttl: float | None = field(
        default=24 * 3600.0,
        metadata=row(
            env="BROKER_THREAD_TASK_TTL",
            parse=p.seconds_or_never,
            doc="seconds a thread's task is kept (`never` keeps it)",
        ),
    )
    thread_limits: ThreadTaskLimits = field(
        default=_LIMITS, metadata=group(ThreadTaskLimits, _THREAD_LIMIT_ROWS)
    )
    log_level: str = field(
        default="info",
        metadata=row(
            env="BROKER_LOG_LEVEL",
            flag="--log-level",
            parse=p.log_level,
            doc="`debug`, `info`, `warning` or `error`",
        ),
    )
    access_log_sample: int = field(
        default=0,
        metadata=row(
            env="BROKER_ACCESS_LOG_SAMPLE",
            parse=p.at_least_zero,
            doc="write `rpc.completed` for one successful RPC in N (`0`: none); a failed RPC always "
            "writes its line, and every RPC is counted in `broker.stats` and `/metrics`",
        ),
    )
    grace_period: float = field(
        default=10.0,
        metadata=row(
            env="BROKER_GRACE_PERIOD",
            parse=p.seconds,
            doc="seconds SIGTERM waits for in-flight RPCs",
        ),
    )
    stats_interval: float = field(
        default=10.0,
        metadata=row(
            env="BROKER_STATS_INTERVAL",
            parse=p.seconds,
            doc="seconds between `broker.stats` events (cumulative counters, RPCs by code and "
            "method included)",
        ),
    )
    registration_deadline: float = field(
        default=45.0,
        metadata=row(
            env="BROKER_REGISTRATION_DEADLINE",
            parse=p.seconds,
            doc="seconds one registration at the control plane may take; the fleet-wide lock on it "
            "lasts 5 s longer",
        ),
    )
    circuit_failure_threshold: int = field(
        default=3,
        metadata=row(
            env="BROKER_CIRCUIT_FAILURES",
            parse=p.whole_seconds,
            doc="consecutive control-plane outages that open the circuit",
        ),
    )
    circuit_cooldown: float = field(
        default=30.0,
        metadata=row(
            env="BROKER_CIRCUIT_COOLDOWN",
            parse=p.seconds,
            doc="seconds an open circuit waits before it tries the control plane again",
        ),
    )
    rejection_min_interval: float = field(
        default=5.0,
        metadata=row(
            env="BROKER_REJECTION_MIN_INTERVAL",
            parse=p.seconds,
            doc="a slot's task is replaced, and the account's Bearer refreshed on a report, at most "
            "once per this many seconds fleet-wide",
        ),
    )
    identities: tuple[IdentitySettings, ...]
    """Every configured identity, in the order configured."""
    default_identity: str = field(
        metadata=row(
            env="BROKER_IDENTITY",
            parse=p.optional(p.text),
            shown="`default`, or the first `[identities]` table",
            doc="the default identity's name (the name of the identity the environment describes)",
        )
    )
    callers: tuple[CallerPolicy, ...] = ()
    """The ``[callers.NAME]`` tables of ``BROKER_CONFIG``."""
    tls: TlsSettings | None = field(default=None, metadata=group(TlsSettings, _TLS_ROWS))
    workers: int = field(
        metadata=row(
            env="BROKER_WORKERS",
            flag="--workers",
            parse=p.workers,
            shown="`auto`",
            doc="broker processes sharing the port under one supervisor; `auto` is one per CPU this "
            "process may use (affinity and cgroup limit) with Redis and a named port on Linux, else "
            "1; above 1 on the embedded store is refused (see `docs/scaling.md`)",
        )
    )
    agent_version: str = __version__
    """The version sent in the agent bill of materials."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Extra string settings; the broker itself reads none of them."""

    def identity(self, name: str) -> IdentitySettings:
        """The identity called ``name``."""
        for identity in self.identities:
            if identity.name == name:
                return identity
        raise ConfigError(f"identity {name!r} is not configured")


_INSECURE_REMOVED: Final = (
    "BROKER_INSECURE (--insecure, insecure in BROKER_CONFIG) is no longer accepted: it allowed two "
    "unrelated risks at once. Set BROKER_ALLOW_UNSEALED_STORE=true (--allow-unsealed-store, "
    "allow_unsealed_store) to keep secrets in Redis without a KEK, and/or "
    "BROKER_ALLOW_ANONYMOUS_CALLERS=true (--allow-anonymous-callers, allow_anonymous_callers) to "
    "serve a non-loopback listener without [callers]; then remove BROKER_INSECURE"
)
REFUSED: Final = (Refused(key="insecure", env="BROKER_INSECURE", message=_INSECURE_REMOVED),)
"""Broker-wide settings that are no longer accepted."""

ROWS: Final = rows_of(Settings)
VARIABLES: Final = {r.env: r.key for r in ROWS if r.env} | {r.env: r.key for r in REFUSED if r.env}
"""Environment variable -> key, for the broker-wide settings."""
_KEYS: Final = frozenset({row.key for row in ROWS} | {r.key for r in REFUSED})
_GLOBAL_NAMES: Final = Names("BROKER_CONFIG")


def _variable(row: Setting) -> str:
    """How messages name a broker-wide setting: by its environment variable."""
    return row.env or row.key


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
        path = p.existing_file("BROKER_CONFIG", config_path)
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
    for variable, key in VARIABLES.items():
        if env.get(variable, "") != "":
            values[key] = env[variable]
    env_identity: dict[str, Any] = {
        key: env[variable]
        for variable, key in IDENTITY_VARIABLES.items()
        if env.get(variable, "") != ""
    }
    identity_keys = set(IDENTITY_VARIABLES.values())
    for key, value in (overrides or {}).items():
        if value is not None:
            (env_identity if key in identity_keys else values)[key] = value
    return _build(values, identity_tables, env_identity, caller_tables)


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


def _workers(
    wanted: int | None, *, redis_url: str | None, listen: str, ops_listen: str | None
) -> int:
    """``BROKER_WORKERS``: ``auto`` (``None``) is one worker per available CPU wherever several can
    work (a shared store, a named port, Linux), else 1; an explicit number is checked."""
    port = int(listen.rpartition(":")[2])
    linux = sys.platform.startswith("linux")
    if wanted is None:
        workers = available_cpus() if redis_url and port and linux else 1
    else:
        workers = wanted
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
    files = {attribute: values[row.key] for attribute, row in _TLS_ROWS.items()}
    if files["cert_file"] is None and files["key_file"] is None:
        if files["client_ca_file"] is not None:
            raise ConfigError("BROKER_TLS_CLIENT_CA_FILE: needs BROKER_TLS_CERT_FILE and _KEY_FILE")
        return None
    if files["cert_file"] is None or files["key_file"] is None:
        raise ConfigError("BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE must be set together")
    return TlsSettings(**files)


def _cleartext(upstreams: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(setting, host) of each upstream URL that is http:// to a host beyond loopback."""
    found = []
    for label, address in upstreams:
        parts = urlsplit(address)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            found.append((label, parts.hostname or ""))
    return found


def _build(
    given: Mapping[str, Any],
    identity_tables: Mapping[str, Mapping[str, Any]],
    env_identity: Mapping[str, Any],
    caller_tables: Mapping[str, Mapping[str, Any]],
) -> Settings:
    unknown = sorted(set(given) - _KEYS)
    if unknown:
        raise ConfigError(f"BROKER_CONFIG: unknown setting(s) {', '.join(unknown)}")
    for refused in REFUSED:
        if given.get(refused.key) is not None:
            raise ConfigError(refused.message.format_map(_GLOBAL_NAMES))
    values = parse_rows(ROWS, given, _variable)
    default_name: str | None = values["default_identity"]
    if identity_tables:
        if env_identity:
            raise ConfigError(
                "BROKER_CONFIG defines [identities]; per-identity environment variables "
                f"({', '.join(sorted(env_identity))}) would be ambiguous, set them in the file"
            )
        read = [
            read_identity(name, table, f"identities.{name}")
            for name, table in identity_tables.items()
        ]
        default_name = default_name or read[0][0].name
    else:
        default_name = default_name or "default"
        read = [read_identity(default_name, env_identity, ENV_WHERE)]
    identities = tuple(identity for identity, _ in read)
    if default_name not in {i.name for i in identities}:
        raise ConfigError(f"BROKER_IDENTITY: {default_name!r} is not a configured identity")
    cleartext = _cleartext([upstream for _, upstreams in read for upstream in upstreams])
    if cleartext and not values["allow_cleartext_upstream"]:
        setting_name, host = cleartext[0]
        raise ConfigError(
            f"{setting_name}: http:// to {host!r}, which is not loopback, would send credentials "
            "(or fetch the keys that verify them) in cleartext; use https://, or set "
            "BROKER_ALLOW_CLEARTEXT_UPSTREAM=true (allow_cleartext_upstream in BROKER_CONFIG) "
            "on a network you trust"
        )
    ttl = values["assertion_ttl"]
    margin = ttl / 2 if values["refresh_margin"] is None else values["refresh_margin"]
    if margin >= ttl:
        raise ConfigError("BROKER_REFRESH_MARGIN: must be shorter than BROKER_ASSERTION_TTL")
    listen = values["listen"]
    callers = tuple(read_caller(name, table) for name, table in caller_tables.items())
    unique_credentials(callers)
    workers = _workers(
        values["workers"],
        redis_url=values["redis_url"],
        listen=listen,
        ops_listen=values["ops_listen"],
    )
    tls = _tls(values)
    if any(c.cert_names for c in callers) and (tls is None or tls.client_ca_file is None):
        raise ConfigError(
            "callers with cert_names need mutual TLS: set BROKER_TLS_CLIENT_CA_FILE "
            "(with BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE)"
        )
    if not callers and not is_loopback(listen) and not values["allow_anonymous_callers"]:
        raise ConfigError(
            f"BROKER_LISTEN: {listen} is not a loopback address and no [callers] are configured; "
            "refusing to hand out credentials to anyone who connects (configure [callers], or set "
            "BROKER_ALLOW_ANONYMOUS_CALLERS=true, --allow-anonymous-callers, on a network you "
            "trust: every peer would be an admin)"
        )
    return build(
        Settings,
        values,
        _GLOBAL_NAMES,
        identities=identities,
        default_identity=default_name,
        cleartext_upstreams=tuple(setting_name for setting_name, _ in cleartext),
        refresh_margin=margin,
        callers=callers,
        tls=tls,
        workers=workers,
    )
