"""Adversarial control-plane responses: the real ControlPlaneClient against the real emulator (issue 5).

Hypothesis generates what a broken or hostile control plane could answer, the emulator sends it
(``inject_fault(..., status=, body=, content_type=, delay_seconds=)``), and a real
:class:`ControlPlaneClient` with small timeouts receives it: JSON of the wrong types, bodies over the
1 MiB cap, nesting deep enough to exhaust the parser, invalid base64 in ``encrypted_task_id``, sealed
boxes addressed to another key, sealed empty or non-UTF-8 task ids, error statuses, the Bearer token
echoed back, and answers slower than the read timeout or the per-exchange deadline. Responses the
emulator cannot produce (non-UTF-8 bytes, a body trickled byte by byte, broken HTTP, a gzip bomb) come
from a raw loopback HTTP responder (``tests/fuzz_helpers.RawHttpServer``).

Properties: each call returns a well-formed value exactly when the response was well formed (an oracle
derived from protocol §4.1 and §5.2 decides which), fails with a ControlPlaneError or TaskIdError (both
BrokerErrors) otherwise, never with anything else; no exception text, excerpt or log line carries the
Bearer token; every call ends within a bound derived from its timeouts; and only retryable failures
(429, 5xx, transport) are retried, counted at the emulator. Through a real broker (``start_broker``), a
garbage task registration answer gives the background a Bearer with TASK_REGISTRATION_UNAVAILABLE and
a thread UNAVAILABLE, stores no task, and the next call registers a proper task whose assertion
verifies.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import nacl.public
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker._proto.credential_broker.v1 import admin_pb2 as apb
from broker._proto.credential_broker.v1 import admin_pb2_grpc as apb_grpc
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.controlplane import (
    MAX_RESPONSE_BYTES,
    ControlPlaneClient,
    ControlPlaneTimeouts,
    Profile,
    RetryPolicy,
)
from broker.core.credentials.model import task_slot
from broker.core.protocol.keys import AgentKey, curve25519_public_from_ed25519
from broker.core.protocol.task_id import seal_task_id, task_id_from_response
from broker.core.protocol.task_registration import task_registration_body
from broker.errors import (
    BrokerError,
    ControlPlaneError,
    ControlPlaneUnavailable,
    TaskIdError,
)
from broker.secret import Secret
from cb_emulator import Emulator, EmulatorAccount
from tests.fixtures.broker import DEV_TOKEN, UNMETERED_THREADS, StartBroker
from tests.fixtures.emulator import StartEmulator
from tests.fuzz_helpers import (
    INVALID_UTF8,
    LoopBridge,
    RawHttpServer,
    RawResponse,
    Tally,
    http_response,
    mostly,
    nasty_text,
    run_property,
)
from tests.integration.helpers import call_protected, error_reason

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "s3cr3t-fuzz-bearer-token-0123456789"
BEARER = Secret(TOKEN)
BEARER_TOKENS = {TOKEN: EmulatorAccount("acct-dev", "user-dev")}
ABOM = {"agent_version": "0.1.0", "agent_harness_id": "broker", "running_location": "fuzz"}
USER_AGENT = "credential-broker-fuzz/1.0"
RETRY = RetryPolicy(attempts=3, deadline=8.0, wait_initial=0.001, wait_max=0.005, wait_jitter=0.001)
# Generous: the response properties never wait, and a stalled loop must not look like a timeout.
TIMEOUTS = ControlPlaneTimeouts(
    connect=1.0,
    read=2.0,
    write=1.0,
    pool=1.0,
    mint_biscuit=2.0,
    register_identity=2.0,
    register_task_chatgpt_backend=2.0,
    register_task_authapi=2.0,
)
CALL_BOUND = 5.0
"""No call of a response property may take longer than this (its timeouts allow far less)."""
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")
DOT_SEGMENTS = (".", "..")
"""Runtime ids that are whole dot segments: accepted by the client today (a known bug, see
``test_dot_segment_runtime_id_is_refused``), tolerated by the identity property only as such."""

FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def new_key() -> AgentKey:
    return AgentKey.generate(os.urandom(64))


# -- what a response may contain ------------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """An ``encrypted_task_id`` made at run time: ``plaintext`` sealed to the identity's key (or,
    with ``right=False``, to another key), the way the control plane seals (§5.3)."""

    plaintext: bytes
    right: bool


ECHOES = st.sampled_from([TOKEN, f"Bearer {TOKEN}", f"token {TOKEN} refused", f"x{TOKEN}x"])
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    nasty_text(40),
    ECHOES,
)
json_junk = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(nasty_text(12), children, max_size=4)
    ),
    max_leaves=12,
)
TASK_NAMES = ("task_id", "taskId", "encrypted_task_id", "encryptedTaskId")
junk_members = st.dictionaries(
    nasty_text(12).filter(lambda k: k not in (*TASK_NAMES, "agent_runtime_id")),
    json_junk,
    max_size=3,
)
INVALID_BASE64 = st.one_of(
    st.sampled_from(
        ["", " ", "!!!!", "YQ", "YQ=", "YQ===", "Y Q==", "YQ==\n", "-_-_", "====", "\u00e9t\u00e9"]
    ),
    nasty_text(60),
)
plaintexts = st.one_of(
    st.just(b""),
    st.sampled_from([b" ", b"\t\n", b"task-ok-1"]),
    st.text(min_size=1, max_size=40).map(lambda t: t.encode("utf-8")),
    st.sampled_from(INVALID_UTF8),
)
task_values = st.one_of(
    json_junk,
    nasty_text(40),
    st.just(""),
    ECHOES,
    INVALID_BASE64,
    st.builds(base64.b64encode, st.binary(max_size=120)).map(bytes.decode),
    st.builds(Sealed, plaintexts, st.booleans()),
)


def materialize(value: Any, key: AgentKey, other: AgentKey) -> Any:
    """Replace each :class:`Sealed` with the base64 sealed box it describes."""
    if isinstance(value, Sealed):
        recipient = key if value.right else other
        public = nacl.public.PublicKey(curve25519_public_from_ed25519(recipient.public_key_bytes))
        sealed = nacl.public.SealedBox(public).encrypt(value.plaintext)
        if value.plaintext == b"task-ok-1":  # also through the emulator's own sealing function
            return seal_task_id(recipient.public_key_bytes, "task-ok-1")
        return base64.b64encode(sealed).decode("ascii")
    if isinstance(value, dict):
        return {k: materialize(v, key, other) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v, key, other) for v in value]
    return value


@dataclass(frozen=True)
class Body:
    """A generated response body: a JSON value to encode, or raw text sent as is."""

    kind: str
    value: Any = None
    text: str | None = None

    def render(self, key: AgentKey, other: AgentKey) -> str:
        if self.text is not None:
            return self.text
        return json.dumps(materialize(self.value, key, other))


def _huge(kind: str, members: dict[str, Any], *, over: bool = False) -> st.SearchStrategy[Body]:
    """An otherwise valid object padded to a few bytes either side of the client's cap (``over``:
    only past it)."""

    def build(delta: int) -> Body:
        base = json.dumps({**members, "pad": ""})
        pad = max(0, MAX_RESPONSE_BYTES + delta - len(base.encode()))
        return Body(kind, text=json.dumps({**members, "pad": "a" * pad}))

    deltas = st.integers(1, 4) if over else st.integers(-4, 4)
    return st.builds(build, st.one_of(deltas, st.just(MAX_RESPONSE_BYTES)))


def _deep(kind: str, members: dict[str, Any]) -> st.SearchStrategy[Body]:
    def build(depth: int, opener: str) -> Body:
        closer = {"[": "]", '{"a":': "}"}[opener]
        nested = opener * depth + "0" + closer * depth
        return Body(kind, text=json.dumps(members)[:-1] + ', "deep": ' + nested + "}")

    return st.builds(
        build, st.sampled_from([10, 900, 5000, 200_000]), st.sampled_from(["[", '{"a":'])
    )


common_bodies = st.one_of(
    st.builds(Body, st.just("not_an_object"), json_junk.filter(lambda v: not isinstance(v, dict))),
    st.builds(lambda t: Body("not_json", text=t), nasty_text(200)),
    st.builds(lambda t: Body("echo", text=t), ECHOES),
    st.sampled_from(
        [
            Body("truncated", text='{"agent_runtime_id": "agent-1", "task_id": "t'),
            Body("bom", text='\ufeff{"agent_runtime_id": "agent-1", "task_id": "t"}'),
            Body("nan", text='{"agent_runtime_id": NaN, "task_id": Infinity}'),
            Body("deep_array", text="[" * 100_000),
            Body("empty", text=""),
        ]
    ),
)
identity_bodies = st.one_of(
    st.builds(
        lambda rid, extra: Body("runtime_id", {"agent_runtime_id": rid, **extra}),
        st.one_of(
            st.sampled_from(["agent-1", "a/../b", "a?b", "a#b", "a%2Fb", " agent", "agent\n", ""]),
            json_junk,
            ECHOES,
        ),
        junk_members,
    ),
    st.builds(Body, st.just("junk_object"), junk_members),
    _huge("huge", {"agent_runtime_id": "agent-huge"}),
    _deep("deep", {"agent_runtime_id": "agent-deep"}),
    common_bodies,
)
task_bodies = st.one_of(
    st.builds(
        lambda fields, extra: Body("task_fields", {**fields, **extra}),
        st.dictionaries(st.sampled_from(TASK_NAMES), task_values, max_size=3),
        junk_members,
    ),
    _huge("huge", {"task_id": "task-huge"}),
    _deep("deep", {"task_id": "task-deep"}),
    common_bodies,
)
PINNED_TASK_BODIES = (
    Body("task_fields", {"encrypted_task_id": Sealed(b"task-ok-1", right=False)}),  # wrong key
    Body("task_fields", {"encrypted_task_id": Sealed(b"", right=True)}),  # sealed empty id
    Body("task_fields", {"encryptedTaskId": Sealed(b"\xff\xfe", right=True)}),  # not UTF-8
    Body("task_fields", {"encrypted_task_id": "YQ"}),  # base64 without its padding
    Body("task_fields", {"encrypted_task_id": "-_-_"}),  # base64url, not base64
    Body("task_fields", {"task_id": 7, "encrypted_task_id": Sealed(b"task-ok-1", right=True)}),
    Body("task_fields", {"task_id": "  ", "encrypted_task_id": Sealed(b"task-ok-1", right=True)}),
)
"""Cases every run tries, whatever hypothesis draws (``@example``)."""


content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "text/html",
            "application/json; charset=utf-16",
            "text/plain; charset=latin-1",
            "application/octet-stream",
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
)
# aiohttp sends no body with 1xx/204/205/304, so those are left out; 2xx bodies are the main course.
FINAL_ERRORS = [s for s in range(300, 500) if s not in (304, 429)]
statuses = mostly(
    st.sampled_from([200, 200, 201, 202]),
    st.one_of(st.sampled_from(FINAL_ERRORS), st.just(429), st.integers(500, 599)),
    one_in=4,
)


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


# -- oracles: protocol §4.1 and §5.2 as documented ------------------------------------------------


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if len(raw) > MAX_RESPONSE_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def expected_runtime_id(raw: bytes) -> str | None:
    """The ``agent_runtime_id`` a well-formed identity response carries, else ``None``."""
    data = _json_object(raw)
    if data is None:
        return None
    runtime_id = data.get("agent_runtime_id")
    if not isinstance(runtime_id, str) or not runtime_id.strip():
        return None
    if not _HEADER_TOKEN.fullmatch(runtime_id) or any(ch in runtime_id for ch in "/?#%"):
        return None
    if runtime_id in DOT_SEGMENTS:  # the URL would be normalised to another path (RFC 3986 5.2.4)
        return None
    return runtime_id


def expected_task_id(body: Body, raw: bytes) -> str | None:
    """The task id a well-formed task response carries, else ``None`` (§5.2 priority order)."""
    data = _json_object(raw)
    if data is None:
        return None
    for name in ("task_id", "taskId"):
        value = data.get(name)
        if isinstance(value, str):
            return value if value.strip() else None
    spec = body.value if body.text is None and isinstance(body.value, dict) else {}
    for name in ("encrypted_task_id", "encryptedTaskId"):
        sealed = spec.get(name)
        if isinstance(sealed, Sealed):
            if not sealed.right:
                return None
            try:
                plain = sealed.plaintext.decode("utf-8")
            except UnicodeDecodeError:
                return None
            return plain if plain.strip() else None
        if isinstance(data.get(name), str):
            return None  # no generated string is a box sealed to the key
    return None


def assert_secret_free(error: BaseException) -> None:
    """No text of the error, its excerpt or anything it was raised from carries the Bearer."""
    seen: BaseException | None = error
    for _ in range(20):  # the chain is short; the bound only guards against a cycle
        if seen is None:
            return
        for text in (str(seen), repr(seen), getattr(seen, "body_excerpt", "")):
            assert TOKEN not in text, f"the bearer token leaked through {type(seen).__name__}"
        seen = seen.__cause__ or seen.__context__


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@dataclass
class Plane:
    """One emulator and a client of each profile pointed at it."""

    emulator: Emulator
    clients: dict[Profile, ControlPlaneClient]


@pytest.fixture(name="plane")
async def fixture_plane(start_emulator: StartEmulator, http: httpx.AsyncClient) -> Plane:
    # The G1 client mints and sends biscuits; without require_biscuit the emulator also takes the
    # G4 task registration, which carries no credential, so one emulator serves both profiles.
    emulator = await start_emulator(tokens=BEARER_TOKENS, require_biscuit=False)
    base = emulator.base_url
    clients = {
        Profile.CHATGPT_BACKEND: ControlPlaneClient(
            http,
            base_url=base,
            profile=Profile.CHATGPT_BACKEND,
            timeouts=TIMEOUTS,
            retry=RETRY,
            user_agent=USER_AGENT,
        ),
        Profile.AUTHAPI: ControlPlaneClient(
            http,
            base_url=base,
            profile=Profile.AUTHAPI,
            authapi_base_url=base,
            timeouts=TIMEOUTS,
            retry=RETRY,
            user_agent=USER_AGENT,
        ),
    }
    return Plane(emulator, clients)


def requests_to(emulator: Emulator, endpoint: str) -> int:
    return emulator.stats().requests_by_endpoint.get(endpoint, 0)


def run_timed(bridge: LoopBridge, coro: Any) -> tuple[Any, BaseException | None, float]:
    """(result, error, seconds) of a coroutine run on the test's loop."""

    async def wrapped() -> tuple[Any, BaseException | None]:
        try:
            return await coro, None
        except Exception as error:  # noqa: BLE001  (the property classifies every failure)
            return None, error

    started = time.perf_counter()
    result, error = bridge.run(wrapped(), CALL_BOUND + 5.0)
    elapsed = time.perf_counter() - started
    assert elapsed < CALL_BOUND, f"the call took {elapsed:.2f} s"
    return result, error, elapsed


