"""The shared cache on a real Redis Cluster (3 masters with a replica each, created with
``redis-cli --cluster create``): tokens spread over every shard, an entry and its lock in
one slot, MOVED followed, and a killed master that costs no request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from processes import (
    app_environment,
    burst_makes_one_exchange,
    two_apps_share_one_exchange,
)

from flask_ias_pkce import IASPKCE
from flask_ias_pkce.redis_cache import SafeRedisCache
from flask_ias_pkce.testing import IASEmulator, token_cache_backend, token_cache_key
from flask_ias_pkce.testing.redis_server import RedisClusterServer, _free_port

from helpers import bearer, build_app

SECRET = "test-cache-secret-that-is-long-enough-0123456789"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    """One cluster for the module; a test that kills a node brings it back."""
    with RedisClusterServer(masters=3, replicas=1) as started:
        yield started


@pytest.fixture
def empty_cluster(cluster: RedisClusterServer) -> RedisClusterServer:
    cluster.wait_until_ok()
    for node in cluster.master_nodes():
        with node.client() as client:
            client.flushall()
    return cluster


def cluster_config(cluster: RedisClusterServer, **more: Any) -> dict[str, Any]:
    return {
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_URL": cluster.url,
        "IAS_PKCE_CACHE_REDIS_CLUSTER": True,
        "IAS_PKCE_CACHE_SECRET": SECRET,
        **more,
    }


def backend(app: Flask) -> SafeRedisCache:
    cache = token_cache_backend(app)
    assert isinstance(cache, SafeRedisCache)
    return cache


def keys_per_master(cluster: RedisClusterServer) -> list[int]:
    counts = []
    for node in cluster.master_nodes():
        with node.client() as client:
            counts.append(int(client.dbsize()))
    return counts


def exchange_until_every_shard_holds_one(
    ias: IASEmulator, client: FlaskClient, cluster: RedisClusterServer
) -> list[str]:
    """New tokens, each exchanged through ``client``, until every master of ``cluster``
    holds one more entry than before. Keys spread by hash, so how many it takes varies: a
    fixed number of tokens missed a shard in some runs (12 tokens: about 1 run in 40)."""
    before = keys_per_master(cluster)
    tokens: list[str] = []
    while not tokens or not all(
        n > b for n, b in zip(keys_per_master(cluster), before, strict=True)
    ):
        assert len(tokens) < 100, "100 tokens never reached every shard"
        token = ias.issue_public_token(sub=f"user-{len(tokens)}")
        assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is False
        tokens.append(token)
    return tokens


def test_two_apps_share_tokens_spread_over_every_shard(
    ias_emulator: IASEmulator, empty_cluster: RedisClusterServer
) -> None:
    one = build_app(ias_emulator, **cluster_config(empty_cluster)).test_client()
    other = build_app(ias_emulator, **cluster_config(empty_cluster)).test_client()
    assert len(keys_per_master(empty_cluster)) == 3

    tokens = exchange_until_every_shard_holds_one(ias_emulator, one, empty_cluster)
    second = [other.get("/api/me", headers=bearer(token)).json["from_cache"] for token in tokens]

    assert second == [True] * len(tokens)
    assert len(ias_emulator.exchanges) == len(tokens)


def test_two_gunicorn_apps_share_one_exchange_through_the_cluster(
    ias_emulator: IASEmulator, empty_cluster: RedisClusterServer
) -> None:
    two_apps_share_one_exchange(
        ias_emulator, app_environment(ias_emulator, **cluster_config(empty_cluster))
    )


def test_burst_over_four_workers_on_the_cluster_makes_one_exchange(
    ias_emulator: IASEmulator, empty_cluster: RedisClusterServer
) -> None:
    environment = app_environment(ias_emulator, **cluster_config(empty_cluster))
    burst_makes_one_exchange(ias_emulator, environment)


def test_entry_lock_and_wait_live_in_one_slot(empty_cluster: RedisClusterServer) -> None:
    cache = SafeRedisCache.from_url(empty_cluster.url, cluster=True)
    key = "iaspkce:exchange-abc:" + "0f" * 32
    lock = cache.lock(key + ":lock", ttl_ms=5000)
    assert lock.acquire()
    with empty_cluster.client() as raw:
        names = sorted(raw.keys("*", target_nodes=redis.RedisCluster.PRIMARIES))
        slots = {raw.keyslot(name) for name in [*names, cache._key(key)]}
    assert names == [f"iaspkce:{{{key}}}:lock".encode()]
    assert len(slots) == 1

    def store() -> None:
        time.sleep(0.1)
        cache.set(key, b"sealed", timeout=30)
        lock.release()

    threading.Thread(target=store).start()
    assert cache.wait_for(key, 5.0, lock_key=key + ":lock") == b"sealed"
    assert lock.release() is False  # released once, by its owner


def test_many_keys_delete_and_clear_work_across_slots(empty_cluster: RedisClusterServer) -> None:
    cache = SafeRedisCache.from_url(empty_cluster.url, cluster=True)
    names = [f"k{n}" for n in range(30)]
    assert sorted(cache.set_many({name: name.encode() for name in names}, timeout=30)) == sorted(
        names
    )
    assert cache.get_many(*names) == [name.encode() for name in names]
    assert all(count > 0 for count in keys_per_master(empty_cluster))
    assert cache.delete_many("k0", "k1") == ["k0", "k1"]
    assert cache.get_many("k0", "k2") == [None, b"k2"]
    assert cache.clear() is True
    assert sum(keys_per_master(empty_cluster)) == 0
    assert cache.available


def test_moved_after_a_manual_failover_is_followed(
    ias_emulator: IASEmulator, empty_cluster: RedisClusterServer
) -> None:
    app = build_app(ias_emulator, **cluster_config(empty_cluster, IAS_PKCE_L1_SIZE=0))
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is False
    name = backend(app)._key(token_cache_key(app, token))
    old = empty_cluster.master_of(name)
    replica = next(
        node
        for node in empty_cluster.nodes
        if node.running
        and node is not old
        and node.client().info("replication").get("master_port") == old.port
    )
    # The replica takes over in agreement with its master: the old master now answers
    # MOVED for the slot, with no outage at all.
    with replica.client() as raw:
        raw.execute_command("CLUSTER", "FAILOVER")
    for _ in range(100):
        if empty_cluster.master_of(name) is replica:
            break
        time.sleep(0.05)
    empty_cluster.wait_until_ok()

    answer = client.get("/api/me", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.json["from_cache"] is True
    assert len(ias_emulator.exchanges) == 1
    assert backend(app).available


def test_killed_master_costs_no_request_and_sharing_resumes(
    ias_emulator: IASEmulator, empty_cluster: RedisClusterServer
) -> None:
    one = build_app(ias_emulator, **cluster_config(empty_cluster)).test_client()
    other = build_app(ias_emulator, **cluster_config(empty_cluster)).test_client()
    # Both apps know the cluster (its nodes and slots) before one of its masters dies.
    warm = ias_emulator.issue_public_token()
    assert one.get("/api/me", headers=bearer(warm)).status_code == 200
    assert other.get("/api/me", headers=bearer(warm)).json["from_cache"] is True
    victim = empty_cluster.master_nodes()[0]
    empty_cluster.kill(victim)
    killed_at = time.monotonic()

    statuses: list[int] = []
    slowest = 0.0
    resumed_after: float | None = None
    try:
        while time.monotonic() - killed_at < 30:
            # Fresh tokens, so that every round needs the cluster (every slot, the dead
            # master's included) to share.
            tokens = [ias_emulator.issue_public_token() for _ in range(6)]
            exchanges_before = len(ias_emulator.exchanges)
            time.sleep(0.2)
            for token in tokens:
                for client in (one, other):
                    started = time.monotonic()
                    statuses.append(client.get("/api/me", headers=bearer(token)).status_code)
                    slowest = max(slowest, time.monotonic() - started)
            if len(ias_emulator.exchanges) - exchanges_before == len(tokens):
                resumed_after = time.monotonic() - killed_at
                break
    finally:
        victim.start()
        empty_cluster.wait_until_ok()

    assert set(statuses) == {200}
    assert slowest < 5.0
    assert resumed_after is not None, "sharing did not resume within 30 s"


def test_app_starts_while_the_cluster_is_unreachable(ias_emulator: IASEmulator) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    app = build_app(
        ias_emulator,
        IAS_PKCE_CACHE_TYPE="RedisCache",
        IAS_PKCE_CACHE_REDIS_URL=url,
        IAS_PKCE_CACHE_REDIS_CLUSTER=True,
        IAS_PKCE_CACHE_SECRET=SECRET,
    )
    answer = app.test_client().get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 200
    assert not backend(app).available
    assert backend(app).mode == "Redis Cluster"
    with pytest.raises(redis.ConnectionError):
        backend(app).client  # noqa: B018 - tried again at most once a second


def test_cluster_mode_from_a_bound_redis_cache_service(
    ias_emulator: IASEmulator, empty_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    vcap = ias_emulator.vcap_services()
    first = empty_cluster.nodes[0]
    vcap["redis-cache"] = [
        {
            "label": "redis-cache",
            "name": "cache",
            "credentials": {
                "hostname": first.host,
                "port": first.port,
                "password": "",
                "tls": False,
                "cluster_mode": True,
            },
        }
    ]
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(vcap))
    app = Flask("bound_cluster")
    app.config.update(
        IAS_PKCE_CACHE_TYPE="RedisCache",
        IAS_PKCE_CACHE_SECRET=SECRET,
        IAS_PKCE_VERIFY=ias_emulator.ca_file,
        IAS_PKCE_ACCEPTED_AUDIENCES=[ias_emulator.public_client_id],
    )
    IASPKCE(app)
    app.add_url_rule("/x", "x", lambda: "x")
    tokens = [ias_emulator.issue_public_token(sub=f"u{n}") for n in range(12)]
    answers = [app.test_client().get("/x", headers=bearer(token)) for token in tokens]

    assert [answer.status_code for answer in answers] == [200] * 12
    assert backend(app).mode == "Redis Cluster"
    assert backend(app).available
    assert sum(keys_per_master(empty_cluster)) == 12


def test_check_command_names_the_cluster(
    ias_emulator: IASEmulator, empty_cluster: RedisClusterServer
) -> None:
    from flask_ias_pkce.cli import ias_pkce

    app = build_app(ias_emulator, **cluster_config(empty_cluster))
    result = app.test_cli_runner().invoke(ias_pkce, ["check"])

    assert result.exit_code == 0, result.output
    assert "PASS  cache        Redis Cluster at 127.0.0.1:" in result.output


def test_a_cluster_client_given_directly_is_recognised(empty_cluster: RedisClusterServer) -> None:
    cache = SafeRedisCache(empty_cluster.client())
    assert cache.mode == "Redis Cluster"
    assert cache.where.startswith("127.0.0.1:")
    assert cache.set("k", b"v", timeout=10)
    assert cache._key("k") == "iaspkce:{k}"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda url: SafeRedisCache.from_url(url, cluster=True, key_prefix="app{1}:"),
            "must not contain",
        ),
        (
            lambda url: build_app_with(url, IAS_PKCE_CACHE_REDIS_CLUSTER="yes"),
            "IAS_PKCE_CACHE_REDIS_CLUSTER must be True or False",
        ),
    ],
)
def test_wrong_cluster_settings_are_refused(
    empty_cluster: RedisClusterServer, make: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(empty_cluster.url)


def build_app_with(url: str, **config: Any) -> Flask:
    with IASEmulator() as ias:
        return build_app(
            ias,
            IAS_PKCE_CACHE_TYPE="RedisCache",
            IAS_PKCE_CACHE_REDIS_URL=url,
            IAS_PKCE_CACHE_SECRET=SECRET,
            **config,
        )


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[RedisClusterServer]:
    """A cluster that speaks TLS only (clients, cluster bus, replication), as SAP BTP's
    cluster plans do."""
    with RedisClusterServer(masters=3, tls=True, password="cluster-pass") as started:
        yield started


def test_two_apps_share_tokens_through_a_tls_cluster(
    ias_emulator: IASEmulator, tls_cluster: RedisClusterServer
) -> None:
    config = cluster_config(tls_cluster, IAS_PKCE_CACHE_REDIS_CA=str(tls_cluster.tls.ca_file))
    assert config["IAS_PKCE_CACHE_REDIS_URL"].startswith("rediss://")
    one = build_app(ias_emulator, **config)
    other = build_app(ias_emulator, **config)

    tokens = exchange_until_every_shard_holds_one(ias_emulator, one.test_client(), tls_cluster)
    second = [other.test_client().get("/api/me", headers=bearer(t)).json for t in tokens]

    assert [answer["from_cache"] for answer in second] == [True] * len(tokens)
    assert len(ias_emulator.exchanges) == len(tokens)
    assert backend(one).mode == "Redis Cluster over TLS"
