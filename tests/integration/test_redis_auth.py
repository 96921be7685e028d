"""Redis Sentinel and Cluster with passwords and TLS: parsed from the URL, then used for real.

``redis+sentinel://`` used to take no TLS and ask the sentinels without credentials, so a sentinel
with ``requirepass`` could not be used at all and the traffic to it and to the master was cleartext.
Now ``rediss+sentinel://`` and ``rediss+cluster://`` speak TLS to every node (``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile`` query parameters), and ``sentinel_password`` (with
``sentinel_username``) authenticates to the sentinels.

The real tests start a master and a sentinel that both require passwords (tests/fixtures/
secured_redis.py), once over cleartext and once over TLS only, and drive a real broker wired to the
real emulator through them: it works with the passwords and fails, saying why, without them. A
three-node TLS cluster with a password carries a broker too (marked slow, like the other clusters).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelManagedSSLConnection

from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker.adapters.sealing import KekSealer
from broker.adapters.store import RedisStore
from broker.adapters.store._redis_client import (
    SentinelMaster,
    Topology,
    describe_url,
    make_client,
    parse_topology,
)
from broker.config import load_settings
from broker.errors import ConfigError, StoreUnavailable
from cb_emulator import Emulator
from tests.fixtures.broker import StartBroker
from tests.fixtures.secured_redis import (
    SecuredCluster,
    SecuredSentinelSet,
    TlsFiles,
    start_secured_cluster,
    start_secured_sentinel_set,
)
from tests.integration.helpers import call_protected, error_reason

pytestmark = pytest.mark.integration

KEK = KekSealer([("test", bytes(range(32)))])
DATA_PASSWORD = "data-pw-0123456789"
SENTINEL_PASSWORD = "sentinel-pw-0123456789"


def _identity() -> str:
    return "t" + uuid.uuid4().hex


class TestUrls:
    def test_tls_sentinel_with_sentinel_credentials(self) -> None:
        """rediss+sentinel:// takes TLS files and the sentinels' own credentials (percent-encoded)."""
        url = (
            "rediss+sentinel://ops:p%40ss@s1:26380,s2/main/1?sentinel_username=watch"
            "&sentinel_password=s%2Bp%26w+x&ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem"
            "&ssl_keyfile=/k.pem"
        )
        assert parse_topology(url) == Topology(
            "sentinel",
            (("s1", 26380), ("s2", 26379)),
            "main",
            1,
            "ops",
            "p@ss",
            tls=True,
            sentinel_username="watch",
            sentinel_password="s+p&w+x",
            ssl_ca_certs="/etc/ca.pem",
            ssl_certfile="/c.pem",
            ssl_keyfile="/k.pem",
        )

    def test_tls_cluster(self) -> None:
        """rediss+cluster:// is a TLS cluster; the password is the data nodes'."""
        assert parse_topology("rediss+cluster://:pw@n1:7000,n2?ssl_ca_certs=/ca.pem") == Topology(
            "cluster", (("n1", 7000), ("n2", 6379)), password="pw", tls=True, ssl_ca_certs="/ca.pem"
        )

    def test_plain_sentinel_is_unchanged(self) -> None:
        """Without query parameters the cleartext form parses as before (no TLS, no credentials)."""
        topology = parse_topology("redis+sentinel://h:1/svc")
        assert topology == Topology("sentinel", (("h", 1),), "svc")
        assert not topology.tls

    @pytest.mark.parametrize(
        ("url", "fragment"),
        [
            ("redis+sentinel://h/svc?ssl_ca_certs=/ca.pem", "rediss+sentinel://"),
            ("redis+cluster://h?ssl_keyfile=/k.pem", "rediss+cluster://"),
            ("rediss+cluster://h?sentinel_password=x", "sentinel_password"),
            ("redis+sentinel://h/svc?ssl=true", "ssl"),
            ("redis+sentinel://h/svc?sentinel_password=a&sentinel_password=b", "twice"),
            ("redis+sentinel://h/svc?sentinel_password", "sentinel_password=VALUE"),
        ],
    )
    def test_refused(self, url: str, fragment: str) -> None:
        """Misplaced, unknown, repeated or empty parameters are refused naming BROKER_REDIS_URL."""
        with pytest.raises(ConfigError, match="BROKER_REDIS_URL") as caught:
            parse_topology(url)
        assert fragment in caught.value.message
        assert "=a" not in caught.value.message

    def test_no_secret_is_shown(self) -> None:
        """Neither the description nor the repr carries a password."""
        url = "rediss+sentinel://:hunter2@a:1/main?sentinel_password=swordfish&ssl_ca_certs=/ca"
        topology = parse_topology(url)
        for text in (describe_url(url), repr(topology)):
            assert "hunter2" not in text
            assert "swordfish" not in text
        assert describe_url(url) == "sentinel main via a:1 (tls)"

    @pytest.mark.parametrize(
        "url",
        [
            "rediss+sentinel://:pw@10.0.0.1:26379/main/0?sentinel_password=sp",
            "rediss+cluster://:pw@10.0.0.1:6379,10.0.0.2:6379",
        ],
    )
    def test_configuration_accepts_tls_forms(self, url: str) -> None:
        """BROKER_REDIS_URL takes the TLS topology forms."""
        assert load_settings({"BROKER_REDIS_URL": url}).redis_url == url

    async def test_sentinel_client_carries_tls_and_both_passwords(self, tmp_path: Path) -> None:
        """The sentinels are asked with their password over TLS; the master with its own."""
        ca = tmp_path / "ca.pem"
        ca.write_text("not read until a connection is made\n")
        url = f"rediss+sentinel://:dp@127.0.0.1:1/main?sentinel_password=sp&ssl_ca_certs={ca}"
        client = make_client(url, socket_timeout=1, connect_timeout=None, retries=0)
        try:
            assert isinstance(client, SentinelMaster)
            assert client.sentinel_manager is not None
            watcher: dict[str, Any] = dict(client.sentinel_manager.sentinel_kwargs)
            assert (watcher["password"], watcher["ssl"], watcher["ssl_ca_certs"]) == (
                "sp",
                True,
                str(ca),
            )
            pool = client.connection_pool
            assert pool.connection_class is SentinelManagedSSLConnection
            assert pool.connection_kwargs["password"] == "dp"
            assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
        finally:
            await client.aclose()

    async def test_cluster_client_carries_tls(self, tmp_path: Path) -> None:
        """A rediss+cluster:// client connects to every node over TLS."""
        ca = tmp_path / "ca.pem"
        ca.write_text("not read until a connection is made\n")
        url = f"rediss+cluster://:dp@127.0.0.1:1?ssl_ca_certs={ca}"
        client = make_client(url, socket_timeout=1, connect_timeout=None, retries=0)
        try:
            assert isinstance(client, RedisCluster)
            settings = client.get_connection_kwargs()
            assert settings["connection_class"] is SSLConnection
            assert settings["ssl_ca_certs"] == str(ca)
            assert settings["password"] == "dp"
        finally:
            await client.aclose()

    def test_missing_tls_file_refused(self, tmp_path: Path) -> None:
        """A TLS file that does not exist is a ConfigError at start, not a failure per command."""
        url = f"rediss+sentinel://127.0.0.1:1/main?ssl_ca_certs={tmp_path / 'missing.pem'}"
        with pytest.raises(ConfigError, match="BROKER_REDIS_URL: ssl_ca_certs"):
            make_client(url, socket_timeout=1, connect_timeout=None, retries=0)


