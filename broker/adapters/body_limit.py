"""Reading an HTTP response body with a size limit: how every adapter reads a body from the network.

The peer decides how much it sends; the broker decides how much it reads. :func:`read_limited`
reads a response opened with ``stream=True``:

- a declared ``Content-Length`` above the limit is refused before any of the body is read;
- otherwise the body is read chunk by chunk and reading stops at the first chunk that passes the
  limit, so at most the limit plus one network read (64 KiB) is ever held;
- ``gzip`` and ``deflate`` are inflated here, with the same limit on the inflated size, instead of by
  httpx (whose decoders inflate a whole chunk at once: a 64 KiB chunk of a crafted gzip body becomes
  64 MiB before any limit can look at it). Other codings pass through undecoded, as httpx leaves
  them; more than one coding is refused.

Past the limit a *strict* read raises :class:`BodyTooLargeError` (a body that must be complete, such
as a JSON document); a lenient read returns the first ``limit`` bytes (an error body kept as an
excerpt). Adapters translate :class:`BodyTooLargeError` into their domain error at their edge.
"""

from __future__ import annotations

import zlib
from typing import Final

import httpx

__all__ = ["BodyTooLargeError", "read_limited"]

_INFLATED: Final = frozenset({"gzip", "x-gzip", "deflate"})


class BodyTooLargeError(Exception):
    """A response body is larger than the reader's limit.

    Attributes:
        limit: the limit, in bytes.
        declared: the ``Content-Length`` the peer announced, if it announced one above the limit.
    """

    def __init__(self, limit: int, *, declared: int | None = None) -> None:
        self.limit = limit
        self.declared = declared
        announced = f" (Content-Length {declared})" if declared is not None else ""
        super().__init__(f"the response body exceeds the {limit}-byte limit{announced}")


class _Inflater:
    """Inflates one ``gzip`` or ``deflate`` body, never producing more than asked for."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._raw_fallback = coding == "deflate"  # RFC 9110 says zlib; some servers send raw
        wbits = zlib.MAX_WBITS | 16 if coding != "deflate" else zlib.MAX_WBITS
        self._zlib = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes, room: int) -> bytes:
        """Up to ``room`` bytes inflated from ``data`` (more input stays unread: the caller stops)."""
        try:
            out = self._zlib.decompress(data, room)
        except zlib.error as exc:
            if not (self._raw_fallback and not self._started):
                raise httpx.DecodingError(
                    f"the {self._coding} response body does not inflate ({exc})"
                ) from None
            self._raw_fallback = False
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.feed(data, room)
        self._started = True
        return out


def _inflater(response: httpx.Response) -> _Inflater | None:
    codings = [
        c.strip().lower()
        for c in response.headers.get("Content-Encoding", "").split(",")
        if c.strip() and c.strip().lower() != "identity"
    ]
    if len(codings) > 1:
        raise httpx.DecodingError(
            f"the response body has {len(codings)} content codings; at most one is accepted"
        )
    return _Inflater(codings[0]) if codings and codings[0] in _INFLATED else None


async def read_limited(response: httpx.Response, *, limit: int, strict: bool = True) -> bytes:
    """The body of a streamed ``response``, read up to ``limit`` bytes (decoded and on the wire).

    The caller still owns the response and closes it (``await response.aclose()``); closing one
    that was not read to its end discards the connection instead of reusing it.

    Args:
        response: a response from ``client.send(request, stream=True)``.
        limit: the most bytes to accept, before and after inflating.
        strict: past the limit, raise (``True``) or return the first ``limit`` bytes.

    Raises:
        BodyTooLargeError: ``strict`` and the body is larger than ``limit``.
        httpx.DecodingError: a compressed body does not inflate, or has several codings.
        httpx.HTTPError: the transport failed while reading.
    """
    declared = response.headers.get("Content-Length", "").strip()
    if strict and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit, declared=int(declared))
    inflater = _inflater(response)
    content = bytearray()
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        room = limit - len(content) + 1
        content += inflater.feed(chunk, room) if inflater is not None else chunk[:room]
        if len(content) > limit or received > limit:
            if strict:
                raise BodyTooLargeError(limit)
            break
    return bytes(content[:limit])
