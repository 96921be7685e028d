"""``GetAuthorization`` served from prebuilt bytes both ways: the hot method's raw handler.

Workers call ``GetAuthorization`` far more often than anything else, with a handful of distinct
requests (one per identity and thread), and almost every call is a warm hit that returns the same
:class:`~broker.core.credentials.model.Authorization` object until it is refreshed. This handler
does what ``BrokerServicer.GetAuthorization`` does (convert the request, make one core call, abort
with the error's status), with neither message built on the way:

* a request's bytes are converted to the core's arguments once and kept, keyed by those bytes (so
  a repeated request is one dict lookup, not a parse and four conversions);
* the response's bytes are built once per ``Authorization`` object and kept.

The typed servicer serves every other method. Both tables are bounded and dropped whole when full.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import grpc
from google.protobuf.message import DecodeError

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.callers import CallerPolicy
from broker.core.credentials.authorizer import Authorizer
from broker.core.credentials.model import Authorization, Mode
from broker.errors import BrokerError, InvalidArgument
from broker.transport.grpc import convert
from broker.transport.grpc.callers import CURRENT_CALLER, CallerGate
from broker.transport.grpc.interceptors import UNDECODABLE_MESSAGE
from broker.transport.grpc.servicer import abort_for, admitted

_MAX_ANSWERS: Final = 10_000
"""Kept answers (one per live Authorization: identities x threads)."""
_MAX_REQUESTS: Final = 10_000
"""Kept requests (one per distinct request: identities x threads x modes)."""
_MAX_REQUEST_BYTES: Final = 512
"""Longer requests are converted every time (a real one is a few dozen bytes)."""


class WarmRequest(NamedTuple):
    """A ``GetAuthorizationRequest`` as the core's arguments."""

    identity: str
    thread_id: str
    mode: Mode
    min_remaining: float


def convert_request(message: pb.GetAuthorizationRequest) -> WarmRequest:
    """The core's arguments, converted as ``BrokerServicer.GetAuthorization`` converts them.

    Raises:
        InvalidArgument: an unknown mode, a negative or too long ``min_remaining``.
    """
    return WarmRequest(
        message.identity,
        message.thread_id,
        convert.mode_from_proto(message.mode),
        # An unset Duration is 0 s: not reading it spares building a message.
        convert.seconds_from_duration(message.min_remaining, "min_remaining")
        if message.HasField("min_remaining")
        else 0.0,
    )


class PrebuiltGetAuthorization:
    """The raw ``GetAuthorization`` handler (see the module docstring).

    Args:
        authorizer: the core.
        gate: counts denials the core raises for the caller.
    """

    def __init__(self, authorizer: Authorizer, gate: CallerGate | None = None) -> None:
        self._authorizer = authorizer
        self._gate = gate
        self._requests: dict[bytes, WarmRequest] = {}
        # Keyed by id(); each entry holds its Authorization, so the id stays that object's.
        self._answers: dict[int, tuple[Authorization, bytes]] = {}

    def handler(self) -> grpc.RpcMethodHandler[bytes, bytes]:
        """The method handler: the request's bytes in, the response's bytes out (grpc calls no
        deserializer: the warm path looks the bytes up itself)."""
        return grpc.unary_unary_rpc_method_handler(self.get_authorization)

    def request(self, data: bytes) -> WarmRequest | BrokerError:
        """The arguments ``data`` carries, or the error to answer."""
        kept = self._requests.get(data)
        if kept is not None:
            return kept
        try:
            request = convert_request(pb.GetAuthorizationRequest.FromString(data))
        except DecodeError:
            return InvalidArgument(UNDECODABLE_MESSAGE)
        except BrokerError as exc:
            return exc
        if len(data) <= _MAX_REQUEST_BYTES:
            if len(self._requests) >= _MAX_REQUESTS:
                self._requests.clear()
            self._requests[data] = request
        return request

    def warm(self, data: bytes, caller: CallerPolicy) -> bytes | None:
        """The answer to a warm hit, at once; ``None`` for anything else (the interceptor's warm
        path: :meth:`get_authorization` then answers, errors included).

        The hot path of the whole broker: one lookup of the request's bytes, the authorizer's warm
        hit, one lookup of its answer's bytes.
        """
        request = self._requests.get(data)
        if request is None:
            return None  # not seen yet (or not kept): get_authorization converts it
        try:
            authorization = self._authorizer.warm(*request, caller)
        except BrokerError:
            return None  # a refusal: get_authorization raises it again and answers its status
        return None if authorization is None else self.answer(authorization)

    async def get_authorization(
        self, data: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        """``GetAuthorization``: the serialized ``GetAuthorizationResponse``.

        The interceptor answers a warm hit before this runs (:meth:`warm`); what reaches here goes
        the whole way (:meth:`Authorizer.authorize`, which answers a hit at once too).
        """
        request = self.request(data)
        if isinstance(request, BrokerError):
            await abort_for(context, request, self._gate)
            raise request  # unreachable: abort_for raises
        try:
            caller = CURRENT_CALLER.get() or admitted()  # admitted() refuses a call without one
            authorization = await self._authorizer.authorize(*request, caller)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # the edge: abort_for answers a status (INTERNAL for a bug)
            await abort_for(context, exc, self._gate)
            raise  # unreachable: abort_for raises
        return self.answer(authorization)

    def answer(self, authorization: Authorization) -> bytes:
        """The serialized response for ``authorization``, built once per object."""
        kept = self._answers.get(id(authorization))
        if kept is not None and kept[0] is authorization:
            return kept[1]
        if len(self._answers) >= _MAX_ANSWERS:
            self._answers.clear()
        response = pb.GetAuthorizationResponse(
            authorization=convert.authorization_to_proto(authorization)
        )
        answer = response.SerializeToString()
        self._answers[id(authorization)] = (authorization, answer)
        return answer
