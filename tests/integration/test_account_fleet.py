"""The account's refresh with real replica processes: a replica killed mid-refresh, and a refresh
by one of three processes whose new tokens reach Redis sealed only."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.sealing import load_kek_file
from broker.adapters.store import RedisStore
from cb_emulator import Emulator
from tests.fixtures.fleet import Report, StartFleet
from tests.integration.test_account_login import TOKEN_NAMES, assert_login_sealed, login_tokens

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEARER_ONLY = pb.GetAuthorizationRequest(mode=pb.MODE_BEARER_ONLY)


class TestKilledMidRefresh:
    async def test_refresh_token_never_resent(
        self,
        start_fleet: StartFleet,
        emulator: Emulator,
        redis_url: str,
        identity_name: str,
        tmp_path: Path,
        fleet_report: Report,
    ) -> None:
        """A replica SIGKILLed after its refresh went out: the fleet never resends that token."""
        auth_file = tmp_path / "auth.json"
        auth_file.write_text(json.dumps(emulator.create_login("acct-dev", user_id="user-dev")))
        fleet = await start_fleet(
            redis_url=redis_url,
            identity=identity_name,
            replicas=2,
            env={
                "BROKER_ACCOUNT_SOURCE": "login",
                "BROKER_ACCOUNT_FILE": str(auth_file),
                "BROKER_OAUTH_ISSUER": emulator.issuer_url,
                "BROKER_OAUTH_CLIENT_ID": emulator.oauth_client_id,
                "BROKER_REGISTRATION_DEADLINE": "1",
                # reports act at most once per interval fleet-wide; the survivor's report below
                # must come after it to reach the refresh path that finds the token spent
                "BROKER_REJECTION_MIN_INTERVAL": "0.2",
            },
        )
        old = (await fleet[0].stub.GetAuthorization(BEARER_ONLY)).authorization.header_value
        emulator.fail_after_consuming(count=1, mode="delay", delay_seconds=30)
        report = pb.ReportRejectionRequest(header_value=old, http_status=401)

        async def report_on_first() -> object:
            return await fleet[0].stub.ReportRejection(report, timeout=60)

        hanging = asyncio.create_task(report_on_first())
        for _ in range(200):
            if emulator.stats().requests_by_endpoint.get("oauth_token", 0) >= 1:
                break
            await asyncio.sleep(0.05)
        assert emulator.stats().requests_by_endpoint.get("oauth_token") == 1
        await fleet[0].kill()
        killed_at = time.monotonic()
        hanging.cancel()
        await asyncio.gather(hanging, return_exceptions=True)
        await asyncio.sleep(0.3)  # past the 0.2 s report interval the killed replica started
        await fleet[1].stub.ReportRejection(report, timeout=30)
        recovered_s = time.monotonic() - killed_at
        served = (await fleet[1].stub.GetAuthorization(BEARER_ONLY)).authorization.header_value
        stats = emulator.stats()
        assert stats.requests_by_endpoint["oauth_token"] == 1
        assert stats.refresh_token_reuse == 0
        assert stats.families_revoked == 0
        assert served == old  # still valid, and the only token the fleet may use
        interrupted = fleet[1].events("account.refresh_failed")
        assert any(e.get("reason") == "interrupted" for e in interrupted)
        fleet_report(
            token_requests=stats.requests_by_endpoint["oauth_token"],
            reuse=stats.refresh_token_reuse,
            seconds_until_survivor_answered=round(recovered_s, 2),
        )


class TestCrossingExpiry:
    async def test_three_processes_refresh_once(
        self,
        start_fleet: StartFleet,
        emulator: Emulator,
        redis_url: str,
        identity_name: str,
        tmp_path: Path,
        fleet_report: Report,
    ) -> None:
        """Three replica processes x 200 callers arriving after the expiry: exactly one refresh,
        whose new tokens Redis holds sealed only."""
        login = emulator.create_login("acct-dev", user_id="user-dev", access_lifetime_seconds=6)
        auth_file = tmp_path / "auth.json"
        auth_file.write_text(json.dumps(login))
        fleet = await start_fleet(
            redis_url=redis_url,
            identity=identity_name,
            replicas=3,
            env={
                "BROKER_ACCOUNT_SOURCE": "login",
                "BROKER_ACCOUNT_FILE": str(auth_file),
                "BROKER_OAUTH_ISSUER": emulator.issuer_url,
                "BROKER_OAUTH_CLIENT_ID": emulator.oauth_client_id,
                "BROKER_ACCOUNT_REFRESH_MARGIN": "1",
            },
        )
        expired = login["tokens"]["access_token"]
        await asyncio.sleep(6.5)  # the access token expires: time itself is under test
        started = time.monotonic()
        results = await asyncio.gather(
            *(fleet.stub(i).GetAuthorization(BEARER_ONLY, timeout=30) for i in range(600))
        )
        elapsed = time.monotonic() - started
        stats = emulator.stats()
        headers = {r.authorization.header_value for r in results}
        assert stats.refreshes == 1
        assert stats.refresh_token_reuse == 0
        assert stats.families_revoked == 0
        assert len(headers) == 1
        assert f"Bearer {expired}" not in headers
        # The refreshing replica wrote the new tokens: read back with the fleet's KEK, never clear.
        store = RedisStore.from_url(redis_url, load_kek_file(fleet.env["BROKER_KEK_FILE"]))
        try:
            record = await store.load_account(identity_name)
        finally:
            await store.close()
        assert record is not None
        refreshed = login_tokens(record)
        assert all(refreshed[name] != login["tokens"][name] for name in TOKEN_NAMES)
        assert headers == {f"Bearer {refreshed['access_token']}"}
        imported = {name: login["tokens"][name] for name in TOKEN_NAMES}
        await assert_login_sealed(redis_url, identity_name, refreshed, imported)
        fleet_report(
            callers=600,
            replicas=3,
            refreshes=stats.refreshes,
            reuse=stats.refresh_token_reuse,
            seconds_for_all_callers=round(elapsed, 2),
        )