# -- properties: the client -----------------------------------------------------------------------


async def test_identity_registration_responses(
    plane: Plane, log_output: list[dict[str, Any]], request: pytest.FixtureRequest
) -> None:
    """Any answer to an identity registration: a usable runtime id or a precise ControlPlaneError."""
    bridge = LoopBridge(asyncio.get_running_loop())
    tally = Tally(request.node.name)
    key, other = new_key(), new_key()

    @settings(FUZZ_SETTINGS, max_examples=120)
    @given(st.sampled_from(list(Profile)), statuses, identity_bodies, content_types)
    def identity(profile: Profile, status: int, body: Body, content_type: str) -> None:
        emulator = plane.emulator
        text = body.render(key, other)
        emulator.reset()
        emulator.inject_fault(
            "register_identity", status=status, body=text, content_type=content_type
        )
        result, error, _ = run_timed(
            bridge,
            plane.clients[profile].register_identity(
                bearer=BEARER, agent_public_key=key.public_key_ssh, abom=ABOM
            ),
        )
        sent = requests_to(emulator, "register_identity")
        if retryable(status):
            # One retry, answered by the real handler (the fault applied once).
            assert error is None, repr(error)
            assert sent == 2
            tally.add("retried_then_registered")
            return
        assert sent == 1, f"a final answer (HTTP {status}) was retried"
        if 200 <= status < 300:
            wanted = expected_runtime_id(text.encode("utf-8"))
            if wanted is not None:
                assert error is None, repr(error)
                assert result == wanted
                tally.add("registered")
                return
            if error is None and result in DOT_SEGMENTS:
                tally.add("known_bug:dot_segment_accepted")
                return
        assert type(error) is ControlPlaneError, repr(error)
        assert error.operation == "register_identity"
        if not 200 <= status < 300:
            assert error.status == status
        assert_secret_free(error)
        tally.add(f"refused:{body.kind}" if 200 <= status < 300 else "refused:http_error")

    for runtime_id in DOT_SEGMENTS:
        pinned = Body("runtime_id", {"agent_runtime_id": runtime_id})
        identity = example(Profile.AUTHAPI, 200, pinned, "application/json")(identity)
    await run_property(identity)
    assert TOKEN not in json.dumps(log_output, default=repr)
    tally.report()
    assert tally.total >= 100


