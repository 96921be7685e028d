"""WatchAuthorization fan-out: one refresher per key, slow watchers never block, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from cb_emulator import Emulator
from tests.fixtures.broker import StartBroker

pytestmark = pytest.mark.integration

SHORT_TTL = {"BROKER_ASSERTION_TTL": "3", "BROKER_REFRESH_MARGIN": "1.5"}
PUSHES = 20
PUSH_DEADLINE_S = 5.0  # per push, for every live watcher; a push normally takes milliseconds
GRPC_PREFIX = 5  # gRPC length-prefixed message: 1 flag byte + 4 length bytes
WIDE_OPEN = 1 << 20
WAIT_S = 10.0  # any single wait on the raw stream
WATCH_PATH = "/credential_broker.v1.CredentialBroker/WatchAuthorization"

# HTTP/2 (RFC 9113 §6) frame types, flags and settings used by StalledWatch.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM = _ACK = 0x1
_END_HEADERS, _PADDED = 0x4, 0x8
_ENABLE_PUSH, _INITIAL_WINDOW_SIZE = 0x2, 0x4
_STREAM = 1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return head + payload


def _header(name: str, value: str) -> bytes:
    """HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2).

    It touches no compression table, so the request needs no HPACK state at all; the server's
    response headers are never decoded (only DATA matters here).
    """
    encoded = b"\x00"
    for text in (name.encode(), value.encode()):
        assert len(text) < 0x7F, "one-byte HPACK length prefix (RFC 7541 §5.1)"
        encoded += bytes([len(text)]) + text
    return encoded


class StalledWatch:
    """One WatchAuthorization stream on a hand-driven HTTP/2 connection that grants credit on cue.

    HTTP/2 flow control (RFC 9113 §5.2, §6.9) lets a receiver hold a sender back by withholding
    WINDOW_UPDATE. This client announces SETTINGS_INITIAL_WINDOW_SIZE 0 and grants credit only in
    :meth:`grant`, while a task reads the socket continuously: the kernel's TCP buffers never fill,
    so the only thing holding the server back is the HTTP/2 window, and the server can put exactly
    the granted number of bytes on the stream. A gRPC client that merely stops reading is no such
    test: the library sizes and grows its receive window (64 KiB and up), so the server's writes to
    it do not block until that much has been pushed.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.data = bytearray()  # every DATA payload byte of the stream, in order
        self.messages: list[pb.WatchAuthorizationResponse] = []
        self.ended = False  # trailers, RST_STREAM, GOAWAY or EOF seen
        self._parsed = 0
        self._pongs: set[bytes] = set()
        self._changed = asyncio.Condition()
        self._frames: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, address: str) -> StalledWatch:
        """Connect to ``host:port`` and start the watch with zero credit."""
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        watch = cls(reader, writer)
        settings = b"".join(
            key.to_bytes(2, "big") + (0).to_bytes(4, "big")
            for key in (_ENABLE_PUSH, _INITIAL_WINDOW_SIZE)
        )
        headers = b"".join(
            _header(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", WATCH_PATH),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        request = pb.WatchAuthorizationRequest().SerializeToString()
        body = b"\x00" + len(request).to_bytes(4, "big") + request
        writer.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_HEADERS, _END_HEADERS, _STREAM, headers)
            + _frame(_DATA, _END_STREAM, _STREAM, body)
        )
        await writer.drain()
        watch._frames = asyncio.get_running_loop().create_task(watch._read_frames())
        return watch

    def grant(self, size: int) -> None:
        """Let the server send ``size`` more bytes on the stream (and on the connection)."""
        increment = size.to_bytes(4, "big")
        self._writer.write(
            _frame(_WINDOW_UPDATE, 0, 0, increment) + _frame(_WINDOW_UPDATE, 0, _STREAM, increment)
        )

    async def read_first(self) -> pb.WatchAuthorizationResponse:
        """Grant the first message's 5-byte prefix, then exactly its length; return the message."""
        self.grant(GRPC_PREFIX)
        await self.until(lambda: len(self.data) >= GRPC_PREFIX)
        self.grant(int.from_bytes(self.data[1:GRPC_PREFIX], "big"))
        await self.until(lambda: len(self.messages) == 1)
        return self.messages[0]

    async def ping(self) -> None:
        """A PING round trip: every frame the server wrote before its answer has been read."""
        opaque = b"barrier!"
        self._writer.write(_frame(_PING, 0, 0, opaque))
        await self.until(lambda: opaque in self._pongs)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (at most WAIT_S) for ``predicate`` over what has arrived; fail if the stream ends."""

        def reached() -> bool:
            return self.ended or predicate()

        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(reached)
        assert predicate(), "the stalled stream ended"

    async def close(self) -> None:
        if self._frames is not None:
            self._frames.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._frames
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(self._writer.wait_closed(), 5)

    async def _read_frames(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(9)
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
                payload = await self._reader.readexactly(int.from_bytes(head[:3], "big"))
                self._on_frame(kind, flags, stream, payload)
                async with self._changed:
                    self._changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended = True
            async with self._changed:
                self._changed.notify_all()

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == _SETTINGS and not flags & _ACK:
            self._writer.write(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING:
            if flags & _ACK:
                self._pongs.add(payload)
            else:
                self._writer.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _DATA and stream == _STREAM:
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            self.data += payload
            self._split_messages()
        if kind == _GOAWAY or (
            stream == _STREAM
            and (kind == _RST_STREAM or (kind in (_DATA, _HEADERS) and flags & _END_STREAM))
        ):
            self.ended = True

    def _split_messages(self) -> None:
        while len(self.data) - self._parsed >= GRPC_PREFIX:
            start = self._parsed + GRPC_PREFIX
            end = start + int.from_bytes(self.data[self._parsed + 1 : start], "big")
            if len(self.data) < end:
                return
            self.messages.append(
                pb.WatchAuthorizationResponse.FromString(bytes(self.data[start:end]))
            )
            self._parsed = end


async def eventually(predicate: Callable[[], bool], attempts: int = 1000) -> None:
    """Poll a cheap in-process predicate until it holds (at most ``attempts`` times 10 ms)."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


