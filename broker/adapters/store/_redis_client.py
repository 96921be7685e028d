"""Building and describing the redis-py client of the Redis store, for every supported topology.

URL forms (``BROKER_REDIS_URL``):

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…``, ``unix:///path?db=N``: one server
  (redis-py's own URL parser).
* ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]``: the master of
  ``service_name`` as the listed sentinels (default port 26379) report it, through
  :class:`redis.asyncio.sentinel.Sentinel`; connections follow a failover. The credentials are the
  data nodes'; the sentinels are asked without credentials.
* ``redis+cluster://[[user]:password@]host[:port][,host[:port]…]``: a Redis Cluster discovered from
  the listed startup nodes (default port 6379), through :class:`redis.asyncio.cluster.RedisCluster`.

The description (``host:port``, ``unix:<path>``, ``sentinel <service> via h:p,…``, ``cluster via
h:p,…``) names the server in errors and log events; it is built from parsed parts, never from the URL
text, so a password in the URL never appears.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.errors import ConfigError

# redis-py annotates Sentinel() only from 8.2 on; calling it through a typed name keeps
# mypy --strict clean with the locked release and with the newest alike.
_new_sentinel: Callable[..., Sentinel] = Sentinel

RedisClient = Redis | RedisCluster

SENTINEL_SCHEME: Final = "redis+sentinel"
CLUSTER_SCHEME: Final = "redis+cluster"
_DEFAULT_PORT: Final = {SENTINEL_SCHEME: 26379, CLUSTER_SCHEME: 6379}
_CLIENT_NAME: Final = "credential-broker"


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
    """A parsed ``redis+sentinel://`` or ``redis+cluster://`` URL (never shown: it has credentials).

    Attributes:
        kind: ``sentinel`` or ``cluster``.
        nodes: the sentinels, or the cluster's startup nodes, as (host, port).
        service: the Sentinel service (master group) name; empty for a cluster.
        db: the database number (always 0 on a cluster).
        username: the data nodes' ACL user, if any.
        password: the data nodes' password, if any.
    """

    kind: Literal["sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """The topology without credentials, e.g. ``sentinel mymaster via 10.0.0.1:26379``."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        if self.kind == "sentinel":
            return f"sentinel {self.service} via {hosts}"
        return f"cluster via {hosts}"


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


def parse_topology(url: str) -> Topology | None:
    """The topology a ``redis+sentinel://`` or ``redis+cluster://`` URL names; ``None`` for others.

    Raises:
        ConfigError: a malformed topology URL (the message never repeats the URL).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORT:
        return None
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if query:
        raise ConfigError(f"BROKER_REDIS_URL: {scheme}:// takes no query parameters")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(n.strip(), _DEFAULT_PORT[scheme], scheme) for n in hosts.split(","))
    parts = [p for p in path.split("/") if p]
    if scheme == CLUSTER_SCHEME:
        if parts and parts != ["0"]:
            raise ConfigError("BROKER_REDIS_URL: redis+cluster:// has no database (or only /0)")
        return Topology("cluster", nodes, username=username, password=password)
    if not parts or len(parts) > 2:
        raise ConfigError(
            "BROKER_REDIS_URL: redis+sentinel:// needs /service_name, optionally /service_name/db"
        )
    db_text = parts[1] if len(parts) == 2 else "0"
    if not db_text.isdigit():
        raise ConfigError("BROKER_REDIS_URL: redis+sentinel:// database must be a number")
    service = unquote(parts[0])
    return Topology("sentinel", nodes, service, int(db_text), username, password)


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
    if topology.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            **credentials,
            **common,
        )
    sentinel = _new_sentinel(
        list(topology.nodes),
        sentinel_kwargs={
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout or socket_timeout,
            "client_name": _CLIENT_NAME,
        },
    )
    master = sentinel.master_for(
        topology.service, redis_class=SentinelMaster, db=topology.db, **credentials, **common
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
