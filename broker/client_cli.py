"""The client commands: ``get-authorization``, ``inspect`` and ``admin …``.

They reach a production broker the way a worker does: a caller token (``--token-file`` or the
``BROKER_CALLER_TOKEN_FILE`` / ``BROKER_CALLER_TOKEN`` environment variables; never a command-line
argument, which other users of the machine can read) sent as ``authorization: Bearer`` metadata,
over TLS (``--ca-file``, or ``--tls`` for the system's CAs) with a client certificate for mutual TLS
(``--cert-file`` and ``--key-file``). Errors are one line on stderr: exit 2 for a usage problem
found before connecting, 1 for a status from the broker (with a hint at the flag that usually fixes
it); the token is never printed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc
from broker.core.protocol.assertion import parse_assertion, verify_assertion
from broker.core.protocol.keys import parse_ssh_public_key
from broker.errors import ProtocolError

TOKEN_ENV: Final = "BROKER_CALLER_TOKEN"  # noqa: S105  (a variable's name, not a token)
TOKEN_FILE_ENV: Final = "BROKER_CALLER_TOKEN_FILE"  # noqa: S105
_MAX_TOKEN_LEN: Final = 4096
"""The broker ignores longer tokens (``transport/grpc/callers.py``)."""
_MAX_PEM_BYTES: Final = 1 << 20
_USAGE_ERROR: Final = 2


def _out(text: str) -> None:
    print(text, flush=True)  # noqa: T201  (command output)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201  (command output)


class UsageError(Exception):
    """A flag or file is wrong; found before any connection. The message names the flag."""


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach a broker: its address, channel credentials and the caller's metadata."""

    address: str
    credentials: grpc.ChannelCredentials | None
    """``None`` for plaintext."""
    server_name: str | None
    metadata: tuple[tuple[str, str], ...]
    token_source: str | None
    """Where the token came from (a flag or variable name, never the token), for hints."""
    client_certificate: bool

    def channel(self) -> grpc.aio.Channel:
        """A new channel; the caller closes it (``async with``)."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.address)
        options = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(self.address, self.credentials, options)


def _read_file(
    flag: str, path: str, *, limit: int = _MAX_PEM_BYTES, name_path: bool = True
) -> bytes:
    where = f"{flag} {path}" if name_path else flag
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(
            f"{where}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > limit:
        raise UsageError(f"{where}: larger than {limit} bytes")
    if not data.strip():
        raise UsageError(f"{where}: is empty")
    return data


def _caller_token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The caller token and where it came from (flag > file variable > variable), or ``None``."""
    path = args.token_file or environ.get(TOKEN_FILE_ENV)
    if path:
        source = "--token-file" if args.token_file else TOKEN_FILE_ENV
        # The path is not echoed: someone may have pasted the token where the path belongs.
        raw = _read_file(source, path, limit=_MAX_TOKEN_LEN + 2, name_path=False)
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
    elif environ.get(TOKEN_ENV):
        source, token = TOKEN_ENV, environ[TOKEN_ENV].strip()
    else:
        return None
    if not 0 < len(token) <= _MAX_TOKEN_LEN or not all("!" <= ch <= "~" for ch in token):
        raise UsageError(
            f"{source}: the caller token must be 1-{_MAX_TOKEN_LEN} printable ASCII characters "
            "without spaces"
        )
    return token, source


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost" or address.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connection(args: argparse.Namespace, address: str, environ: Mapping[str, str]) -> Connection:
    """Build the connection the flags describe.

    Raises:
        UsageError: an unreadable file, a client certificate without its key (or the reverse), or
            a malformed token.
    """
    if bool(args.cert_file) != bool(args.key_file):
        raise UsageError(
            "--cert-file and --key-file: give both (the client certificate and its key)"
        )
    found = _caller_token(args, environ)
    metadata = (("authorization", f"Bearer {found[0]}"),) if found else ()
    tls = bool(args.tls or args.ca_file or args.cert_file or args.server_name)
    credentials = None
    if tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_file("--ca-file", args.ca_file) if args.ca_file else None,
            private_key=_read_file("--key-file", args.key_file) if args.key_file else None,
            certificate_chain=_read_file("--cert-file", args.cert_file) if args.cert_file else None,
        )
    elif found and not _is_loopback(address):
        _err(
            f"credential-broker: warning: sending the caller token to {address} without TLS "
            "(pass --ca-file or --tls)"
        )
    return Connection(
        address=address,
        credentials=credentials,
        server_name=args.server_name or None,
        metadata=metadata,
        token_source=found[1] if found else None,
        client_certificate=bool(args.cert_file),
    )


def _hint(exc: grpc.aio.AioRpcError, conn: Connection) -> str:
    """What to check for a status that usually means a flag is missing or wrong."""
    code = exc.code()
    details = (exc.details() or "").lower()
    if code is grpc.StatusCode.UNAUTHENTICATED:
        if conn.token_source is None:
            return f"send a caller token: --token-file or {TOKEN_ENV}"
        return f"the broker does not know the caller token from {conn.token_source}"
    if code is not grpc.StatusCode.UNAVAILABLE:
        return ""
    if conn.credentials is None:
        return "is the broker serving TLS? then pass --ca-file (or --tls)"
    if "certificate_verify_failed" in details or "handshake" in details or "ssl" in details:
        if not conn.client_certificate:
            return (
                "TLS failed: check --ca-file and --server-name; a broker that asks for client "
                "certificates needs --cert-file and --key-file"
            )
        return "TLS failed: check --ca-file, --server-name, --cert-file and --key-file"
    if not conn.client_certificate and "socket closed" in details:
        return "a broker that asks for client certificates needs --cert-file and --key-file"
    return ""


