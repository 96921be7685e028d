"""Assemble the grpc.aio server: broker and admin services, health (per dependency), reflection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker._proto.credential_broker.v1 import admin_pb2, admin_pb2_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.transport.grpc.admin import AdminServicer
from broker.transport.grpc.callers import CallerGate
from broker.transport.grpc.interceptors import RpcInterceptor
from broker.transport.grpc.servicer import BrokerServicer

BROKER_SERVICE: Final = pb.DESCRIPTOR.services_by_name["CredentialBroker"].full_name
ADMIN_SERVICE: Final = admin_pb2.DESCRIPTOR.services_by_name["CredentialBrokerAdmin"].full_name
# Health service names for the dependencies; "" is the broker's overall readiness.
STORE_HEALTH: Final = "credential-broker.store"
CONTROLPLANE_HEALTH: Final = "credential-broker.controlplane"
# Requests are a few hundred bytes; anything near this is abuse.
MAX_RECEIVE_MESSAGE_BYTES: Final = 64 * 1024


def build_server(
    servicer: BrokerServicer,
    admin: AdminServicer,
    health_servicer: health.aio.HealthServicer,
    gate: CallerGate,
    *,
    on_completed: Callable[[str, str, float], None] | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server with every service added and no port bound yet."""
    server = grpc.aio.server(
        interceptors=[RpcInterceptor(gate, on_completed)],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_CredentialBrokerServicer_to_server(servicer, server)
    admin_pb2_grpc.add_CredentialBrokerAdminServicer_to_server(admin, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            BROKER_SERVICE,
            ADMIN_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return server
