"""A broker's background jobs survive their failures: a broken invalidation feed is logged and
followed again, so the replica keeps dropping what other replicas invalidate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.clock import SystemClock
from broker.app import build_store
from broker.catalog import problems
from broker.config import load_settings
from broker.core.credentials.ports import Store
from tests.fixtures.broker import StartBroker

pytestmark = pytest.mark.integration

FOLLOW_AGAIN_S = 10.0


def _break_first_feed(store: Store) -> Callable[[], int]:
    """Make the first ``invalidations()`` call of ``store`` fail like a bug would; the next ones
    are the store's own. Returns how many feeds were asked for."""
    feeds = 0
    own = store.invalidations

    def invalidations() -> AsyncIterator[tuple[str, str]]:
        nonlocal feeds
        feeds += 1
        if feeds == 1:
            raise RuntimeError("the invalidation feed broke")
        return own()

    store.invalidations = invalidations  # type: ignore[method-assign]
    return lambda: feeds


async def test_a_broken_invalidation_feed_is_logged_and_followed_again(
    start_broker: StartBroker,
    identity_name: str,
    redis_url: str,
    kek_file: Path,
    log_output: list[dict[str, Any]],
) -> None:
    settings = load_settings(
        {
            "BROKER_LISTEN": "127.0.0.1:0",
            "BROKER_REDIS_URL": redis_url,
            "BROKER_KEK_FILE": str(kek_file),
            "BROKER_ACCOUNT_ID": "acct-dev",
        }
    )
    store = build_store(settings, SystemClock())
    feeds = _break_first_feed(store)
    try:
        replica = await start_broker(redis_url=redis_url, identity=identity_name, store=store)
        other = await start_broker(redis_url=redis_url, identity=identity_name)

        # The failure is written at once, as a bug, with its traceback and a catalogued shape.
        for _ in range(100):
            restarts = [e for e in log_output if e["event"] == "background.restarted"]
            if restarts:
                break
            await asyncio.sleep(0.05)
        assert restarts, "the feed's failure was never logged"
        line = restarts[0]
        assert (line["job"], line["outcome"], line["error_type"]) == (
            "invalidations",
            "failed",
            "RuntimeError",
        )
        assert line["level"] == "error"
        assert "the invalidation feed broke" in line["exception"]
        written = {k: v for k, v in line.items() if k != "log_level"}  # LogCapture's own field
        assert not problems(written)

        # ...and the replica follows the feed again: another replica's flush empties its L1.
        deadline = asyncio.get_running_loop().time() + FOLLOW_AGAIN_S
        while True:
            await replica.stub.GetAuthorization(pb.GetAuthorizationRequest(), timeout=10)
            assert replica.app.authorizer.cache_state(identity_name)[0] == 1
            await other.app.admin.flush(identity_name)
            await asyncio.sleep(0.2)
            if replica.app.authorizer.cache_state(identity_name)[0] == 0:
                break
            assert asyncio.get_running_loop().time() < deadline, (
                "the replica never followed invalidations again after its feed broke"
            )
        assert feeds() == 2
        assert replica.app.background.restarts == {"invalidations": 1, "health": 0, "stats": 0}
    finally:
        await store.close()
