"""The package stands alone, and shares its descriptors with the broker's own stubs."""

from __future__ import annotations

import subprocess
import sys

_NO_SERVER = """
import sys
import credential_broker_client
import credential_broker_client.httpx_auth
import credential_broker_client.requests_auth
server = sorted(m for m in sys.modules if m == "broker" or m.startswith("broker."))
assert not server, server
"""


class TestPackaging:
    def test_imports_without_the_server_package(self) -> None:
        """Importing the client (and both plug-ins) loads nothing of the broker's code."""
        done = subprocess.run(
            [sys.executable, "-c", _NO_SERVER], capture_output=True, text=True, timeout=60
        )

        assert done.returncode == 0, done.stderr

    def test_descriptors_match_the_brokers(self) -> None:
        """Client and broker stubs register one identical file, so one process can import both."""
        from broker._proto.credential_broker.v1 import broker_pb2 as server_pb

        from credential_broker_client._proto.credential_broker.v1 import broker_pb2 as client_pb

        assert client_pb.DESCRIPTOR.name == server_pb.DESCRIPTOR.name
        assert client_pb.DESCRIPTOR.serialized_pb == server_pb.DESCRIPTOR.serialized_pb
        assert client_pb.Authorization.DESCRIPTOR is server_pb.Authorization.DESCRIPTOR
        client_class: object = client_pb.Authorization
        assert client_class is server_pb.Authorization
