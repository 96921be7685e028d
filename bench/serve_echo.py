"""``python -m bench.serve_echo --response FILE``: the ceiling, on the broker's own stack.

This is :mod:`bench.serve_broker`'s process (emulator, ``BrokerApp`` on the embedded store, the
same ``build_server`` options, interceptor, caller gate, health, reflection, logging and background
tasks) with one difference: ``BrokerApp`` builds an ``EchoServicer``, whose ``GetAuthorization``
returns a fixed response instead of asking the authorizer. The response is the serialized
``GetAuthorizationResponse`` the real broker returned, so the bytes on the wire are the same.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import grpc

import broker.app
from bench import serve_broker
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.transport.grpc.servicer import BrokerServicer


def echo_servicer(response: pb.GetAuthorizationResponse) -> type[BrokerServicer]:
    """A BrokerServicer whose ``GetAuthorization`` answers ``response`` (other RPCs unchanged)."""

    class EchoServicer(BrokerServicer):
        async def GetAuthorization(  # noqa: N802  (named like the RPC)
            self,
            request: pb.GetAuthorizationRequest,
            context: grpc.aio.ServicerContext[
                pb.GetAuthorizationRequest, pb.GetAuthorizationResponse
            ],
        ) -> pb.GetAuthorizationResponse:
            return response

    return EchoServicer


def main() -> None:
    """Entry point."""
    options = serve_broker.parser("python -m bench.serve_echo")
    options.add_argument("--response", type=Path, required=True, help="serialized response")
    args = options.parse_args()
    if args.redis_url:
        options.error("the echo server keeps no state: it takes no --redis-url")
    response = pb.GetAuthorizationResponse.FromString(args.response.read_bytes())
    # The composition root names the servicer class it builds; swap it for this process only.
    with mock.patch.object(broker.app, "BrokerServicer", echo_servicer(response)):
        asyncio.run(serve_broker.run(args))


if __name__ == "__main__":
    main()
