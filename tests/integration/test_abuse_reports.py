"""Attack: rejection reports as a lever on the control plane and on the account's login.

Against real brokers (real Redis, the emulator over HTTP, gRPC on loopback):

* a made-up envelope naming the current task must not replace it (it used to replace the fleet's
  background task, and 20 forged reports replaced 20 thread tasks at once);
* genuine reports are acted on at most once per interval fleet-wide, however many replicas get them;
* a storm of reports of the account's current Bearer must not become a storm of OAuth refreshes
  (each rotates the single-use refresh token: 25 reports used to make 25 refreshes in 0.2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.core.protocol.assertion import build_assertion
from broker.core.protocol.keys import AgentKey
from cb_emulator import Emulator
from tests.fixtures.broker import RunningBroker, StartBroker
from tests.integration.helpers import error_reason

pytestmark = pytest.mark.integration


def forge(authorization: pb.Authorization) -> str:
    """An envelope naming the real runtime and task, signed with a key that is not the broker's."""
    stranger = AgentKey.generate(os.urandom(64))
    envelope = build_assertion(
        stranger,
        authorization.agent_runtime_id,
        authorization.agent_runtime_id,
        authorization.task_id,
        datetime.now(UTC),
    )
    return envelope.header_value()


async def report(broker: RunningBroker, header_value: str) -> pb.ReportRejectionResponse:
    return await broker.stub.ReportRejection(
        pb.ReportRejectionRequest(header_value=header_value, http_status=401)
    )


async def test_a_forged_report_replaces_nothing(
    identity_name: str, start_broker: StartBroker, redis_url: str, emulator: Emulator
) -> None:
    broker = await start_broker(redis_url=redis_url, identity=identity_name)
    background = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    threads = [
        (
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(thread_id=f"t{i}"))
        ).authorization
        for i in range(20)
    ]
    before = emulator.stats().task_registrations

    outcomes = await asyncio.gather(
        *(report(broker, forge(a)) for a in [background, *threads]), return_exceptions=True
    )

    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes), outcomes
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert {o.code() for o in refused} == {grpc.StatusCode.PERMISSION_DENIED}
    assert {error_reason(o) for o in refused} == {"REPORT_REFUSED"}
    assert emulator.stats().task_registrations == before  # nothing was replaced
    still = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    assert still.task_id == background.task_id


async def test_refused_reports_are_counted_per_caller(
    start_broker: StartBroker, log_output: list[dict[str, object]]
) -> None:
    broker = await start_broker()
    background = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await report(broker, forge(background))
    denials = [
        e for e in log_output if e["event"] == "caller.denied" and e["rule"] == "report_not_ours"
    ]
    assert len(denials) == 3
    usage = broker.app.gate.usage
    assert sum(u.by_rule["report_not_ours"] for u in usage.values()) == 3


async def test_genuine_reports_replace_once_per_interval_across_replicas(
    identity_name: str, start_broker: StartBroker, redis_url: str, emulator: Emulator
) -> None:
    replicas = [await start_broker(redis_url=redis_url, identity=identity_name) for _ in range(3)]
    first = (await replicas[0].stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    emulator.revoke_task(first.task_id)
    before = emulator.stats().task_registrations

    outcomes = await asyncio.gather(
        *(report(replicas[i % 3], first.header_value) for i in range(30))
    )

    assert emulator.stats().task_registrations - before == 1
    assert sum(o.replaced for o in outcomes) == 1
    replacement = {o.authorization.task_id for o in outcomes}
    assert len(replacement) == 1
    assert replacement != {first.task_id}
    # the replacement itself, reported at once from every replica: throttled, nothing registered
    fresh = outcomes[0].authorization.header_value
    again = await asyncio.gather(*(report(r, fresh) for r in replicas))
    assert not any(o.replaced for o in again)
    assert emulator.stats().task_registrations - before == 1


async def test_bearer_reports_cannot_burn_the_login(
    identity_name: str,
    start_broker: StartBroker,
    redis_url: str,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps(emulator.create_login("acct-dev", user_id="user-dev")))
    env = {
        "BROKER_ACCOUNT_SOURCE": "login",
        "BROKER_ACCOUNT_FILE": str(auth_file),
        "BROKER_OAUTH_ISSUER": emulator.issuer_url,
        "BROKER_OAUTH_CLIENT_ID": emulator.oauth_client_id,
        "BROKER_REJECTION_MIN_INTERVAL": "30",
    }
    replicas = [
        await start_broker(redis_url=redis_url, identity=identity_name, token=None, env=env)
        for _ in range(3)
    ]
    bearer_only = pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)

    async def current() -> str:
        answer = await replicas[0].stub.GetAuthorization(bearer_only)
        return answer.authorization.header_value

    # 25 reports of the current Bearer at once, over 3 replicas: one refresh, and every reporter
    # gets the new token (it waits for the refresh in flight rather than get the refused one).
    old = await current()
    outcomes = await asyncio.gather(*(report(replicas[i % 3], old) for i in range(25)))
    assert emulator.stats().refreshes == 1
    assert old not in {o.authorization.header_value for o in outcomes}
    # Then a caller reports each new token as soon as it has it: within the interval nothing
    # more is refreshed (a throttled report is held until the interval ends, so cut it short).
    fresh = await current()
    for i in range(10):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await replicas[i % 3].stub.ReportRejection(
                pb.ReportRejectionRequest(header_value=fresh, http_status=401), timeout=0.3
            )
    # and made-up tokens: never a refresh, answered at once
    await asyncio.gather(*(report(r, "Bearer made-up-token") for r in replicas))

    assert emulator.stats().refreshes == 1
    assert emulator.stats().refresh_token_reuse == 0
