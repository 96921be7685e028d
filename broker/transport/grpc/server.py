"""Assemble the grpc.aio server: the broker service, health (per dependency) and reflection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.transport.grpc.interceptors import LoggingInterceptor
from broker.transport.grpc.servicer import BrokerServicer

BROKER_SERVICE: Final = pb.DESCRIPTOR.services_by_name["CredentialBroker"].full_name
# Health service names for the dependencies; "" is the broker's overall readiness.
STORE_HEALTH: Final = "credential-broker.store"
CONTROLPLANE_HEALTH: Final = "credential-broker.controlplane"
# Requests are a few hundred bytes; anything near this is abuse.
MAX_RECEIVE_MESSAGE_BYTES: Final = 64 * 1024


def build_server(
    servicer: BrokerServicer,
    health_servicer: health.aio.HealthServicer,
    *,
    on_completed: Callable[[str, str, float], None] | None = None,
    extra_services: Sequence[str] = (),
) -> grpc.aio.Server:
    """A grpc.aio server with every service added and no port bound yet."""
    server = grpc.aio.server(
        interceptors=[LoggingInterceptor(on_completed)],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_CredentialBrokerServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            BROKER_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
            *extra_services,
        ],
        server,
    )
    return server