@pytest.fixture(name="secured_set", scope="module")
def fixture_secured_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredSentinelSet]:
    """A master and a sentinel, both with requirepass, over cleartext; stopped after."""
    processes = start_secured_sentinel_set(
        tmp_path_factory.mktemp("secured"),
        data_password=DATA_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    )
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture(name="tls_set", scope="module")
def fixture_tls_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredSentinelSet]:
    """The same over TLS only (no cleartext port anywhere); stopped after."""
    root = tmp_path_factory.mktemp("secured-tls")
    processes = start_secured_sentinel_set(
        root,
        data_password=DATA_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        tls=TlsFiles.create(root / "tls"),
    )
    try:
        yield processes
    finally:
        processes.stop()


async def _ping_error(url: str) -> str:
    store = RedisStore.from_url(url, KEK, socket_timeout=1)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
    finally:
        await store.close()
    return caught.value.message


async def _assertion_verifies(start_broker: StartBroker, emulator: Emulator, url: str) -> None:
    broker = await start_broker(redis_url=url, identity=_identity())
    answer = (await broker.stub.GetAuthorization(pb.GetAuthorizationRequest())).authorization
    assert answer.scheme == pb.SCHEME_AGENT_ASSERTION
    assert (await call_protected(emulator.base_url, answer)).status_code == 200
    assert broker.app.store.shared


