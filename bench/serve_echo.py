"""``python -m bench.serve_echo --response FILE``: the ceiling, on the broker's own stack.

This is :mod:`bench.serve_broker`'s process (emulator, ``BrokerApp`` on the embedded store, the
same ``build_server`` options, interceptor, caller gate, health, reflection, logging, event loop and
background tasks) with one difference: ``GetAuthorization``'s handler and its warm path answer
fixed bytes instead of asking the authorizer. The bytes are the serialized
``GetAuthorizationResponse`` the real broker returned, so the bytes on the wire are the same. The
distance between this server and the bare stack (:mod:`bench.serve_bare`) is what the broker's
stack costs; the distance between this server and the broker is what the authorizer's warm path
costs.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from bench import serve_broker
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.app import run_event_loop
from broker.core.callers import CallerPolicy
from broker.transport.grpc.prebuilt import PrebuiltGetAuthorization


def echo_handler(response: bytes) -> type[PrebuiltGetAuthorization]:
    """A ``GetAuthorization`` handler that answers ``response`` (the other RPCs are unchanged)."""

    class EchoGetAuthorization(PrebuiltGetAuthorization):
        def warm(self, data: bytes, caller: CallerPolicy) -> bytes | None:
            return response  # the warm path, as the broker's, with no authorizer behind it

        async def get_authorization(
            self, data: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> bytes:
            return response

    return EchoGetAuthorization


def main() -> None:
    """Entry point."""
    options = serve_broker.parser("python -m bench.serve_echo")
    options.add_argument("--response", type=Path, required=True, help="serialized response")
    args = options.parse_args()
    if args.redis_url:
        options.error("the echo server keeps no state: it takes no --redis-url")
    response = args.response.read_bytes()
    pb.GetAuthorizationResponse.FromString(response)  # refuse a file that is not a response
    run_event_loop(serve_broker.run(args, get_authorization=echo_handler(response)))


if __name__ == "__main__":
    main()
