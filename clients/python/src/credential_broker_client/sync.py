"""``SyncBrokerClient``: the same client for threaded code (requests, Flask, Celery workers, ...).

It owns a :class:`~credential_broker_client.client.BrokerClient` running on a private event loop in
one background thread. A cache hit is read directly from the calling thread (no hop to the loop);
only misses and reports travel to the loop and wait for the answer, bounded by the call's deadline.
So there is exactly one implementation of the cache, the watch streams and the fallback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import grpc

from credential_broker_client._cache import Backoff
from credential_broker_client.authorization import Authorization
from credential_broker_client.client import BrokerClient, ClientStats
from credential_broker_client.errors import BrokerUnavailableError, ClientClosedError

_T = TypeVar("_T")
# Beyond the call's own deadline, how long the calling thread waits for the loop to hand back the
# answer (scheduling only; the RPC deadline is what bounds the call).
_HANDOFF_SLACK_SECONDS: Final = 2.0
_JOIN_SECONDS: Final = 10.0
_DRAIN_SECONDS: Final = 0.1


class SyncBrokerClient:
    """A blocking client for the credential broker, safe to share between threads.

    Use it as a context manager (or call :meth:`close`)::

        with SyncBrokerClient("127.0.0.1:50051") as broker:
            auth = broker.get_authorization(thread_id="thread-42")
            requests.get(url, headers=auth.http_headers(), timeout=10)

    Arguments are those of :class:`~credential_broker_client.client.BrokerClient` (no injected
    channel: the channel must be created on the client's own loop).

    Raises:
        ValueError: as ``BrokerClient``.
    """

    def __init__(
        self,
        target: str,
        *,
        identity: str | None = None,
        timeout: float = 5.0,
        watch: bool = True,
        max_watches: int = 64,
        backoff: Backoff | None = None,
        caller_token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        self._timeout = timeout
        self._closed = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="credential-broker-client", daemon=True
        )
        self._thread.start()

        async def create() -> BrokerClient:
            return BrokerClient(
                target,
                identity=identity,
                timeout=timeout,
                watch=watch,
                max_watches=max_watches,
                backoff=backoff,
                caller_token=caller_token,
                credentials=credentials,
                metadata=metadata,
                channel_options=channel_options,
            )

        try:
            self._client = self._call(create(), timeout)
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout + _HANDOFF_SLACK_SECONDS)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise BrokerUnavailableError(
                "DEADLINE_EXCEEDED: the client's event loop did not answer in time",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from exc

    def get_authorization(
        self,
        thread_id: str | None = None,
        *,
        identity: str | None = None,
        bearer_only: bool = False,
        min_remaining: float | None = None,
    ) -> Authorization:
        """The header for one call; see ``BrokerClient.get_authorization``.

        Raises:
            BrokerUnavailableError: the broker cannot answer now (retryable).
            InvalidRequestError: a malformed ``thread_id`` or ``identity``.
            UnknownIdentityError: the identity is not configured.
            CredentialUnavailableError: no assertion possible and no Bearer to fall back to.
            ClientClosedError: the client was closed.
        """
        hit = self._client.cached(
            thread_id, identity=identity, bearer_only=bearer_only, min_remaining=min_remaining
        )
        if hit is not None:
            return hit
        if self._closed:
            raise ClientClosedError("the client is closed")
        return self._call(
            self._client.get_authorization(
                thread_id,
                identity=identity,
                bearer_only=bearer_only,
                min_remaining=min_remaining,
            ),
            self._timeout,
        )

    def cached(
        self,
        thread_id: str | None = None,
        *,
        identity: str | None = None,
        bearer_only: bool = False,
        min_remaining: float | None = None,
    ) -> Authorization | None:
        """The header from memory, or ``None`` (never does I/O); see ``BrokerClient.cached``."""
        return self._client.cached(
            thread_id, identity=identity, bearer_only=bearer_only, min_remaining=min_remaining
        )

    def report_rejection(
        self,
        rejected: Authorization | str,
        http_status: int = 401,
        *,
        thread_id: str | None = None,
        identity: str | None = None,
    ) -> Authorization:
        """Report a refused header and get its replacement; see ``BrokerClient.report_rejection``.

        Raises:
            BrokerUnavailableError: the broker cannot answer now (retryable).
            InvalidRequestError: ``http_status`` is not 401/403, or the header is not the broker's.
            ClientClosedError: the client was closed.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        return self._call(
            self._client.report_rejection(
                rejected, http_status, thread_id=thread_id, identity=identity
            ),
            self._timeout,
        )

    @property
    def stats(self) -> ClientStats:
        """Counters since the client was created."""
        return self._client.stats

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """End the watch streams, close the channel and stop the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._call(self._shutdown(), _JOIN_SECONDS)
        finally:
            self._stop_loop()

    async def _shutdown(self) -> None:
        await self._client.aclose()
        # grpc.aio delivers completions to each call's loop from one process-wide poller; give the
        # completions of the calls just cancelled time to land before this loop is closed (a late
        # one meeting a closed loop is logged as an error by whichever loop the poller serves).
        await asyncio.sleep(_DRAIN_SECONDS)
        # grpc.aio may leave bookkeeping tasks behind; end them as asyncio.run() would, so that no
        # task is destroyed pending when the loop closes.
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=_JOIN_SECONDS)
        await self._loop.shutdown_asyncgens()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_JOIN_SECONDS)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