def _rpc_failed(exc: grpc.aio.AioRpcError, conn: Connection) -> int:
    hint = _hint(exc, conn)
    # gRPC's details can span lines; the command prints one line.
    details = " ".join((exc.details() or "").split())
    _err(f"credential-broker: {exc.code().name}: {details}" + (f" ({hint})" if hint else ""))
    return 1


def _render(authorization: pb.Authorization, header_only: bool) -> str:
    if header_only:
        return authorization.header_value
    return _json(authorization)


def _json(message: Message) -> str:
    return json.dumps(MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)


async def get_authorization(args: argparse.Namespace) -> int:
    """Ask a broker for a header (or stream them with ``--watch``) and print it."""
    try:
        conn = connection(args, args.broker, os.environ)
    except UsageError as exc:
        _err(f"credential-broker: {exc}")
        return _USAGE_ERROR
    mode = pb.MODE_BEARER_ONLY if args.bearer_only else pb.MODE_DEFAULT
    async with conn.channel() as channel:
        stub = pb_grpc.CredentialBrokerStub(channel)
        try:
            if args.watch:
                request = pb.WatchAuthorizationRequest(
                    identity=args.identity, thread_id=args.thread, mode=mode
                )
                async for update in stub.WatchAuthorization(request, metadata=conn.metadata):
                    _out(_render(update.authorization, args.header_only))
                return 0
            response = await stub.GetAuthorization(
                pb.GetAuthorizationRequest(
                    identity=args.identity, thread_id=args.thread, mode=mode
                ),
                timeout=args.timeout,
                metadata=conn.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            return _rpc_failed(exc, conn)
    _out(_render(response.authorization, args.header_only))
    return 0


async def _public_key_from_broker(conn: Connection, args: argparse.Namespace) -> str:
    async with conn.channel() as channel:
        stub = pb_grpc.CredentialBrokerStub(channel)
        response = await stub.GetIdentity(
            pb.GetIdentityRequest(identity=args.identity),
            timeout=args.timeout,
            metadata=conn.metadata,
        )
        return response.identity.public_key_ssh


async def inspect_header(args: argparse.Namespace) -> int:
    """Decode an assertion header and, given a public key or a broker, verify it."""
    conn = None
    if args.public_key is None and args.broker:
        try:
            conn = connection(args, args.broker, os.environ)
        except UsageError as exc:
            _err(f"credential-broker: {exc}")
            return _USAGE_ERROR
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
    if conn is not None:
        try:
            public_key = await _public_key_from_broker(conn, args)
        except grpc.aio.AioRpcError as exc:
            return _rpc_failed(exc, conn)
    if public_key:
        try:
            verify_assertion(envelope, parse_ssh_public_key(public_key))
            report["verified"] = True
        except ProtocolError as exc:
            report["verified"] = False
            report["verify_error"] = exc.message
    _out(json.dumps(report, sort_keys=True))
    return 0 if report.get("verified", True) else 1


async def _admin_call(
    stub: apb_grpc.CredentialBrokerAdminAsyncStub, args: argparse.Namespace, conn: Connection
) -> Message:
    """The RPC an ``admin`` subcommand makes."""
    metadata, timeout = conn.metadata, args.timeout
    match args.admin_command:
        case "list-identities":
            request_list = apb.ListIdentitiesRequest()
            return await stub.ListIdentities(request_list, metadata=metadata, timeout=timeout)
        case "rotate-identity":
            rotate = apb.RotateIdentityRequest(identity=args.identity)
            return await stub.RotateIdentity(rotate, metadata=metadata, timeout=timeout)
        case "revoke-task":
            revoke = apb.RevokeTaskRequest(identity=args.identity, thread_id=args.thread)
            return await stub.RevokeTask(revoke, metadata=metadata, timeout=timeout)
        case "flush-caches":
            flush = apb.FlushCachesRequest(identity=args.identity)
            return await stub.FlushCaches(flush, metadata=metadata, timeout=timeout)
        case "usage":
            return await stub.GetUsage(apb.GetUsageRequest(), metadata=metadata, timeout=timeout)
    raise AssertionError(f"unknown admin command {args.admin_command!r}")  # argparse prevents it


async def run_admin(args: argparse.Namespace) -> int:
    """Make one admin RPC (the caller needs ``admin = true``) and print its answer as JSON."""
    try:
        conn = connection(args, args.broker, os.environ)
    except UsageError as exc:
        _err(f"credential-broker: {exc}")
        return _USAGE_ERROR
    async with conn.channel() as channel:
        try:
            response = await _admin_call(apb_grpc.CredentialBrokerAdminStub(channel), args, conn)
        except grpc.aio.AioRpcError as exc:
            return _rpc_failed(exc, conn)
    _out(_json(response))
    return 0