class TestFanOut:
    async def test_watchers_share_one_refresher(self, start_broker: StartBroker) -> None:
        """Fifty watch streams of one key run one refresher and all get the same header."""
        broker = await start_broker()
        calls = [broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest()) for _ in range(50)]
        firsts = await asyncio.gather(*(asyncio.wait_for(c.read(), 10) for c in calls))
        assert len({f.authorization.header_value for f in firsts}) == 1
        hub = broker.app.authorizer.watch_hub
        assert hub.topics == 1
        assert hub.watchers == 50
        for call in calls:
            call.cancel()
        await eventually(lambda: hub.topics == 0)

    async def test_stalled_watcher_does_not_hold_back_the_others(
        self, start_broker: StartBroker
    ) -> None:
        """A watcher whose flow-control window is shut stalls its own stream and nothing else.

        The stalled stream is granted exactly its first header's bytes, then nothing. Every forced
        refresh (RevokeTask: a new task, so a new header) must reach each other watcher within the
        deadline, while the server owes the stalled stream every one of those headers and cannot put
        a byte of them on the wire. The broker keeps no per-watcher backlog (watch.py: latest value
        wins), so once credit returns the stalled stream gets the header its write was parked on and
        then the latest, not the pushes in between.
        """
        broker = await start_broker()
        admin = apb_grpc.CredentialBrokerAdminStub(broker.channel)
        hub = broker.app.authorizer.watch_hub
        stalled = await StalledWatch.open(broker.app.address)
        live: list[grpc.aio.UnaryStreamCall[Any, pb.WatchAuthorizationResponse]] = []
        try:
            first = (await stalled.read_first()).authorization
            granted = len(stalled.data)
            # The credit was exactly one message: the window left is zero, so every push overflows it.
            assert granted == GRPC_PREFIX + stalled.messages[0].ByteSize()
            live = [
                broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest()) for _ in range(3)
            ]
            for call in live:
                assert (await asyncio.wait_for(call.read(), 10)).authorization == first
            assert (hub.topics, hub.watchers) == (1, 4)

            pushed: list[pb.Authorization] = []
            owed = 0  # bytes the server had to send the stalled stream
            for push in range(PUSHES):
                revoked = await admin.RevokeTask(apb.RevokeTaskRequest(), timeout=5)
                try:
                    got = await asyncio.gather(
                        *(asyncio.wait_for(call.read(), PUSH_DEADLINE_S) for call in live)
                    )
                except TimeoutError:
                    pytest.fail(f"push {push + 1} missed the {PUSH_DEADLINE_S:g} s deadline")
                header = got[0].authorization
                assert header.task_id != revoked.task_id
                assert all(message == got[0] for message in got)
                pushed.append(header)
                owed += GRPC_PREFIX + got[0].ByteSize()
            assert len({header.header_value for header in [first, *pushed]}) == PUSHES + 1

            # The stall is real: after a PING round trip (HTTP/2 frames keep their order on a
            # connection) not one byte beyond the granted credit has arrived, the stream is still
            # open and the hub still counts it: stalled, not dropped.
            await stalled.ping()
            beyond = len(stalled.data) - granted
            assert beyond == 0, f"{beyond} of {owed} owed bytes arrived beyond the granted credit"
            assert not stalled.ended
            assert hub.watchers == 4

            # Credit returns. The write parked on push 1 completes, then the stream's generator
            # finds the hub at push PUSHES and skips everything between: no backlog was kept.
            stalled.grant(WIDE_OPEN)
            await stalled.until(lambda: stalled.messages[-1].authorization == pushed[-1])
            caught_up = [message.authorization.task_id for message in stalled.messages[1:]]
            assert caught_up == [pushed[0].task_id, pushed[-1].task_id]
        finally:
            for call in live:
                call.cancel()
            await stalled.close()

    async def test_invalid_watch_fails_at_once(self, start_broker: StartBroker) -> None:
        """A malformed watch request ends with INVALID_ARGUMENT before any value."""
        broker = await start_broker()
        call = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest(thread_id="bad id"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_thread_watch_unavailable(
        self, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """A thread watch whose task cannot be registered ends with UNAVAILABLE."""
        emulator.inject_fault("register_task", status=503, count=50)
        broker = await start_broker()
        call = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest(thread_id="t"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


class TestShutdown:
    async def test_stop_ends_streams_cleanly(self, start_broker: StartBroker) -> None:
        """Stopping the broker ends open watch streams with OK, well inside the grace period."""
        broker = await start_broker()
        call = broker.stub.WatchAuthorization(pb.WatchAuthorizationRequest())
        await asyncio.wait_for(call.read(), 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await broker.app.stop(grace=5.0)
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.OK
        assert loop.time() - started < 4.0
        broker.closed = True
        await broker.channel.close()
