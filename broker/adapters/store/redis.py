"""Shared broker state in Redis (DESIGN §4), behind the typed ``Store`` port.

Theory of operation
-------------------
*Layout.* Keys follow :mod:`broker.adapters.store.keys`: every key of an identity carries the hash tag
``{<identity>}``, so each script below touches one cluster slot and runs unchanged on Redis Cluster.
Identities and tasks are HASHes, cached assertions and locks are STRINGs with a ``PX`` TTL.

*Sealing.* Secrets (the identity's PKCS#8 private key, assertion headers) are sealed by the injected
:class:`~broker.core.credentials.ports.Sealer` with the Redis key name as AEAD associated data (for a
hash field: key name, NUL, field name). A value copied under another key, or sealed under a KEK this
broker does not hold, fails to open like any garbage would.

*Corrupt values.* A value that does not open or parse (garbage, truncation, unknown KEK, another key's
value, missing fields, a foreign type at our key) is logged as ``store.corrupt_value`` with the key
and a reason, deleted, and reported as absent so the caller re-establishes it. The delete is a
compare-and-delete (``_redis_scripts.DISCARD``): it removes the key only if it still holds exactly what was judged
corrupt, so a replica that just wrote a good value never loses it to a slower reader.

*First writer wins.* ``save_assertion`` runs ``SET key value NX PX ttl`` in a script that returns the
existing value atomically when the ``SET`` loses, so every replica racing in one window returns the
same assertion and a loser never sees the gap between "exists" and "read it".

*Compare-and-delete.* ``delete_task`` and ``release_lock`` delete only if the key still holds the
caller's task id / fencing token, in one script, so nobody deletes a successor's task or lock. Locks
are ``SET NX PX`` with a random token.

*Retries.* ``from_url`` gives the client ~1 s connect and read timeouts and redis-py's ``Retry`` with
three attempts and a short exponential backoff (0.1 s, 0.2 s) on connection errors: a dropped
connection or a restart blip is absorbed, a refused connection fails in about 0.3 s. Timeouts are not
retried: a Redis that does not answer within the timeout (hung, partitioned) fails after one timeout
instead of three, well inside the callers' deadlines, and a write whose reply was lost is not sent
twice. A retried write can still find its own first attempt applied; the scripts and ``NX`` writes
are written so that this reports a lost race, never a fork.

*Degraded detection.* Every command goes through ``_call``. Any redis-py failure becomes
:class:`~broker.errors.StoreUnavailable` (host:port and operation, never a URL password); the instance
remembers whether Redis answered last time, so ``store.degraded`` is logged once when it stops
answering and ``store.recovered`` once when it answers again (``store.connected`` on the first answer).

*Invalidations.* One channel, message ``<identity>\\n<slot>``. One listener per store
(``_redis_subscriber``) holds one subscription and fans each message out to every local feed
(``_fanout``); it resubscribes with backoff after a restart or a silent connection. ``close()`` stops
it and ends every feed. On a Redis Cluster the channel is a *sharded* one (``SPUBLISH`` /
``SSUBSCRIBE``): a message travels only within the shard that owns the channel's slot instead of
being broadcast over the whole cluster bus, and the listener follows that shard. Invalidations are
rare (a rejection, a rotation), so one channel on one shard is plenty.

*Topologies.* ``from_url`` also takes ``redis+sentinel://`` (the master a set of sentinels names,
followed through failovers: a command that meets the old master fails, is retried against the new
one, and the invalidation listener resubscribes there) and ``redis+cluster://`` (see
``_redis_client``). Nothing else changes: every multi-key operation is within one hash tag.
The Lua scripts live in ``_redis_scripts``, client construction (URL forms, timeouts, retry policy)
in ``_redis_client``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from broker.adapters.store import _account_codec, _codec, _redis_scripts, keys
from broker.adapters.store._fanout import Fanout
from broker.adapters.store._redis_client import (
    ClusterReady,
    RedisClient,
    connection_settings,
    describe_client,
    describe_url,
    make_client,
)
from broker.adapters.store._redis_subscriber import FAILURES, InvalidationSubscriber
from broker.core.credentials.model import (
    BACKGROUND,
    LIVE_THREAD_TASKS,
    AccountRecord,
    Budget,
    CachedAssertion,
    IdentityRecord,
    Refusal,
    TaskRecord,
    WorkspaceRouteRecord,
)
from broker.core.credentials.ports import Sealer
from broker.errors import StoreCorrupt, StoreUnavailable
from broker.events import Event

if TYPE_CHECKING:
    from broker.core.credentials.ports import Store

__all__ = ["RedisClient", "RedisStore"]

_T = TypeVar("_T")
_log = structlog.get_logger(__name__)

_SAVE_ATTEMPTS: Final = 3


class _WrongType(Exception):
    """A key holds another Redis type than the schema says (a foreign value)."""


def _px(ttl_seconds: float) -> int:
    if not ttl_seconds > 0:
        raise ValueError("ttl_seconds must be a positive number of seconds")
    return max(1, math.ceil(ttl_seconds * 1000))


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected Redis reply type {type(value).__name__}")


class RedisStore:
    """The :class:`~broker.core.credentials.ports.Store` shared by broker replicas through Redis.

    Args:
        client: a ``redis.asyncio.Redis`` or ``RedisCluster`` created with ``decode_responses=False``.
        sealer: seals private keys and assertion headers at rest.
        owns_client: close ``client`` in :meth:`close` (only if this store created it).

    Raises:
        ValueError: the client decodes responses (sealed values are binary).
    """

    def __init__(self, client: RedisClient, sealer: Sealer, *, owns_client: bool = False) -> None:
        if connection_settings(client).get("decode_responses"):
            raise ValueError("RedisStore needs a client with decode_responses=False")
        self._client: Final = client
        self._sealer: Final = sealer
        self._owns_client: Final = owns_client
        self._where = describe_client(client)
        self._replace_hash: Final = client.register_script(_redis_scripts.REPLACE_HASH)
        self._set_nx_or_get: Final = client.register_script(_redis_scripts.SET_NX_OR_GET)
        self._delete_task_if: Final = client.register_script(_redis_scripts.DELETE_TASK_IF)
        self._delete_string_if: Final = client.register_script(_redis_scripts.DELETE_STRING_IF)
        self._discard_script: Final = client.register_script(_redis_scripts.DISCARD)
        self._admit_thread_task: Final = client.register_script(_redis_scripts.ADMIT_THREAD_TASK)
        self._state: Literal["unknown", "up", "down"] = "unknown"
        self._closed = False
        self._sharded: Final = isinstance(client, RedisCluster)
        self._cluster_ready: Final = ClusterReady(client)
        self._fanout: Final = Fanout()
        self._subscriber: Final = InvalidationSubscriber(
            client,
            self._fanout,
            on_subscribed=self._up,
            on_failure=self._down,
            where=lambda: self._where,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        sealer: Sealer,
        *,
        socket_timeout: float = 1.0,
        connect_timeout: float | None = None,
        retries: int = 2,
    ) -> RedisStore:
        """A store over a new client for ``url`` that it owns.

        Args:
            url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://host:port[,…]/service[/db]``
                or ``redis+cluster://host:port[,…]`` (see ``_redis_client``); credentials in it are
                never logged or put in errors.
            sealer: seals secrets at rest.
            socket_timeout: seconds to wait for a reply.
            connect_timeout: seconds to wait for a connection (default: ``socket_timeout``).
            retries: retries after a connection error (``2`` means three attempts); a timeout is
                not retried.

        Raises:
            ConfigError: the URL cannot be used.
        """
        client = make_client(
            url, socket_timeout=socket_timeout, connect_timeout=connect_timeout, retries=retries
        )
        store = cls(client, sealer, owns_client=True)
        store._where = describe_url(url)
        return store

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, state={self._state!r})"

    @property
    def shared(self) -> bool:
        """Always ``True``: every replica on this Redis sees the same state."""
        return True

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers PING."""
        await self._call("ping", self._client.ping)

    async def close(self) -> None:
        """Stop the invalidation listener, end every feed, and close the client if owned."""
        if self._closed:
            return
        self._closed = True
        await self._subscriber.close()
        self._fanout.close()
        if self._owns_client:
            await self._client.aclose()

    # -- identities ------------------------------------------------------------------------------

    async def load_identity(self, identity: str) -> IdentityRecord | None:
        """The identity record (private key unsealed), or ``None``."""
        key = keys.identity_key(identity)
        raw = await self._read_hash("load_identity", key)
        if raw is None:
            return None
        try:
            return _codec.decode_identity(identity, _fields(raw), key, self._sealer)
        except StoreCorrupt as exc:
            await self._discard(key, exc.message, "hash", [b for kv in raw.items() for b in kv])
            return None

    async def save_identity(self, record: IdentityRecord) -> None:
        """Replace the identity record atomically, its private key sealed.

        Raises:
            ValueError: ``registered_at`` is naive.
        """
        key = keys.identity_key(record.name)
        fields = _codec.encode_identity(record, key, self._sealer)
        await self._write_hash("save_identity", key, fields, 0)

    async def load_account(self, identity: str) -> AccountRecord | None:
        """The identity's login (tokens unsealed), or ``None``."""
        key = keys.account_key(identity)
        raw = await self._read_hash("load_account", key)
        if raw is None:
            return None
        try:
            return _account_codec.decode_account(identity, _fields(raw), key, self._sealer)
        except StoreCorrupt as exc:
            await self._discard(key, exc.message, "hash", [b for kv in raw.items() for b in kv])
            return None

    async def save_account(self, record: AccountRecord) -> None:
        """Replace the login atomically, its tokens sealed."""
        key = keys.account_key(record.identity)
        fields = _account_codec.encode_account(record, key, self._sealer)
        await self._write_hash("save_account", key, fields, 0)

    async def delete_identity(self, identity: str) -> None:
        """Delete the identity record and the background task of its runtime."""
        key = keys.identity_key(identity)
        doomed = [key]
        try:
            runtime = await self._call(
                "delete_identity", lambda: self._client.hget(key, "runtime_id")
            )
        except _WrongType:
            runtime = None
        if isinstance(runtime, bytes) and runtime:
            doomed.append(keys.task_key(identity, runtime.decode(errors="replace"), BACKGROUND))
        await self._call("delete_identity", lambda: self._client.delete(*doomed))

    # -- tasks -----------------------------------------------------------------------------------

    async def load_task(self, identity: str, agent_runtime_id: str, slot: str) -> TaskRecord | None:
        """The task in ``slot`` for this runtime, or ``None``."""
        key = keys.task_key(identity, agent_runtime_id, slot)
        raw = await self._read_hash("load_task", key)
        if raw is None:
            return None
        try:
            return _codec.decode_task(agent_runtime_id, slot, _fields(raw))
        except StoreCorrupt as exc:
            await self._discard(key, exc.message, "hash", [b for kv in raw.items() for b in kv])
            return None

    async def save_task(self, identity: str, task: TaskRecord, ttl_seconds: float | None) -> None:
        """Replace the task in its slot, with a ``PX`` TTL when ``ttl_seconds`` is given.

        Raises:
            ValueError: ``ttl_seconds`` is not positive, the slot is malformed, or the timestamp
                is naive.
        """
        key = keys.task_key(identity, task.agent_runtime_id, task.slot)
        px = 0 if ttl_seconds is None else _px(ttl_seconds)
        await self._write_hash("save_task", key, _codec.encode_task(task), px)

    async def delete_task(
        self, identity: str, agent_runtime_id: str, slot: str, task_id: str
    ) -> bool:
        """Delete the slot only if it still holds ``task_id``; report whether it did."""
        key = keys.task_key(identity, agent_runtime_id, slot)
        deleted = await self._call(
            "delete_task", lambda: self._delete_task_if(keys=[key], args=[task_id])
        )
        return bool(deleted)

    # -- thread-task admission -------------------------------------------------------------------

    async def admit_thread_task(
        self,
        identity: str,
        member: str,
        *,
        ttl_seconds: float,
        live_cap: int,
        budgets: Sequence[Budget],
    ) -> Refusal | None:
        """Admit a new thread task against the live cap and every budget, in one script.

        The script reads Redis's own clock, so every replica meters the same buckets against the
        same time.
        """
        budget_keys = [keys.budget_key(identity, budget.name) for budget in budgets]
        args: list[str | int] = [member, _px(ttl_seconds), live_cap]
        for budget in budgets:
            args += [max(1, round(1000 / budget.per_second)), budget.burst]
        verdict = await self._call(
            "admit_thread_task",
            lambda: self._admit_thread_task(
                keys=[keys.live_threads_key(identity), *budget_keys], args=args
            ),
        )
        limit, retry_ms = int(verdict[0]), int(verdict[1])
        if limit < 0:
            return None
        name = LIVE_THREAD_TASKS if limit == 0 else budgets[limit - 1].name
        return Refusal(name, retry_ms / 1000)

    async def forget_thread_task(self, identity: str, member: str) -> None:
        """Stop counting ``member`` as a live thread task."""
        await self._call(
            "forget_thread_task",
            lambda: self._client.zrem(keys.live_threads_key(identity), member),
        )

    # -- assertions ------------------------------------------------------------------------------

    async def load_assertion(self, identity: str, task_id: str) -> CachedAssertion | None:
        """The cached assertion of ``task_id`` (unsealed), or ``None``."""
        key = keys.assertion_key(identity, task_id)
        return await self._read_string(
            "load_assertion",
            key,
            lambda sealed: _codec.decode_assertion(sealed, key, task_id, self._sealer),
        )

    async def save_assertion(
        self, identity: str, assertion: CachedAssertion, ttl_seconds: float
    ) -> CachedAssertion:
        """Cache ``assertion`` with ``SET NX PX`` unless one is cached; return the cached one.

        Raises:
            ValueError: ``ttl_seconds`` is not positive, or a timestamp is naive.
        """
        key = keys.assertion_key(identity, assertion.task_id)
        px = _px(ttl_seconds)
        sealed = _codec.encode_assertion(assertion, key, self._sealer)
        for _ in range(_SAVE_ATTEMPTS):
            current = await self._call(
                "save_assertion", lambda: self._set_nx_or_get(keys=[key], args=[sealed, px])
            )
            if current is None:
                return assertion
            if isinstance(current, int):
                reason = "key holds another type than a string"
                await self._discard(key, reason, "wrongtype", [b"string"])
                continue
            existing = _as_bytes(current)
            try:
                return _codec.decode_assertion(existing, key, assertion.task_id, self._sealer)
            except StoreCorrupt as exc:
                await self._discard(key, exc.message, "string", [existing])
        # Corrupt values kept reappearing (a replica sealing with a KEK we lack?): serve ours.
        return assertion

    async def delete_assertion(self, identity: str, task_id: str) -> None:
        """Drop the cached assertion of ``task_id``."""
        key = keys.assertion_key(identity, task_id)
        await self._call("delete_assertion", lambda: self._client.delete(key))

    # -- locks -----------------------------------------------------------------------------------

    async def acquire_lock(self, identity: str, name: str, ttl_seconds: float) -> str | None:
        """``SET NX PX`` a random fencing token; return it, or ``None`` if the lock is held.

        Raises:
            ValueError: ``ttl_seconds`` is not positive.
        """
        key = keys.lock_key(identity, name)
        px = _px(ttl_seconds)
        token = secrets.token_hex(16)
        taken = await self._call(
            "acquire_lock", lambda: self._client.set(key, token, nx=True, px=px)
        )
        return token if taken else None

    async def release_lock(self, identity: str, name: str, token: str) -> bool:
        """Delete the lock only if ``token`` still owns it; report whether it did."""
        key = keys.lock_key(identity, name)
        deleted = await self._call(
            "release_lock", lambda: self._delete_string_if(keys=[key], args=[token])
        )
        return bool(deleted)

    async def load_route(self, identity: str) -> WorkspaceRouteRecord | None:
        """The account's workspace route, or ``None``."""
        return await self._read_string("load_route", keys.route_key(identity), _codec.decode_route)

    async def save_route(
        self, identity: str, route: WorkspaceRouteRecord, ttl_seconds: float
    ) -> None:
        """``SET PX`` the account's workspace route."""
        key = keys.route_key(identity)
        value = _codec.encode_route(route)
        px = _px(ttl_seconds)
        await self._call("save_route", lambda: self._client.set(key, value, px=px))

    async def start_cooldown(self, identity: str, name: str, ttl_seconds: float) -> None:
        """``SET PX`` the cooldown marker (a later start extends it)."""
        key = keys.cooldown_key(identity, name)
        px = _px(ttl_seconds)
        await self._call("start_cooldown", lambda: self._client.set(key, b"1", px=px))

    async def cooldown_remaining(self, identity: str, name: str) -> float | None:
        """Seconds left on the marker (``PTTL``), or ``None`` when there is none."""
        key = keys.cooldown_key(identity, name)
        pttl = int(await self._call("cooldown_remaining", lambda: self._client.pttl(key)))
        return pttl / 1000 if pttl > 0 else None

    # -- invalidations ---------------------------------------------------------------------------

    async def publish_invalidation(self, identity: str, slot: str) -> None:
        """PUBLISH (SPUBLISH on a cluster) ``<identity>\\n<slot>`` on the invalidation channel."""
        message = f"{identity}\n{slot}"
        publish = self._client.spublish if self._sharded else self._client.publish
        await self._call(
            "publish_invalidation", lambda: publish(keys.INVALIDATION_CHANNEL, message)
        )

    def invalidations(self) -> AsyncIterator[tuple[str, str]]:
        """A feed of every invalidation received from now on; it ends when the store closes.

        Must be called on the event loop; starts the store's listener if it is not running.
        """
        feed = self._fanout.subscribe()
        self._subscriber.start()
        return feed

    async def invalidations_ready(self) -> None:
        """Wait until the listener is subscribed (or the store is closed).

        From then on every published invalidation reaches every feed created so far, until the next
        disconnection. Readiness checks and tests use it.
        """
        self._subscriber.start()
        await self._subscriber.ready()

    # -- plumbing --------------------------------------------------------------------------------

    async def _call(self, op: str, command: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis command, translating failures and tracking degraded state."""
        if self._closed:
            raise StoreUnavailable(f"redis store for {self._where} is closed ({op})")
        try:
            await self._cluster_ready.ensure()
            result = await command()
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                self._up()
                raise _WrongType from None
            raise self._down(op, exc) from exc
        except FAILURES as exc:
            raise self._down(op, exc) from exc
        self._up()
        return result

    async def _read_hash(self, op: str, key: str) -> dict[bytes, bytes] | None:
        try:
            raw: Mapping[Any, Any] = await self._call(op, lambda: self._client.hgetall(key))
        except _WrongType:
            await self._discard(key, "key holds another type than a hash", "wrongtype", [b"hash"])
            return None
        return {_as_bytes(name): _as_bytes(value) for name, value in raw.items()} or None

    async def _read_string(self, op: str, key: str, decode: Callable[[bytes], _T]) -> _T | None:
        """A STRING value decoded; a value of another type, or one that does not decode, is
        discarded (``store.corrupt_value``) and read as absent."""
        try:
            value = await self._call(op, lambda: self._client.get(key))
        except _WrongType:
            await self._discard(
                key, "key holds another type than a string", "wrongtype", [b"string"]
            )
            return None
        if value is None:
            return None
        raw = _as_bytes(value)
        try:
            return decode(raw)
        except StoreCorrupt as exc:
            await self._discard(key, exc.message, "string", [raw])
            return None

    async def _write_hash(self, op: str, key: str, fields: Mapping[str, bytes], px: int) -> None:
        args: list[bytes | str | int] = [px]
        for name, value in fields.items():
            args += [name, value]
        await self._call(op, lambda: self._replace_hash(keys=[key], args=args))

    async def _discard(self, key: str, reason: str, kind: str, seen: list[bytes]) -> None:
        """Log a corrupt value and compare-and-delete it; a failing delete is not an error."""
        try:
            deleted = await self._call(
                "discard", lambda: self._discard_script(keys=[key], args=[kind, *seen])
            )
        except (StoreUnavailable, _WrongType):
            deleted = 0
        _log.warning(Event.STORE_CORRUPT_VALUE, key=key, reason=reason, discarded=bool(deleted))

    def _down(self, op: str, exc: BaseException) -> StoreUnavailable:
        error = type(exc).__name__
        if self._state != "down":
            self._state = "down"
            _log.warning(Event.STORE_DEGRADED, redis=self._where, operation=op, error=error)
        return StoreUnavailable(f"redis at {self._where} is unavailable: {op} failed ({error})")

    def _up(self) -> None:
        if self._state == "up":
            return
        event = Event.STORE_RECOVERED if self._state == "down" else Event.STORE_CONNECTED
        self._state = "up"
        _log.info(event, redis=self._where)


def _fields(raw: Mapping[bytes, bytes]) -> dict[str, bytes]:
    return {name.decode(errors="replace"): value for name, value in raw.items()}


if TYPE_CHECKING:
    _check: type[Store] = RedisStore
