"""Building and describing the redis-py client of the Redis store, for every supported topology.

URL forms (``BROKER_REDIS_URL``):

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…``, ``unix:///path?db=N``: one server
  (redis-py's own URL parser).
* ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]``: the master of
  ``service_name`` as the listed sentinels (default port 26379) report it, through
  :class:`redis.asyncio.sentinel.Sentinel`; connections follow a failover. The user-info part holds
  the data nodes' credentials; the sentinels' own (their ``requirepass`` or ACL user) are the query
  parameters ``sentinel_password`` and ``sentinel_username``.
* ``redis+cluster://[[user]:password@]host[:port][,host[:port]…]``: a Redis Cluster discovered from
  the listed startup nodes (default port 6379), through :class:`redis.asyncio.cluster.RedisCluster`.
* ``rediss+sentinel://…`` and ``rediss+cluster://…``: the same over TLS to every sentinel and data
  node, verified against the system CAs or the query parameter ``ssl_ca_certs=/path/ca.pem``; a
  client certificate with ``ssl_certfile`` and ``ssl_keyfile``. Host names are checked, so a
  Sentinel's servers need certificates for the addresses the sentinels announce.

Query values are percent-decoded (``%26`` for ``&``; ``+`` stays ``+``). Any other parameter, a TLS
parameter on a cleartext scheme or a sentinel parameter on a cluster is refused.

The description (``host:port``, ``unix:<path>``, ``sentinel <service> via h:p,…``, ``cluster via
h:p,…``, with `` (tls)`` for the TLS forms) names the server in errors and log events; it is built
from parsed parts, never from the URL text, so a password in the URL never appears.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.errors import ConfigError

RedisClient = Redis | RedisCluster

# scheme -> (topology kind, TLS)
_SCHEMES: Final[Mapping[str, tuple[Literal["sentinel", "cluster"], bool]]] = {
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT: Final = {"sentinel": 26379, "cluster": 6379}
_TLS_PARAMETERS: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SENTINEL_PARAMETERS: Final = ("sentinel_username", "sentinel_password")
_CLIENT_NAME: Final = "credential-broker"


class SentinelAuthenticationError(MasterNotFoundError):
    """No sentinel named the master, and at least one refused the broker's credentials.

    redis-py reports this as a plain ``MasterNotFoundError``; the store names errors by their class,
    so this one tells an operator to look at ``sentinel_password`` / ``sentinel_username`` instead of
    at the master.
    """


class _SentinelNode(Redis):
    """The client of one sentinel, remembering whether it refused the credentials last time."""

    refused_credentials = False

    async def sentinel_masters(self) -> Any:
        """``SENTINEL MASTERS``, noting an authentication refusal (NOAUTH, WRONGPASS)."""
        self.refused_credentials = False
        try:
            return await super().sentinel_masters()
        except AuthenticationError:
            self.refused_credentials = True
            raise


class _Sentinel(Sentinel):
    """redis-py's Sentinel client, saying when the sentinels refused its credentials.

    Args:
        sentinels: the sentinels' (host, port).
        **kwargs: as :class:`redis.asyncio.sentinel.Sentinel` takes them.
    """

    def __init__(self, sentinels: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)
        # The same clients redis-py builds (none has connected yet), able to report a refusal.
        self._nodes = [
            _SentinelNode(host=host, port=port, **self.sentinel_kwargs) for host, port in sentinels
        ]
        self.sentinels = list(self._nodes)

    async def discover_master(self, service_name: str) -> Any:
        """The master's address, as redis-py finds it.

        Raises:
            MasterNotFoundError: no sentinel named a healthy master; the subclass
                :class:`SentinelAuthenticationError` when a sentinel refused the credentials.
        """
        for node in self._nodes:
            node.refused_credentials = False
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError as exc:
            if not any(node.refused_credentials for node in self._nodes):
                raise
            raise SentinelAuthenticationError(
                f"a sentinel refused the credentials while looking up {service_name!r}"
            ) from exc


# redis-py annotates Sentinel() only from 8.2 on; calling it through a typed name keeps
# mypy --strict clean with the locked release and with the newest alike.
_new_sentinel: Callable[..., Sentinel] = _Sentinel


class SentinelMaster(Redis):
    """A client of a Sentinel-managed master that also closes its connections to the sentinels."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the master's connections, then those to the sentinels."""
        try:
            await super().aclose(close_connection_pool)
        finally:
            sentinel, self.sentinel_manager = self.sentinel_manager, None
            if sentinel is not None:
                await sentinel.aclose()


