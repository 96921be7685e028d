"""The Python gRPC calls around each load run: the sanity checks and the cache warm-up.

h2load reports HTTP statuses only, so before any load a real gRPC client makes one call to each
server and checks what comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from bench import payload
from bench.processes import BenchError
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc

_CALL_TIMEOUT_S = 30.0


def get_authorization(port: int, name: str, token: str | None = None) -> bytes:
    """One ``GetAuthorization`` (the benchmark's request) to ``127.0.0.1:port``; the response bytes.

    ``token`` is a caller token, sent as ``authorization: Bearer <token>`` metadata.

    Raises:
        BenchError: the call failed.
    """
    request = payload.request()
    metadata = payload.caller_metadata(token)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CredentialBrokerStub(channel)
        try:
            response = stub.GetAuthorization(request, timeout=_CALL_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as exc:  # the sync client's error text holds status and details
            raise BenchError(f"sanity call to {name} failed: {exc}") from exc
    return response.SerializeToString()


def check_broker(port: int, name: str, token: str | None = None) -> bytes:
    """Call the broker and check it answered an assertion for the background task (warming L1).

    Raises:
        BenchError: the call failed or the answer is not a background-task assertion.
    """
    raw = get_authorization(port, name, token)
    authorization = pb.GetAuthorizationResponse.FromString(raw).authorization
    problems = []
    if authorization.scheme != pb.SCHEME_AGENT_ASSERTION:
        problems.append(f"scheme {pb.Scheme.Name(authorization.scheme)}")
    if not authorization.header_value.startswith("AgentAssertion "):
        problems.append("header_value is not an AgentAssertion")
    if authorization.fallback_reason != pb.FALLBACK_REASON_UNSPECIFIED:
        problems.append(f"fallback {pb.FallbackReason.Name(authorization.fallback_reason)}")
    if authorization.task_kind != pb.TASK_KIND_BACKGROUND:
        problems.append(f"task kind {pb.TaskKind.Name(authorization.task_kind)}")
    if problems:
        raise BenchError(
            f"sanity call to {name}: not a background assertion: {', '.join(problems)}"
        )
    return raw


def check_echo(port: int, name: str, expected: bytes) -> None:
    """Call the echo server and check it answers exactly ``expected``.

    Raises:
        BenchError: the call failed or the answer differs.
    """
    raw = get_authorization(port, name)
    if raw != expected:
        raise BenchError(f"sanity call to {name}: the response differs from the broker's")


def serve_seconds_left(raw: bytes, refresh_margin: float) -> float:
    """Seconds until the broker stops handing out the assertion in ``raw`` (its L1 entry lapses).

    The broker serves an assertion until ``expires_at - refresh_margin`` (``expires_at`` on the wire
    is the assertion's own expiry).
    """
    expires_at = pb.GetAuthorizationResponse.FromString(raw).authorization.expires_at
    return expires_at.ToNanoseconds() / 1e9 - refresh_margin - time.time()


def warm_window(
    port: int,
    name: str,
    refresh_margin: float,
    needed: float,
    progress: Callable[[str], None],
    token: str | None = None,
) -> tuple[float, float]:
    """Warm the broker and make sure its cached assertion stays servable for ``needed`` seconds.

    When less is left, wait for the assertion to leave its serve window and call again: the broker
    then signs a fresh one, outside the measured run. (Asking with ``min_remaining`` instead does
    not work: the store keeps the first assertion of a window and the broker serves it back.)

    Returns:
        (seconds left in the serve window, seconds waited).

    Raises:
        BenchError: a call failed or the answer is not a background-task assertion.
    """
    left = serve_seconds_left(check_broker(port, name, token), refresh_margin)
    if left >= needed:
        return left, 0.0
    waited = max(left, 0.0) + 0.5
    progress(
        f"{name}: {left:.1f} s left of the cached assertion's serve window, {needed:.1f} s needed; "
        "waiting for the refresh so that the run does not straddle it"
    )
    time.sleep(waited)  # the broker refreshes on demand once the window has passed
    return serve_seconds_left(check_broker(port, name, token), refresh_margin), waited
