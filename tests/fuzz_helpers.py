"""Shared pieces of the adversarial-input tests (``tests/integration/test_fuzz_*.py``).

Hypothesis drives synchronous test functions, while the broker, the emulator and every client live on
the pytest-asyncio event loop of the test. :func:`run_property` runs a ``@given`` function in a worker
thread and :class:`LoopBridge` sends each example's coroutine back to the test's loop with a hard
deadline, so one broker serves every example of a property and a hang fails the property instead of
the whole run.

Also here: protobuf wire encoding by hand (for messages no protobuf library would produce), string
strategies with the characters that break parsers, and a raw HTTP responder for responses the emulator
cannot send (non-UTF-8 bytes, bodies trickled byte by byte, broken HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from hypothesis import strategies as st

T = TypeVar("T")

OK = grpc.StatusCode.OK
# The statuses the broker may answer with (README "Errors"); UNKNOWN and INTERNAL are bugs.
PRECISE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
RECEIVE_LIMIT = 64 * 1024
"""The broker's ``grpc.max_receive_message_length``."""


# -- running hypothesis against objects that live on the test's event loop ------------------------


class LoopBridge:
    """Runs coroutines on ``loop`` from another thread, each under a hard deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """The coroutine's result; an AssertionError when it has none within ``timeout`` s."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise AssertionError(f"no outcome within {timeout} s: a hang") from None


async def run_property(test: Callable[[], None]) -> None:
    """Run a hypothesis test (a ``@given`` function) in a worker thread, keeping this loop free."""
    await asyncio.to_thread(test)


@dataclass
class Tally:
    """Cases tried by one property, by outcome, plus free-form notes; printed at the end (``-s``)."""

    name: str
    outcomes: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str) -> None:
        """Count one case with its outcome."""
        self.outcomes[outcome] += 1

    def note(self, label: str) -> None:
        """Count something about a case (how it was made, ...) without counting a case."""
        self.notes[label] += 1

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def report(self) -> str:
        outcomes = ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        line = f"[fuzz] {self.name}: {self.total} cases ({outcomes})"
        if self.notes:
            line += "; " + ", ".join(f"{k}={v}" for k, v in sorted(self.notes.items()))
        print(line)  # noqa: T201  (the case counts are part of the test's report)
        return line


def mostly(
    usual: st.SearchStrategy[T], rare: st.SearchStrategy[T], one_in: int = 3
) -> st.SearchStrategy[T]:
    """``rare`` about once in ``one_in`` draws, ``usual`` otherwise (shrinks towards ``rare``)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == 0 else usual)


# -- protobuf wire format by hand -----------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as their 64-bit two's complement (as int32/int64 are)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message) holding raw ``payload``."""
    return tag(number, LEN) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


@st.composite
def unknown_fields(draw: st.DrawFn, known: Sequence[int] = ()) -> bytes:
    """One or more well-formed fields with numbers the message does not declare."""
    numbers = st.integers(1, (1 << 29) - 1).filter(
        lambda n: n not in known and not 19000 <= n <= 19999
    )
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        number = draw(numbers)
        kind = draw(st.sampled_from([VARINT, I64, LEN, I32]))
        if kind == VARINT:
            out += varint_field(number, draw(st.integers(-(1 << 63), (1 << 64) - 1)))
        elif kind == I64:
            out += tag(number, I64) + draw(st.binary(min_size=8, max_size=8))
        elif kind == I32:
            out += tag(number, I32) + draw(st.binary(min_size=4, max_size=4))
        else:
            out += len_field(number, draw(st.binary(max_size=64)))
    return out


INVALID_UTF8: Sequence[bytes] = (
    b"\xff",
    b"\xc3\x28",  # a broken two-byte sequence
    b"\xe2\x82",  # a truncated three-byte sequence
    b"\xed\xa0\x80",  # an encoded surrogate (CESU-8)
    b"\xc0\xaf",  # an overlong '/'
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"abc\x80def",
)


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    """Bytes that are not UTF-8: a known-bad sequence inside arbitrary bytes."""
    bad = draw(st.sampled_from(INVALID_UTF8))
    return draw(st.binary(max_size=16)) + bad + draw(st.binary(max_size=16))