class ClusterReady:
    """Makes a ``RedisCluster`` learn its slot map once, before the first command runs.

    redis-py 8.1's ``RedisCluster`` initializes lazily, and commands started concurrently while it
    does can fail with ``AttributeError`` on a connection it just closed; so the first command waits
    here and the rest find the map ready. For a plain ``Redis`` client it does nothing.

    Args:
        client: the store's client.
    """

    def __init__(self, client: RedisClient) -> None:
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """Initialize the cluster client unless that already happened (or it is not a cluster)."""
        if self._cluster is None:
            return
        async with self._lock:
            if self._cluster is not None:
                await self._cluster.initialize()
                self._cluster = None


@dataclass(frozen=True, slots=True)
class Topology:
    """A parsed ``redis[s]+sentinel://`` or ``redis[s]+cluster://`` URL (its repr hides passwords).

    Attributes:
        kind: ``sentinel`` or ``cluster``.
        nodes: the sentinels, or the cluster's startup nodes, as (host, port).
        service: the Sentinel service (master group) name; empty for a cluster.
        db: the database number (always 0 on a cluster).
        username: the data nodes' ACL user, if any.
        password: the data nodes' password, if any.
        tls: TLS to every sentinel and data node (the ``rediss+`` schemes).
        sentinel_username: the sentinels' ACL user, if any.
        sentinel_password: the sentinels' password (their ``requirepass``), if any.
        ssl_ca_certs: CA bundle the servers' certificates must chain to (default: the system's).
        ssl_certfile: the broker's client certificate, if the servers ask for one.
        ssl_keyfile: its private key.
    """

    kind: Literal["sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def describe(self) -> str:
        """The topology without credentials, e.g. ``sentinel mymaster via 10.0.0.1:26379``."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        if self.kind == "sentinel":
            where = f"sentinel {self.service} via {hosts}"
        else:
            where = f"cluster via {hosts}"
        return f"{where} (tls)" if self.tls else where

    def tls_options(self) -> dict[str, Any]:
        """redis-py keyword arguments for TLS (empty for the cleartext schemes).

        Raises:
            ConfigError: a named certificate or key file does not exist.
        """
        if not self.tls:
            return {}
        options: dict[str, Any] = {"ssl": True}
        for name in _TLS_PARAMETERS:
            value = getattr(self, name)
            if value is None:
                continue
            if not Path(value).is_file():
                raise ConfigError(f"BROKER_REDIS_URL: {name} file {value!r} does not exist")
            options[name] = value
        return options


def _node(text: str, default_port: int, scheme: str) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError(f"BROKER_REDIS_URL: {scheme}:// has an empty host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"BROKER_REDIS_URL: {scheme}:// port of {host} is not 1-65535")
    return host, int(port_text)


def _query(scheme: str, query: str) -> dict[str, str]:
    """The query parameters a topology URL may carry, percent-decoded (never echoing a value)."""
    kind, tls = _SCHEMES[scheme]
    allowed = (
        *(_SENTINEL_PARAMETERS if kind == "sentinel" else ()),
        *(_TLS_PARAMETERS if tls else ()),
    )
    found: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, equals, value = item.partition("=")
        name = unquote(name)
        if (name in _TLS_PARAMETERS or name == "ssl") and not tls:
            raise ConfigError(
                f"BROKER_REDIS_URL: {name} is a TLS setting; use rediss+{kind}:// for TLS"
            )
        if name not in allowed:
            takes = f" (it takes {', '.join(allowed)})" if allowed else ""
            raise ConfigError(f"BROKER_REDIS_URL: {scheme}:// takes no parameter {name!r}{takes}")
        if not equals or not value:
            raise ConfigError(f"BROKER_REDIS_URL: expected {name}=VALUE")
        if name in found:
            raise ConfigError(f"BROKER_REDIS_URL: {name} is given twice")
        found[name] = unquote(value)
    return found


def parse_topology(url: str) -> Topology | None:
    """The topology a ``redis[s]+sentinel://`` or ``redis[s]+cluster://`` URL names; else ``None``.

    Raises:
        ConfigError: a malformed topology URL (the message never repeats the URL or a value).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        return None
    kind, tls = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    parameters = _query(scheme, query)
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(n.strip(), _DEFAULT_PORT[kind], scheme) for n in hosts.split(","))
    parts = [p for p in path.split("/") if p]
    common: dict[str, Any] = {
        "username": username,
        "password": password,
        "tls": tls,
        **parameters,
    }
    if kind == "cluster":
        if parts and parts != ["0"]:
            raise ConfigError(f"BROKER_REDIS_URL: {scheme}:// has no database (or only /0)")
        return Topology("cluster", nodes, **common)
    if not parts or len(parts) > 2:
        raise ConfigError(
            f"BROKER_REDIS_URL: {scheme}:// needs /service_name, optionally /service_name/db"
        )
    db_text = parts[1] if len(parts) == 2 else "0"
    if not db_text.isdigit():
        raise ConfigError(f"BROKER_REDIS_URL: {scheme}:// database must be a number")
    return Topology("sentinel", nodes, unquote(parts[0]), int(db_text), **common)


