"""The shared cache behind real Redis Sentinels (``redis-server --sentinel``, a master and
its replica, passwords on both): the master found through the Sentinels, and a failover
followed without a restart, every request answered meanwhile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from processes import app_environment, two_apps_share_one_exchange

from flask_ias_pkce import ConfigError
from flask_ias_pkce.redis_cache import SafeRedisCache
from flask_ias_pkce.testing import IASEmulator, token_cache_backend
from flask_ias_pkce.testing.redis_server import RedisSentinelServer

from helpers import bearer, build_app


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


SECRET = "test-cache-secret-that-is-long-enough-0123456789"


@pytest.fixture(scope="module")
def sentinels() -> Iterator[RedisSentinelServer]:
    """One master, one replica and three Sentinels for the module."""
    with RedisSentinelServer(password="redis-pass", sentinel_password="sentinel-pass") as group:
        yield group


def sentinel_config(group: RedisSentinelServer, **more: Any) -> dict[str, Any]:
    return {
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_SENTINELS": group.sentinel_addresses,
        "IAS_PKCE_CACHE_REDIS_SENTINEL_MASTER": group.service_name,
        "IAS_PKCE_CACHE_REDIS_PASSWORD": group.password,
        "IAS_PKCE_CACHE_REDIS_SENTINEL_PASSWORD": group.sentinel_password,
        "IAS_PKCE_CACHE_SECRET": SECRET,
        **more,
    }


def backend(app: Flask) -> SafeRedisCache:
    cache = token_cache_backend(app)
    assert isinstance(cache, SafeRedisCache)
    return cache


def test_two_gunicorn_apps_share_one_exchange_through_sentinel(
    ias_emulator: IASEmulator, sentinels: RedisSentinelServer
) -> None:
    two_apps_share_one_exchange(
        ias_emulator, app_environment(ias_emulator, **sentinel_config(sentinels))
    )


def test_entries_are_written_to_the_master_the_sentinels_name(
    ias_emulator: IASEmulator, sentinels: RedisSentinelServer
) -> None:
    app = build_app(ias_emulator, **sentinel_config(sentinels))
    app.test_client().get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert backend(app).mode == "Redis Sentinel"
    assert backend(app).available
    assert sentinels.service_name in backend(app).where
    with sentinels.master().client() as raw:
        assert raw.dbsize() >= 1


def test_failover_costs_no_request_and_sharing_resumes(
    ias_emulator: IASEmulator, sentinels: RedisSentinelServer
) -> None:
    one = build_app(ias_emulator, **sentinel_config(sentinels)).test_client()
    other = build_app(ias_emulator, **sentinel_config(sentinels)).test_client()
    warm = ias_emulator.issue_public_token()
    assert one.get("/api/me", headers=bearer(warm)).status_code == 200
    assert other.get("/api/me", headers=bearer(warm)).json["from_cache"] is True

    old = sentinels.kill_master()
    killed_at = time.monotonic()
    statuses: list[int] = []
    slowest = 0.0
    resumed_after: float | None = None
    try:
        while time.monotonic() - killed_at < 30:
            token = ias_emulator.issue_public_token()
            exchanges_before = len(ias_emulator.exchanges)
            for client in (one, other):
                started = time.monotonic()
                statuses.append(client.get("/api/me", headers=bearer(token)).status_code)
                slowest = max(slowest, time.monotonic() - started)
            if len(ias_emulator.exchanges) - exchanges_before == 1:
                resumed_after = time.monotonic() - killed_at
                if sentinels.master() is not old:
                    break
            time.sleep(0.1)
    finally:
        new = sentinels.wait_for_failover(old)
        old.start()  # the Sentinels make it a replica of the new master

    assert set(statuses) == {200}, statuses
    assert slowest < 5.0
    assert resumed_after is not None, "sharing did not resume within 30 s"
    assert sentinels.master() is new is not old


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"IAS_PKCE_CACHE_REDIS_SENTINEL_MASTER": None}, "SENTINEL_MASTER"),
        ({"IAS_PKCE_CACHE_REDIS_SENTINELS": ["localhost"]}, "'host:port'"),
        ({"IAS_PKCE_CACHE_REDIS_SENTINELS": 26379}, "list of 'host:port'"),
        ({"IAS_PKCE_CACHE_REDIS_CLUSTER": True}, "exclude each other"),
        ({"IAS_PKCE_CACHE_REDIS_CA": __file__}, "not supported"),
        ({"IAS_PKCE_CACHE_OPTIONS": {"ssl_cert_reqs": "none"}}, "refused"),
    ],
)
def test_wrong_sentinel_settings_are_refused(
    ias_emulator: IASEmulator, sentinels: RedisSentinelServer, change: dict[str, Any], message: str
) -> None:
    config = {**sentinel_config(sentinels), **change}
    with pytest.raises(ConfigError, match=message):
        build_app(ias_emulator, **config)


def test_sentinels_as_one_comma_separated_string(
    ias_emulator: IASEmulator, sentinels: RedisSentinelServer
) -> None:
    config = sentinel_config(
        sentinels, IAS_PKCE_CACHE_REDIS_SENTINELS=",".join(sentinels.sentinel_addresses)
    )
    assert backend(build_app(ias_emulator, **config)).ping()


def test_check_command_names_the_sentinels(
    ias_emulator: IASEmulator, sentinels: RedisSentinelServer
) -> None:
    from flask_ias_pkce.cli import ias_pkce

    app = build_app(ias_emulator, **sentinel_config(sentinels))
    result = app.test_cli_runner().invoke(ias_pkce, ["check"])

    assert result.exit_code == 0, result.output
    assert "PASS  cache        Redis Sentinel at master 'flask-ias-pkce'" in result.output