async def test_task_registration_responses(
    plane: Plane, log_output: list[dict[str, Any]], request: pytest.FixtureRequest
) -> None:
    """Any answer to a task registration: the task id it really carries, or ControlPlaneError /
    TaskIdError; sealed boxes to another key, bad base64 and non-UTF-8 plaintexts never open."""
    bridge = LoopBridge(asyncio.get_running_loop())
    tally = Tally(request.node.name)
    other = new_key()
    runtimes: dict[Profile, tuple[AgentKey, str]] = {}
    for profile, client in plane.clients.items():
        key = new_key()
        runtime_id = await client.register_identity(
            bearer=BEARER, agent_public_key=key.public_key_ssh, abom=ABOM
        )
        runtimes[profile] = (key, runtime_id)

    async def register(profile: Profile) -> str:
        key, runtime_id = runtimes[profile]
        body = task_registration_body(key, runtime_id, datetime.now(UTC))
        response = await plane.clients[profile].register_task(
            bearer=BEARER, agent_runtime_id=runtime_id, body=body
        )
        return task_id_from_response(key, response)

    @settings(FUZZ_SETTINGS, max_examples=150)
    @given(st.sampled_from(list(Profile)), statuses, task_bodies, content_types)
    def task(profile: Profile, status: int, body: Body, content_type: str) -> None:
        emulator = plane.emulator
        key, _ = runtimes[profile]
        text = body.render(key, other)
        emulator.reset()
        emulator.inject_fault("register_task", status=status, body=text, content_type=content_type)
        result, error, _ = run_timed(bridge, register(profile))
        sent = requests_to(emulator, "register_task")
        if retryable(status):
            assert error is None, repr(error)
            assert sent == 2
            assert result in {t.task_id for t in emulator.tasks()}
            tally.add("retried_then_registered")
            return
        assert sent == 1, f"a final answer (HTTP {status}) was retried"
        if 200 <= status < 300:
            wanted = expected_task_id(body, text.encode("utf-8"))
            if wanted is not None:
                assert error is None, repr(error)
                assert result == wanted
                tally.add("task_id")
                return
            assert isinstance(error, ControlPlaneError | TaskIdError), repr(error)
            assert type(error) is not ControlPlaneUnavailable
        else:
            assert type(error) is ControlPlaneError, repr(error)
            assert error.status == status
        assert_secret_free(error)
        tally.add(f"refused:{type(error).__name__}:{body.kind}")

    for pinned in PINNED_TASK_BODIES:
        task = example(Profile.CHATGPT_BACKEND, 200, pinned, "application/json")(task)
    await run_property(task)
    assert TOKEN not in json.dumps(log_output, default=repr)
    tally.report()
    assert tally.total >= 100


