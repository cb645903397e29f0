"""The shared cache over TLS, against a real ``redis-server --tls-port`` with its own CA:
verification always on, a client certificate where the server asks for one, and a server
certificate of another CA refused as an outage that costs no request."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import app_environment, two_apps_share_one_exchange

from flask_ias_pkce import ConfigError
from flask_ias_pkce.redis_cache import SafeRedisCache
from flask_ias_pkce.testing import IASEmulator, token_cache_backend
from flask_ias_pkce.testing.redis_server import RedisServer, TLSFiles

from helpers import bearer, build_app


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


SECRET = "test-cache-secret-that-is-long-enough-0123456789"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    """One TLS-only Redis for the module, which insists on a client certificate."""
    with RedisServer(tls=True, client_certificates=True) as server:
        yield server


def tls_config(server: RedisServer, **more: Any) -> dict[str, Any]:
    return {
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_URL": server.url,
        "IAS_PKCE_CACHE_REDIS_CA": str(server.tls.ca_file),
        "IAS_PKCE_CACHE_REDIS_CERT": str(server.tls.client_cert_file),
        "IAS_PKCE_CACHE_REDIS_KEY": str(server.tls.client_key_file),
        "IAS_PKCE_CACHE_SECRET": SECRET,
        **more,
    }


def backend(app: Any) -> SafeRedisCache:
    cache = token_cache_backend(app)
    assert isinstance(cache, SafeRedisCache)
    return cache


def test_two_workers_share_one_exchange_over_tls(
    ias_emulator: IASEmulator, tls_redis: RedisServer
) -> None:
    two_apps_share_one_exchange(
        ias_emulator, app_environment(ias_emulator, **tls_config(tls_redis))
    )


def test_entries_really_go_through_the_tls_server(
    ias_emulator: IASEmulator, tls_redis: RedisServer
) -> None:
    app = build_app(ias_emulator, **tls_config(tls_redis, IAS_PKCE_L1_SIZE=0))
    token = ias_emulator.issue_public_token()
    client = app.test_client()
    assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is False
    assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is True
    assert backend(app).mode == "Redis over TLS"
    assert backend(app).available
    with tls_redis.client() as raw:
        assert raw.dbsize() >= 1


def test_server_certificate_of_another_ca_is_refused_as_an_outage(
    ias_emulator: IASEmulator,
    tls_redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = TLSFiles(tmp_path / "other", name="another CA")
    app = build_app(
        ias_emulator,
        **tls_config(tls_redis, IAS_PKCE_CACHE_REDIS_CA=str(other.ca_file), IAS_PKCE_L1_SIZE=0),
    )
    token = ias_emulator.issue_public_token()
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_ias_pkce"):
        answers = [client.get("/api/me", headers=bearer(token)) for _ in range(2)]

    # Served all the same (each request exchanged itself), but nothing was shared.
    assert [answer.status_code for answer in answers] == [200, 200]
    assert len(ias_emulator.exchanges) == 2
    assert not backend(app).available
    messages = [record.getMessage() for record in caplog.records]
    refusals = [message for message in messages if "certificate was refused" in message]
    assert len(refusals) == 1, caplog.text
    assert "Redis over TLS cache at 127.0.0.1:" in refusals[0]
    assert "check IAS_PKCE_CACHE_REDIS_CA" in refusals[0]


def test_without_the_client_certificate_the_server_refuses_and_nothing_fails(
    ias_emulator: IASEmulator, tls_redis: RedisServer
) -> None:
    config = tls_config(tls_redis, IAS_PKCE_L1_SIZE=0)
    del config["IAS_PKCE_CACHE_REDIS_CERT"], config["IAS_PKCE_CACHE_REDIS_KEY"]
    app = build_app(ias_emulator, **config)
    token = ias_emulator.issue_public_token()

    assert app.test_client().get("/api/me", headers=bearer(token)).status_code == 200
    assert not backend(app).available


def test_system_trust_does_not_accept_a_private_ca(
    ias_emulator: IASEmulator, tls_redis: RedisServer
) -> None:
    config = tls_config(tls_redis, IAS_PKCE_L1_SIZE=0)
    del config["IAS_PKCE_CACHE_REDIS_CA"]
    app = build_app(ias_emulator, **config)

    assert app.test_client().get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    assert not backend(app).ping()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url_query": "?ssl_cert_reqs=none"}, "ssl_cert_reqs"),
        ({"url_query": "?ssl_check_hostname=false"}, "ssl_check_hostname"),
        ({"url_query": "?ssl_ca_certs=/etc/ssl/certs"}, "TLS settings in the URL"),
        ({"IAS_PKCE_CACHE_OPTIONS": {"ssl_cert_reqs": "none"}}, "ssl_cert_reqs"),
        ({"IAS_PKCE_CACHE_OPTIONS": {"ssl_check_hostname": False}}, "ssl_check_hostname"),
        ({"IAS_PKCE_CACHE_OPTIONS": {"connection_class": object}}, "connection_class"),
        ({"IAS_PKCE_CACHE_REDIS_CA": "/nonexistent/ca.pem"}, "IAS_PKCE_CACHE_REDIS_CA"),
        ({"scheme": "redis://"}, "need a rediss:// URL"),
        ({"IAS_PKCE_CACHE_REDIS_CERT": None}, "IAS_PKCE_CACHE_REDIS_KEY needs"),
    ],
)
def test_verification_cannot_be_turned_off(
    ias_emulator: IASEmulator, tls_redis: RedisServer, change: dict[str, Any], message: str
) -> None:
    change = dict(change)
    config = tls_config(tls_redis)
    url = config["IAS_PKCE_CACHE_REDIS_URL"]
    if "scheme" in change:
        url = url.replace("rediss://", change.pop("scheme"))
    url += change.pop("url_query", "")
    config.update(change, IAS_PKCE_CACHE_REDIS_URL=url)
    config = {key: value for key, value in config.items() if value is not None}

    with pytest.raises(ConfigError, match=message):
        build_app(ias_emulator, **config)


def test_check_command_shows_the_mode_and_pings(
    ias_emulator: IASEmulator, tls_redis: RedisServer, tmp_path: Path
) -> None:
    from flask_ias_pkce.cli import ias_pkce

    good = build_app(ias_emulator, **tls_config(tls_redis))
    result = good.test_cli_runner().invoke(ias_pkce, ["check"])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("PASS  cache")]
    assert f"Redis over TLS at 127.0.0.1:{tls_redis.port}: PING" in line

    other = TLSFiles(tmp_path / "other", name="another CA")
    bad = build_app(
        ias_emulator, **tls_config(tls_redis, IAS_PKCE_CACHE_REDIS_CA=str(other.ca_file))
    )
    result = bad.test_cli_runner().invoke(ias_pkce, ["check"])
    assert result.exit_code == 1
    [line] = [line for line in result.output.splitlines() if line.startswith("FAIL  cache")]
    assert "certificate was refused" in line
    assert "each exchanges on its own" in result.output
