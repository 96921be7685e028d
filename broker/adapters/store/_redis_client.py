"""Building and describing the redis-py client of the Redis store.

The description (``host:port``, ``unix:<path>``) names the server in errors and log events; it is
built from parsed parts, never from the URL text, so a password in the URL never appears.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.errors import ConfigError

RedisClient = Redis | RedisCluster


def make_client(
    url: str, *, socket_timeout: float, connect_timeout: float | None, retries: int
) -> Redis:
    """A binary-safe client with bounded timeouts that retries connection errors only.

    Raises:
        ConfigError: redis-py cannot use the URL.
    """
    try:
        return Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout or socket_timeout,
            retry=Retry(
                ExponentialBackoff(cap=0.25, base=0.05),
                retries,
                supported_errors=(RedisConnectionError,),
            ),
            decode_responses=False,
            client_name="credential-broker",
        )
    except ValueError as exc:
        raise ConfigError(f"redis URL for {describe_url(url)}: {exc}") from None


def describe_url(url: str) -> str:
    """``host:port`` (or ``unix:<path>``) of a Redis URL, never its credentials."""
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
