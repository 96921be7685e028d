"""The client commands: ``get-authorization`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.core.protocol.assertion import parse_assertion, verify_assertion
from broker.core.protocol.keys import parse_ssh_public_key
from broker.errors import ProtocolError


def _out(text: str) -> None:
    print(text, flush=True)  # noqa: T201  (command output)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201  (command output)


def _render(authorization: pb.Authorization, header_only: bool) -> str:
    if header_only:
        return authorization.header_value
    return json.dumps(
        MessageToDict(authorization, preserving_proto_field_name=True), sort_keys=True
    )


async def get_authorization(args: argparse.Namespace) -> int:
    """Ask a broker for a header (or stream them with ``--watch``) and print it."""
    mode = pb.MODE_BEARER_ONLY if args.bearer_only else pb.MODE_DEFAULT
    async with grpc.aio.insecure_channel(args.broker) as channel:
        stub = pb_grpc.CredentialBrokerStub(channel)
        try:
            if args.watch:
                request = pb.WatchAuthorizationRequest(
                    identity=args.identity, thread_id=args.thread, mode=mode
                )
                async for update in stub.WatchAuthorization(request):
                    _out(_render(update.authorization, args.header_only))
                return 0
            response = await stub.GetAuthorization(
                pb.GetAuthorizationRequest(
                    identity=args.identity, thread_id=args.thread, mode=mode
                ),
                timeout=args.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            _err(f"credential-broker: {exc.code().name}: {exc.details()}")
            return 1
    _out(_render(response.authorization, args.header_only))
    return 0


async def _public_key_from_broker(address: str, identity: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CredentialBrokerStub(channel)
        response = await stub.GetIdentity(pb.GetIdentityRequest(identity=identity), timeout=10)
        return response.identity.public_key_ssh


async def inspect_header(args: argparse.Namespace) -> int:
    """Decode an assertion header and, given a public key or a broker, verify it."""
    header = sys.stdin.readline() if args.header == "-" else args.header
    header = header.strip().removeprefix("Authorization:").strip()
    try:
        envelope = parse_assertion(header)
    except ProtocolError as exc:
        _err(f"credential-broker: not an AgentAssertion header: {exc.message}")
        return 1
    report: dict[str, Any] = {
        "agent_runtime_id": envelope.agent_runtime_id,
        "task_id": envelope.task_id,
        "timestamp": envelope.timestamp,
    }
    try:
        age = (datetime.now(UTC) - envelope.issued_at()).total_seconds()
        report["age_seconds"] = round(age, 1)
    except ProtocolError as exc:
        report["timestamp_error"] = exc.message
    public_key = args.public_key
    if public_key is None and args.broker:
        try:
            public_key = await _public_key_from_broker(args.broker, args.identity)
        except grpc.aio.AioRpcError as exc:
            _err(f"credential-broker: {exc.code().name}: {exc.details()}")
            return 1
    if public_key:
        try:
            verify_assertion(envelope, parse_ssh_public_key(public_key))
            report["verified"] = True
        except ProtocolError as exc:
            report["verified"] = False
            report["verify_error"] = exc.message
    _out(json.dumps(report, sort_keys=True))
    return 0 if report.get("verified", True) else 1
