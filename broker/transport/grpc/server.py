"""Assemble the grpc.aio server: broker and admin services, health (per dependency), reflection.

Every service is served through the :class:`RpcInterceptor`, the server's only handler, and none as
a grpc "registered method": grpc.aio's serving loop keeps one pending request per registered method
and waits on all of them (``asyncio.wait``) for every call it accepts, which made that wait, over
the broker's fourteen methods, the largest single cost of a warm ``GetAuthorization``. Unregistered
methods share one pending request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from broker._proto.credential_broker.v1 import admin_pb2, admin_pb2_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.transport.grpc.admin import AdminServicer
from broker.transport.grpc.callers import CallerGate
from broker.transport.grpc.interceptors import RpcInterceptor
from broker.transport.grpc.prebuilt import PrebuiltGetAuthorization
from broker.transport.grpc.servicer import BrokerServicer
from broker.transport.grpc.tally import RpcTally

BROKER_SERVICE: Final = pb.DESCRIPTOR.services_by_name["CredentialBroker"].full_name
ADMIN_SERVICE: Final = admin_pb2.DESCRIPTOR.services_by_name["CredentialBrokerAdmin"].full_name
# Health service names for the dependencies; "" is the broker's overall readiness.
STORE_HEALTH: Final = "credential-broker.store"
CONTROLPLANE_HEALTH: Final = "credential-broker.controlplane"
# Requests are a few hundred bytes; anything near this is abuse.
MAX_RECEIVE_MESSAGE_BYTES: Final = 64 * 1024


class _Registrar:
    """What a generated ``add_*Servicer_to_server`` registers with: the method handlers go to the
    interceptor; nothing reaches the server itself (see the module docstring)."""

    def __init__(self, interceptor: RpcInterceptor) -> None:
        self._interceptor = interceptor

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        for handler in handlers:
            self._interceptor.add_generic(handler)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._interceptor.add_service(service, handlers)


def build_server(
    servicer: BrokerServicer,
    admin: AdminServicer,
    health_servicer: health.aio.HealthServicer,
    gate: CallerGate,
    *,
    rpcs: RpcTally,
    get_authorization: PrebuiltGetAuthorization | None = None,
    access_log_sample: int = 0,
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """A grpc.aio server with every service added and no port bound yet.

    Every RPC is counted in ``rpcs``; one successful RPC in ``access_log_sample`` writes an
    ``rpc.completed`` line (0: none; failed RPCs always do). ``get_authorization``, when given,
    serves ``GetAuthorization`` instead of ``servicer`` (prebuilt response bytes).

    ``reuse_port`` lets the workers of one supervisor share the port; otherwise SO_REUSEPORT, which
    grpc turns on by default on Linux, stays off so that a second broker on a taken port fails.
    """
    interceptor = RpcInterceptor(gate, rpcs, access_log_sample=access_log_sample)
    server = grpc.aio.server(
        handlers=[interceptor],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    # The generated functions only call the two methods _Registrar has.
    services = cast("grpc.aio.Server", _Registrar(interceptor))
    pb_grpc.add_CredentialBrokerServicer_to_server(servicer, services)
    if get_authorization is not None:
        interceptor.add_service(
            BROKER_SERVICE,
            {"GetAuthorization": get_authorization.handler()},
            warm={"GetAuthorization": get_authorization.warm},
        )
    admin_pb2_grpc.add_CredentialBrokerAdminServicer_to_server(admin, services)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    names = [
        BROKER_SERVICE,
        ADMIN_SERVICE,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    # What reflection.enable_server_reflection does for a grpc.aio server (its stub is untyped).
    add_reflection = cast(
        "Callable[[object, grpc.aio.Server], None]",
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
    )
    add_reflection(reflection.aio.ReflectionServicer(names), services)
    return server
