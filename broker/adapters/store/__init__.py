"""State stores behind the :class:`~broker.core.credentials.ports.Store` port (DESIGN §4).

:class:`RedisStore` is shared by every replica; :class:`EmbeddedStore` keeps one process's state in
memory. The key schema both use is :mod:`broker.adapters.store.keys`.
"""

from __future__ import annotations

from broker.adapters.store._redis_client import make_client as make_redis_client
from broker.adapters.store.embedded import EmbeddedStore
from broker.adapters.store.redis import RedisStore

__all__ = ["EmbeddedStore", "RedisStore", "make_redis_client"]