# -- strings that break parsers -------------------------------------------------------------------

NASTY: Sequence[str] = (
    "",
    " ",
    "\x00",
    "\t",
    "\r\n",
    "\x7f",
    "default",
    " default",
    "default\n",
    "DEFAULT",
    "default\x00",
    "*",
    ".",
    "..",
    "../../etc/passwd",
    "a/b",
    "%00",
    "%s%s%n",
    "${jndi:ldap://127.0.0.1/x}",
    "é",
    "\u202edefault",
    "\ufeffdefault",
    "\u0430",  # Cyrillic a
    "🙂",
    "x" * 64,
    "x" * 65,
    "t" * 256,
    "t" * 257,
    "Bearer x",
    "AgentAssertion x",
    "AgentAssertion ",
    "null",
    "{}",
    "-1",
)


def near_limit_text(limit: int = RECEIVE_LIMIT) -> st.SearchStrategy[str]:
    """Strings whose UTF-8 size is near ``limit``, built from a short drawn unit (cheap to shrink)."""
    unit = st.text(min_size=1, max_size=4)
    size = st.one_of(st.integers(limit - 64, limit + 64), st.integers(limit // 2, limit * 2))

    def build(piece: str, target: int) -> str:
        encoded = piece.encode("utf-8")
        return piece * max(1, target // len(encoded))

    return st.builds(build, unit, size)


def nasty_text(max_size: int = 300) -> st.SearchStrategy[str]:
    """Any valid unicode, with control characters and parser-breaking values over-represented."""
    return st.one_of(
        st.sampled_from(NASTY),
        st.text(max_size=max_size),
        st.text(st.characters(codec="ascii"), max_size=max_size),
        st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co"]), max_size=20),
        st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=20)),
    )


def huge_or_nasty(max_size: int = 300) -> st.SearchStrategy[str]:
    """:func:`nasty_text`, and about one time in ten a string near the 64 KiB receive limit."""
    return mostly(nasty_text(max_size), near_limit_text(), one_in=10)


# -- a raw HTTP responder -------------------------------------------------------------------------


@dataclass(frozen=True)
class RawResponse:
    """What :class:`RawHttpServer` writes: ``chunks`` with ``pause`` seconds before each, then
    closes the connection (``Connection: close`` semantics)."""

    chunks: Sequence[bytes]
    pause: float = 0.0


class RawHttpServer:
    """A loopback HTTP/1.1 server that answers every request with one programmed :class:`RawResponse`.

    It reads a request line, headers and a ``Content-Length`` body, counts the request by path, and
    writes the response bytes exactly as given (status line and headers included), however wrong.
    """

    def __init__(self) -> None:
        self.response = RawResponse([b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"])
        self.requests: Counter[str] = Counter()
        self.connections = 0
        """Connections accepted: one per attempt, since every answer closes its connection."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        """Listen on 127.0.0.1:0; return ``http://127.0.0.1:<port>``."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            if length:
                await reader.readexactly(length)
            self.requests[path] += 1
            response = self.response
            for chunk in response.chunks:
                if response.pause:
                    await asyncio.sleep(response.pause)
                writer.write(chunk)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def http_response(status_line: bytes, body: bytes, headers: Sequence[bytes] = ()) -> bytes:
    """A complete HTTP/1.1 response with a correct ``Content-Length``."""
    head = [status_line, *headers, b"Content-Length: " + str(len(body)).encode(), b"", b""]
    return b"\r\n".join(head) + body


async def first_of(awaitable: Awaitable[T]) -> T:
    """``await awaitable`` (a helper so lambdas can build coroutines for :class:`LoopBridge`)."""
    return await awaitable


# -- a bare HTTP/2 client: header bytes no gRPC client would send ---------------------------------

# RFC 7541 Appendix A.
HPACK_STATIC: Sequence[tuple[bytes, bytes]] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
]
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 4, 6, 7, 9
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as "literal without indexing, new name", no Huffman: the bytes go as they are."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _read_int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _read_string(block: bytes, pos: int) -> tuple[bytes | None, int]:
    """A string literal; ``None`` for a Huffman-coded one (this decoder has no Huffman table)."""
    huffman = block[pos] & 0x80
    length, pos = _read_int(block, pos, 7)
    return (None if huffman else block[pos : pos + length]), pos + length


def hpack_decode(
    block: bytes, table: list[tuple[bytes | None, bytes | None]]
) -> list[tuple[bytes | None, bytes | None]]:
    """Decode a header block (``table`` is the connection's dynamic table, updated in place);
    Huffman-coded strings come out as ``None``."""
    headers: list[tuple[bytes | None, bytes | None]] = []
    pos = 0

    def entry(index: int) -> tuple[bytes | None, bytes | None]:
        if index <= len(HPACK_STATIC):
            return HPACK_STATIC[index - 1]
        return table[index - len(HPACK_STATIC) - 1]

    while pos < len(block):
        byte = block[pos]
        if byte & 0x80:  # indexed
            index, pos = _read_int(block, pos, 7)
            headers.append(entry(index))
        elif byte & 0xE0 == 0x20:  # dynamic table size update
            _, pos = _read_int(block, pos, 5)
        else:
            indexing = byte & 0xC0 == 0x40
            index, pos = _read_int(block, pos, 6 if indexing else 4)
            name: bytes | None
            if index:
                name = entry(index)[0]
            else:
                name, pos = _read_string(block, pos)
            value, pos = _read_string(block, pos)
            headers.append((name, value))
            if indexing:
                table.insert(0, (name, value))
    return headers


@dataclass
class H2Outcome:
    """How the server ended stream 1: ``rst`` (with an error code), ``end`` (with the gRPC status
    when it could be decoded), ``goaway`` (with an error code), or ``none`` (the peer closed)."""

    ending: str
    code: int | None = None
    grpc_status: int | None = None
    grpc_message: bytes = b""


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


async def h2_unary(
    host: str, port: int, path: str, headers: Sequence[tuple[bytes, bytes]], message: bytes
) -> H2Outcome:
    """One gRPC unary call over a fresh cleartext HTTP/2 connection, headers sent byte for byte.

    No validation of any kind on the way out: header names and values can hold any byte.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        block = b"".join(
            hpack_literal(name, value)
            for name, value in (
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.encode()),
                (b":authority", f"{host}:{port}".encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                *headers,
            )
        )
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        writer.write(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(_SETTINGS, 0, 0, b"")
            + _frame(_HEADERS, _END_HEADERS, 1, block)
            + _frame(_DATA, _END_STREAM, 1, body)
        )
        await writer.drain()
        table: list[tuple[bytes | None, bytes | None]] = []
        pending = b""
        received: list[tuple[bytes | None, bytes | None]] = []
        while True:
            try:
                head = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
            except (asyncio.IncompleteReadError, ConnectionError):
                return H2Outcome("none")
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            if kind == _SETTINGS and not flags & _ACK:
                writer.write(_frame(_SETTINGS, _ACK, 0, b""))
            elif kind == _PING and not flags & _ACK:
                writer.write(_frame(_PING, _ACK, 0, payload))
            elif kind == _GOAWAY:
                return H2Outcome("goaway", int.from_bytes(payload[4:8], "big"))
            elif stream == 1 and kind == _RST_STREAM:
                return H2Outcome("rst", int.from_bytes(payload[:4], "big"))
            elif stream == 1 and kind in (_HEADERS, _CONTINUATION):
                if kind == _HEADERS and flags & 0x8:  # PADDED
                    payload = payload[1 : len(payload) - payload[0]]
                if kind == _HEADERS and flags & 0x20:  # PRIORITY
                    payload = payload[5:]
                pending += payload
                if flags & _END_HEADERS:
                    received += hpack_decode(pending, table)
                    pending = b""
                if flags & _END_STREAM:
                    found = dict(received)
                    status = found.get(b"grpc-status")
                    return H2Outcome(
                        "end",
                        grpc_status=int(status) if status is not None else None,
                        grpc_message=found.get(b"grpc-message") or b"",
                    )
            elif stream == 1 and kind == _DATA and flags & _END_STREAM:
                return H2Outcome("end")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