class TestSentinelAuth:
    async def test_broker_works_with_both_passwords(
        self, secured_set: SecuredSentinelSet, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """Data and sentinel passwords in the URL: the broker issues assertions that verify."""
        url = secured_set.url(data_password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD)
        await _assertion_verifies(start_broker, emulator, url)

    async def test_broker_without_sentinel_password_fails_clearly(
        self,
        secured_set: SecuredSentinelSet,
        start_broker: StartBroker,
        log_output: list[dict[str, Any]],
    ) -> None:
        """Without the sentinel's password calls fail UNAVAILABLE, naming the refused sentinels."""
        url = secured_set.url(data_password=DATA_PASSWORD)
        broker = await start_broker(redis_url=url, identity=_identity())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broker.stub.GetAuthorization(pb.GetAuthorizationRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "STORE_UNAVAILABLE"
        assert "SentinelAuthenticationError" in (caught.value.details() or "")
        degraded = [e for e in log_output if e["event"] == "store.degraded"]
        assert degraded
        assert degraded[0]["error"] == "SentinelAuthenticationError"
        assert SENTINEL_PASSWORD not in str(log_output)
        assert DATA_PASSWORD not in str(log_output)

    async def test_wrong_sentinel_password_fails_clearly(
        self, secured_set: SecuredSentinelSet
    ) -> None:
        """A wrong sentinel password is the same clear failure."""
        url = secured_set.url(data_password=DATA_PASSWORD, sentinel_password="wrong-password")
        assert "(SentinelAuthenticationError)" in await _ping_error(url)

    async def test_without_data_password_fails_clearly(
        self, secured_set: SecuredSentinelSet
    ) -> None:
        """With the sentinel's password but not the master's, the master's refusal is named."""
        url = secured_set.url(sentinel_password=SENTINEL_PASSWORD)
        assert "(AuthenticationError)" in await _ping_error(url)


class TestSentinelTls:
    async def test_broker_works_over_tls(
        self, tls_set: SecuredSentinelSet, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """rediss+sentinel:// with the CA and both passwords: assertions verify."""
        url = tls_set.url(data_password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD)
        await _assertion_verifies(start_broker, emulator, url)

    async def test_certificate_is_verified(self, tls_set: SecuredSentinelSet) -> None:
        """Without the test CA the servers' certificates are not trusted: no connection."""
        url = tls_set.url(
            data_password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD, ca=False
        )
        assert "unavailable" in await _ping_error(url)

    async def test_cleartext_url_does_not_reach_a_tls_only_set(
        self, tls_set: SecuredSentinelSet
    ) -> None:
        """redis+sentinel:// against TLS-only servers fails instead of falling back."""
        url = tls_set.url(
            data_password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD, tls=False
        )
        assert "unavailable" in await _ping_error(url)


@pytest.fixture(name="tls_cluster", scope="module")
def fixture_tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    """Three TLS-only cluster masters with a password (tls-cluster yes); stopped after."""
    root = tmp_path_factory.mktemp("secured-cluster")
    cluster = start_secured_cluster(root, password=DATA_PASSWORD, tls=TlsFiles.create(root / "tls"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
class TestClusterTls:
    async def test_broker_works_over_a_tls_cluster(
        self, tls_cluster: SecuredCluster, start_broker: StartBroker, emulator: Emulator
    ) -> None:
        """rediss+cluster:// with the CA and the password: assertions verify."""
        await _assertion_verifies(start_broker, emulator, tls_cluster.url())

    async def test_without_password_fails(self, tls_cluster: SecuredCluster) -> None:
        """Without the password the cluster refuses the store."""
        url = tls_cluster.url().replace(f":{DATA_PASSWORD}@", "")
        assert "unavailable" in await _ping_error(url)
