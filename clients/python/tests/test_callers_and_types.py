"""Caller authentication from the client's side, and the proto enum tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from broker_harness import running_harness

from credential_broker_client import (
    BrokerClient,
    CallerDeniedError,
    FallbackReason,
    Scheme,
    TaskKind,
)
from credential_broker_client._convert import _FALLBACKS, _SCHEMES, _TASK_KINDS
from credential_broker_client._proto.credential_broker.v1 import broker_pb2 as pb

_TOKEN = "worker-token-0123456789"
_CALLERS = f"""
[callers.worker]
token_sha256 = "{hashlib.sha256(_TOKEN.encode()).hexdigest()}"
"""


class TestCallerToken:
    async def test_token_admits_the_worker(self, tmp_path: Path) -> None:
        """With callers configured, the caller token gets a header; no token is UNAUTHENTICATED."""
        with running_harness(tmp_path, config=_CALLERS) as harness:
            async with BrokerClient(harness.address, caller_token=_TOKEN) as client:
                auth = await client.get_authorization()
            async with BrokerClient(harness.address) as anonymous:
                with pytest.raises(CallerDeniedError) as caught:
                    await anonymous.get_authorization()

        assert auth.scheme is Scheme.AGENT_ASSERTION
        assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED


class TestEnumTables:
    @pytest.mark.parametrize(
        ("proto_enum", "table", "catch_all"),
        [
            ("Scheme", _SCHEMES, Scheme.UNSPECIFIED),
            ("TaskKind", _TASK_KINDS, TaskKind.UNSPECIFIED),
            ("FallbackReason", _FALLBACKS, FallbackReason.UNKNOWN),
        ],
    )
    def test_every_proto_value_has_a_client_member(
        self, proto_enum: str, table: object, catch_all: object
    ) -> None:
        """Each value the proto defines maps to a member of its own (the catch-all is for newer brokers)."""
        numbers = [v.number for v in pb.DESCRIPTOR.enum_types_by_name[proto_enum].values]

        assert isinstance(table, dict)
        assert sorted(table) == sorted(numbers)
        assert catch_all not in [table[n] for n in numbers if n != 0]
