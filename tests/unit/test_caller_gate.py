"""The caller gate's lookup-time admission: a token caller recognised from the metadata grpc
decoded to find the method, and the callers whose calls need nothing checked per call."""

from __future__ import annotations

import pytest

from broker.adapters.clock import SystemClock
from broker.core.callers import LOCAL_CALLER, CallerPolicy, CallerRegistry, hash_token
from broker.errors import CallerDenied, RateLimited
from broker.transport.grpc.callers import ADMIN_PREFIX, CallerGate

GET = "/credential_broker.v1.CredentialBroker/GetAuthorization"
ADMIN = ADMIN_PREFIX + "ListIdentities"
HEALTH = "/grpc.health.v1.Health/Check"

WORKER = CallerPolicy(name="worker", token_sha256=hash_token("worker-token"))
OPS = CallerPolicy(name="ops", token_sha256=hash_token("ops-token"), admin=True)
LIMITED = CallerPolicy(
    name="limited", token_sha256=hash_token("limited-token"), rate_per_second=1.0, burst=1.0
)


def gate(*policies: CallerPolicy) -> CallerGate:
    return CallerGate(CallerRegistry(policies, SystemClock()))


def metadata(value: str) -> tuple[tuple[str, str], ...]:
    return (("user-agent", "test"), ("authorization", value))


class TestTokenCaller:
    @pytest.mark.parametrize(
        "value", ["Bearer worker-token", "bearer worker-token", "  Bearer   worker-token  "]
    )
    def test_recognises_a_configured_token(self, value: str) -> None:
        """The same tokens the per-call admission accepts, spelt as workers spell them."""
        assert gate(WORKER, OPS).token_caller(metadata(value)) is WORKER

    @pytest.mark.parametrize(
        "found", [(), metadata("Bearer wrong"), metadata("Basic worker-token"), None]
    )
    def test_anything_else_is_left_to_the_admission(
        self, found: tuple[tuple[str, str], ...] | None
    ) -> None:
        """No token, an unknown one or another scheme: no caller, so the call is authenticated
        (and denied, with its reason) by the per-call admission."""
        assert gate(WORKER).token_caller(found) is None

    def test_unknown_tokens_keep_nothing(self) -> None:
        """A hostile caller's guesses are never remembered: only a configured caller's header is
        kept, and the table of kept headers stays bounded."""
        checked = gate(WORKER)
        for guess in range(2_000):
            assert checked.token_caller(metadata(f"Bearer guess-{guess}")) is None
        assert not checked._by_header  # the memory this test bounds
        for spaces in range(3_000):
            assert checked.token_caller(metadata("Bearer worker-token" + " " * spaces)) is WORKER
        assert 0 < len(checked._by_header) <= 1024


class TestFixedCaller:
    def test_open_broker(self) -> None:
        """On an open broker every call but health's is the local caller's."""
        open_gate = gate()
        assert not open_gate.authenticates
        assert open_gate.fixed_caller(GET) is LOCAL_CALLER
        assert open_gate.fixed_caller(HEALTH) is None

    def test_configured_callers(self) -> None:
        """A known caller is fixed only where nothing can refuse its call."""
        secured = gate(WORKER, OPS, LIMITED)
        assert secured.authenticates
        assert secured.fixed_caller(GET) is None  # nobody is authenticated yet
        assert secured.fixed_caller(GET, WORKER) is WORKER
        assert secured.fixed_caller(ADMIN, WORKER) is None  # refused: not an admin
        assert secured.fixed_caller(ADMIN, OPS) is OPS
        assert secured.fixed_caller(GET, LIMITED) is None  # every call spends its rate

    def test_admission_of_still_refuses(self) -> None:
        """A caller authenticated at lookup is still held to the admin rule and its rate."""
        secured = gate(WORKER, LIMITED)
        with pytest.raises(CallerDenied):
            secured.admission_of(ADMIN, WORKER)(None)  # type: ignore[arg-type]
        admit = secured.admission_of(GET, LIMITED)
        assert admit(None) is LIMITED  # type: ignore[arg-type]
        with pytest.raises(RateLimited):
            admit(None)  # type: ignore[arg-type]
        usage = secured.usage
        assert usage["worker"].by_rule["admin"] == 1
        assert usage["limited"].rate_limited == 1