@dataclass(frozen=True)
class Slow:
    endpoint: str
    profile: Profile
    delay: float
    count: int
    limit: str  # "read": the transport read timeout; "deadline": the per-exchange deadline


async def test_slow_responses_are_bounded(
    plane: Plane, http: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:
    """Answers slower than the read timeout or the exchange deadline: each attempt is cut short,
    retried up to the policy, and the call ends in time (success, or ControlPlaneUnavailable)."""
    bridge = LoopBridge(asyncio.get_running_loop())
    tally = Tally(request.node.name)
    base = plane.emulator.base_url
    key = new_key()
    runtimes: dict[Profile, tuple[AgentKey, str]] = {}
    for profile, client in plane.clients.items():
        task_key = new_key()
        runtime_id = await client.register_identity(
            bearer=BEARER, agent_public_key=task_key.public_key_ssh, abom=ABOM
        )
        runtimes[profile] = (task_key, runtime_id)
    cut = 0.25
    limits = {
        "read": ControlPlaneTimeouts(read=cut, register_identity=5.0, register_task_authapi=5.0),
        "deadline": ControlPlaneTimeouts(
            read=5.0,
            register_identity=cut,
            register_task_chatgpt_backend=cut,
            register_task_authapi=cut,
        ),
    }
    slow = st.builds(
        Slow,
        st.sampled_from(["register_identity", "register_task"]),
        st.sampled_from(list(Profile)),
        st.floats(0.6, 1.5),
        st.integers(1, 3),
        st.sampled_from(["read", "deadline"]),
    )

    @settings(FUZZ_SETTINGS, max_examples=12)
    @given(slow)
    def slow_answers(case: Slow) -> None:
        emulator = plane.emulator
        client = ControlPlaneClient(
            http,
            base_url=base,
            profile=case.profile,
            authapi_base_url=base if case.profile is Profile.AUTHAPI else None,
            timeouts=limits[case.limit],
            retry=RETRY,
            user_agent=USER_AGENT,
        )
        emulator.reset()
        emulator.inject_fault(case.endpoint, delay_seconds=case.delay, count=case.count)
        if case.endpoint == "register_identity":
            call = client.register_identity(
                bearer=BEARER, agent_public_key=key.public_key_ssh, abom=ABOM
            )
        else:
            task_key, runtime_id = runtimes[case.profile]
            call = client.register_task(
                bearer=BEARER,
                agent_runtime_id=runtime_id,
                body=task_registration_body(task_key, runtime_id, datetime.now(UTC)),
            )
        _, error, elapsed = run_timed(bridge, call)
        sent = requests_to(emulator, case.endpoint)
        assert sent == min(case.count + 1, RETRY.attempts)
        # Each slow attempt is cut at `cut`; biscuit mints and the final attempt are quick.
        assert elapsed < RETRY.attempts * (cut + 0.5) + 1.0
        if case.count >= RETRY.attempts:
            assert type(error) is ControlPlaneUnavailable, repr(error)
            assert error.status is None
            tally.add(f"unavailable:{case.limit}")
        else:
            assert error is None, repr(error)
            tally.add(f"recovered:{case.limit}")

    await run_property(slow_answers)
    tally.report()
    assert tally.total >= 10


@pytest.mark.parametrize("runtime_id", DOT_SEGMENTS)
async def test_dot_segment_runtime_id_is_refused(plane: Plane, runtime_id: str) -> None:
    """A runtime id that is a dot segment would move the task registration URL: it is refused."""
    plane.emulator.inject_fault(
        "register_identity", status=200, body=json.dumps({"agent_runtime_id": runtime_id})
    )
    with pytest.raises(ControlPlaneError, match="usable path segment"):
        await plane.clients[Profile.AUTHAPI].register_identity(
            bearer=BEARER, agent_public_key=new_key().public_key_ssh, abom=ABOM
        )


# -- property: raw HTTP the emulator cannot send --------------------------------------------------


class Raw:
    """A raw answer for :class:`RawHttpServer` and how the client must take it.

    Not a dataclass: hypothesis pretty-prints dataclass fields, and the bytes can be large.
    """

    def __init__(self, kind: str, response: RawResponse, *, retried: bool) -> None:
        self.kind = kind
        self.response = response
        self.retried = retried
        """Whether the failure is a transport failure (retried) rather than a final answer."""

    def __repr__(self) -> str:
        size = sum(len(c) for c in self.response.chunks)
        return f"Raw({self.kind!r}, {size} bytes, retried={self.retried})"


def _ok(body: bytes, *headers: bytes) -> bytes:
    return http_response(b"HTTP/1.1 200 OK", body, (b"Connection: close", *headers))


RAW_KINDS = (
    "non_utf8_200",
    "non_utf8_error",
    "trickle",
    "garbage_status",
    "short_body",
    "bad_chunked",
    "close_at_once",
    "header_flood",
    "bad_gzip",
    "gzip_bomb",
)


def build_raw(
    kind: str,
    bad: bytes = INVALID_UTF8[0],
    prefix: bytes = b"",
    status: bytes = b"400 Bad Request",
    line: bytes = b"garbage",
    flood: int = 200_000,
) -> Raw:
    """The raw answer of ``kind``; the other arguments vary it."""
    if kind == "non_utf8_200":
        return Raw(kind, RawResponse([_ok(prefix + bad + b'"}')]), retried=False)
    if kind == "non_utf8_error":
        body = b'{"error": "' + bad + TOKEN.encode() + b'"}'
        response = http_response(b"HTTP/1.1 " + status, body, (b"Connection: close",))
        return Raw(kind, RawResponse([response]), retried=False)
    if kind == "trickle":
        # Each byte within the read timeout, the whole body far past the exchange deadline.
        body = b'{"agent_runtime_id": "agent-slow"}'
        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        chunks = [head, *(body[i : i + 1] for i in range(len(body)))]
        return Raw(kind, RawResponse(chunks, pause=0.03), retried=True)
    if kind == "garbage_status":
        return Raw(kind, RawResponse([line + b"\r\n\r\n"]), retried=True)
    if kind == "short_body":
        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100\r\n\r\n"
        return Raw(kind, RawResponse([head + b'{"agent_runtime_id"']), retried=True)
    if kind == "bad_chunked":
        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        return Raw(kind, RawResponse([head + b"zz\r\nabc\r\n"]), retried=True)
    if kind == "close_at_once":
        return Raw(kind, RawResponse([]), retried=True)
    if kind == "header_flood":
        # Well past the 100 KiB an unfinished HTTP/1.1 head may take in httpcore (a head that ends
        # within the read that crosses the limit is still accepted): a protocol error, retried.
        header = b"X-Flood: " + b"a" * flood
        response = http_response(b"HTTP/1.1 200 OK", b"{}", (b"Connection: close", header))
        return Raw(kind, RawResponse([response]), retried=True)
    if kind == "bad_gzip":
        response = _ok(b"\x1f\x8b\x08\x00not really gzip", b"Content-Encoding: gzip")
        return Raw(kind, RawResponse([response]), retried=False)
    assert kind == "gzip_bomb"
    response = _ok(_gzip_bomb(), b"Content-Encoding: gzip")
    return Raw(kind, RawResponse([response]), retried=False)


@functools.cache
def _gzip_bomb() -> bytes:
    """8 MiB of spaces inside a valid object, compressed to a few KiB: decoded past the cap."""
    inner = b'{"agent_runtime_id": "agent-bomb", "pad": "' + b" " * (8 << 20) + b'"}'
    return gzip.compress(inner, 9)


raw_answers = st.builds(
    build_raw,
    st.sampled_from(RAW_KINDS),
    st.sampled_from(INVALID_UTF8),
    st.sampled_from([b'{"agent_runtime_id": "', b"", b"\xef\xbb\xbf"]),
    st.sampled_from([b"400 Bad Request", b"403 Forbidden", b"401 No"]),
    st.sampled_from([b"HTTP/1.1 abc", b"garbage", b"HTTP/9 200 OK", b"\x00\xff"]),
    st.integers(200_000, 400_000),
)


async def test_raw_http_answers(
    http: httpx.AsyncClient, log_output: list[dict[str, Any]], request: pytest.FixtureRequest
) -> None:
    """Non-UTF-8 bodies, trickled bodies, broken HTTP, gzip bombs: refused or retried, in time."""
    bridge = LoopBridge(asyncio.get_running_loop())
    tally = Tally(request.node.name)
    server = RawHttpServer()
    root = await server.start()
    base = root + "/backend-api"
    retry = RetryPolicy(attempts=2, deadline=5.0, wait_initial=0.001, wait_max=0.005)
    client = ControlPlaneClient(
        http,
        base_url=base,
        profile=Profile.AUTHAPI,
        authapi_base_url=base,
        timeouts=ControlPlaneTimeouts(connect=1.0, read=0.25, register_identity=0.5),
        retry=retry,
        user_agent=USER_AGENT,
    )
    key = new_key()
    try:

        @settings(FUZZ_SETTINGS, max_examples=40)
        @given(raw_answers)
        def raw(answer: Raw) -> None:
            server.response = answer.response
            connections = server.connections
            _, error, elapsed = run_timed(
                bridge,
                client.register_identity(
                    bearer=BEARER, agent_public_key=key.public_key_ssh, abom=ABOM
                ),
            )
            assert isinstance(error, ControlPlaneError), (answer.kind, repr(error))
            assert isinstance(error, BrokerError)
            assert_secret_free(error)
            sent = server.connections - connections  # one connection per attempt
            if answer.retried:
                assert type(error) is ControlPlaneUnavailable, (answer.kind, repr(error))
                assert sent == retry.attempts, (answer.kind, sent)
            else:
                assert type(error) is ControlPlaneError, (answer.kind, repr(error))
                assert sent == 1, (answer.kind, sent)
            assert elapsed < retry.attempts * 0.5 + 1.0
            tally.add(f"{answer.kind}:{type(error).__name__}")

        for kind in RAW_KINDS:  # every kind at least once, whatever hypothesis draws
            raw = example(build_raw(kind))(raw)
        await run_property(raw)
    finally:
        await server.stop()
    assert TOKEN not in json.dumps(log_output, default=repr)
    tally.report()
    assert tally.total >= 30


# -- property: through a real broker --------------------------------------------------------------

invalid_task_bodies = st.one_of(
    st.builds(
        lambda fields, extra: Body("task_fields", {**fields, **extra}),
        st.fixed_dictionaries(
            {},
            optional={
                "task_id": st.one_of(
                    json_junk.filter(lambda v: not isinstance(v, str)), st.sampled_from(["", "  "])
                ),
                "encrypted_task_id": st.one_of(
                    INVALID_BASE64,
                    st.builds(Sealed, plaintexts, st.just(False)),  # sealed to another key
                    st.builds(Sealed, st.sampled_from([b"", b"  ", *INVALID_UTF8]), st.just(True)),
                ),
            },
        ),
        junk_members,
    ),
    st.builds(Body, st.just("not_an_object"), json_junk.filter(lambda v: not isinstance(v, dict))),
    st.builds(lambda t: Body("echo", text=t), ECHOES),
    st.sampled_from(
        [
            Body("truncated", text='{"task_id": "t'),
            Body("nan", text='{"task_id": NaN, "encrypted_task_id": Infinity}'),
            Body("deep_array", text="[" * 100_000),
            Body("empty", text=""),
        ]
    ),
    _deep("deep", {"task_id": 7}),
    _huge("huge", {"task_id": "task-huge"}, over=True),
)


async def test_broker_stores_no_garbage_task(
    start_broker: StartBroker,
    emulator: Emulator,
    log_output: list[dict[str, Any]],
    request: pytest.FixtureRequest,
) -> None:
    """A garbage task registration answer: Bearer TASK_REGISTRATION_UNAVAILABLE (background) or
    UNAVAILABLE (thread), nothing stored, one request; then a proper task whose assertion verifies."""
    bridge = LoopBridge(asyncio.get_running_loop())
    tally = Tally(request.node.name)
    broker = await start_broker(env=UNMETERED_THREADS)
    admin = apb_grpc.CredentialBrokerAdminStub(broker.channel)
    authorizer = broker.app.authorizer
    runtime = authorizer.runtime("")
    first = await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(), timeout=5)
    assert first.authorization.scheme == pb.SCHEME_AGENT_ASSERTION
    record = await authorizer.identity_manager.peek(runtime)
    assert record is not None
    other = new_key()
    threads = iter(range(1_000_000))

    async def one_case(thread_id: str, text: str) -> tuple[str, str]:
        before = emulator.stats().requests_by_endpoint.get("register_task", 0)
        if not thread_id:
            await admin.RevokeTask(apb.RevokeTaskRequest(), timeout=5)
        emulator.inject_fault("register_task", status=200, body=text)
        asked = pb.GetAuthorizationRequest(thread_id=thread_id)
        if thread_id:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await broker.stub.GetAuthorization(asked, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
            assert error_reason(caught.value) == "TASK_REGISTRATION_UNAVAILABLE"
            assert DEV_TOKEN not in (caught.value.details() or "")
            outcome = "thread_unavailable"
        else:
            auth = (await broker.stub.GetAuthorization(asked, timeout=5)).authorization
            assert auth.scheme == pb.SCHEME_BEARER
            assert auth.fallback_reason == pb.FALLBACK_REASON_TASK_REGISTRATION_UNAVAILABLE
            outcome = "background_bearer"
        after = emulator.stats().requests_by_endpoint.get("register_task", 0)
        assert after - before == 1, "a malformed answer was retried"
        assert await authorizer.tasks.peek(record, task_slot(thread_id)) is None
        # The fault is used up: the next call registers a proper task, stores it, and it verifies.
        good = await broker.stub.GetAuthorization(
            pb.GetAuthorizationRequest(thread_id=thread_id), timeout=5
        )
        auth = good.authorization
        assert auth.scheme == pb.SCHEME_AGENT_ASSERTION
        stored = await authorizer.tasks.peek(record, task_slot(thread_id))
        assert stored is not None
        assert stored.task_id == auth.task_id
        assert auth.task_id in {t.task_id for t in emulator.tasks()}
        assert (await call_protected(emulator.base_url, auth)).status_code == 200
        return outcome, auth.task_id

    @settings(FUZZ_SETTINGS, max_examples=40)
    @given(st.booleans(), invalid_task_bodies)
    def garbage(background: bool, body: Body) -> None:
        thread_id = "" if background else f"fz-garbage-{next(threads)}"
        text = body.render(record.key, other)
        outcome, _ = bridge.run(one_case(thread_id, text), 15.0)
        tally.add(f"{outcome}:{body.kind}")

    for pinned in PINNED_TASK_BODIES:
        if expected_task_id(pinned, pinned.render(record.key, other).encode()) is None:
            garbage = example(False, pinned)(garbage)
    await run_property(garbage)
    assert len(emulator.identities()) == 1
    assert DEV_TOKEN not in json.dumps(log_output, default=repr)
    tally.report()
    assert tally.total >= 30