def make_client(
    url: str, *, socket_timeout: float, connect_timeout: float | None, retries: int
) -> RedisClient:
    """A binary-safe client with bounded timeouts that retries connection errors only.

    Args:
        url: any URL form in the module docstring.
        socket_timeout: seconds to wait for a reply.
        connect_timeout: seconds to wait for a connection (default: ``socket_timeout``).
        retries: retries after a connection error.

    Raises:
        ConfigError: redis-py cannot use the URL.
    """
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout or socket_timeout,
        "retry": Retry(
            ExponentialBackoff(cap=0.25, base=0.05),
            retries,
            supported_errors=(RedisConnectionError,),
        ),
        "decode_responses": False,
        "client_name": _CLIENT_NAME,
    }
    topology = parse_topology(url)
    if topology is None:
        try:
            return Redis.from_url(url, **common)
        except ValueError as exc:
            raise ConfigError(f"redis URL for {describe_url(url)}: {exc}") from None
    credentials: dict[str, Any] = {"username": topology.username, "password": topology.password}
    tls = topology.tls_options()
    if topology.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            **credentials,
            **tls,
            **common,
        )
    sentinel = _new_sentinel(
        list(topology.nodes),
        sentinel_kwargs={
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout or socket_timeout,
            "client_name": _CLIENT_NAME,
            "username": topology.sentinel_username,
            "password": topology.sentinel_password,
            **tls,
        },
    )
    master = sentinel.master_for(
        topology.service,
        redis_class=SentinelMaster,
        db=topology.db,
        **credentials,
        **tls,
        **common,
    )
    assert isinstance(master, SentinelMaster)  # noqa: S101  (redis_class says so)
    master.sentinel_manager = sentinel
    return master


def describe_url(url: str) -> str:
    """``host:port`` (or ``unix:<path>``, or the topology) of a Redis URL, never its credentials."""
    try:
        topology = parse_topology(url)
    except ConfigError:
        return "redis (unparsable URL)"
    if topology is not None:
        return topology.describe()
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        return "redis (unparsable URL)"
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connection_settings(client: RedisClient) -> Mapping[str, Any]:
    """The keyword arguments the client's connections are made with."""
    settings: Mapping[str, Any] = client.get_connection_kwargs()
    return settings


def describe_client(client: RedisClient) -> str:
    """``host:port`` (or ``unix:<path>``, ``redis cluster``) of an injected client."""
    if isinstance(client, RedisCluster):
        return "redis cluster"
    settings = connection_settings(client)
    if settings.get("path"):
        return f"unix:{settings['path']}"
    if "host" in settings:
        return f"{settings['host']}:{settings.get('port', 6379)}"
    return "redis"
