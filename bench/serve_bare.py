"""``python -m bench.serve_bare --response FILE``: the bare stack, the ceiling of any gRPC service.

A grpc.aio server on uvloop (asyncio's loop where uvloop is absent) with one raw handler: no
interceptor, no logging, no servicer class, no serializer. Every call to any method answers the
bytes of ``FILE`` (the serialized ``GetAuthorizationResponse`` the broker returned, so the bytes on
the wire are the same). It imports no broker code: this is what grpc.aio itself costs, and the
broker's warm path is measured against it.

Like the other bench servers it announces its port and answers SIGUSR1 with its OK count
(:mod:`bench._server`), so the harness can check that every request was answered with gRPC OK.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc

from bench._server import serve_until_signalled


class _Answers:
    """Counts the calls it answers (the only per-call work besides grpc's own)."""

    def __init__(self, response: bytes) -> None:
        self._response = response
        self.ok = 0

    async def answer(self, _request: bytes, _context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.ok += 1
        return self._response

    def stats(self) -> dict[str, object]:
        return {"rpcs_by_code": {"OK": self.ok} if self.ok else {}}


class _AnyMethod(grpc.GenericRpcHandler):
    """One unary handler for every method, with bytes in and bytes out."""

    def __init__(self, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        self._handler = handler

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handler


async def serve(response: bytes) -> None:
    """Serve on a free loopback port until SIGTERM/SIGINT."""
    answers = _Answers(response)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (_AnyMethod(grpc.unary_unary_rpc_method_handler(answers.answer)),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await serve_until_signalled(port, answers.stats)
    finally:
        await server.stop(None)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    """Entry point."""
    options = argparse.ArgumentParser(prog="python -m bench.serve_bare")
    options.add_argument("--response", type=Path, required=True, help="the bytes to answer")
    run(serve(options.parse_args().response.read_bytes()))


if __name__ == "__main__":
    main()
