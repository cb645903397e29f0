"""The shared cache with real processes and a real Redis: one exchange per token across
workers and instances, Redis failures that cost no request, and values nobody can plant."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from processes import Gunicorn, app_environment, burst_makes_one_exchange

from flask_ias_pkce import ConfigError
from flask_ias_pkce.cache import Entry, from_bytes, to_bytes
from flask_ias_pkce.sealing import Sealer
from flask_ias_pkce.testing import IASEmulator, token_cache_key
from flask_ias_pkce.testing.redis_server import RedisServer

from helpers import bearer, build_app

SECRET = "test-cache-secret-that-is-long-enough-0123456789"


def redis_config(redis_server: RedisServer, **more: Any) -> dict[str, Any]:
    return {
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_URL": redis_server.url,
        "IAS_PKCE_CACHE_SECRET": SECRET,
        **more,
    }


def test_token_exchanged_by_one_process_is_served_by_another(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    environment = app_environment(ias_emulator, **redis_config(redis_server))
    token = ias_emulator.issue_public_token()
    with Gunicorn(environment) as first, Gunicorn(environment) as second:
        one = requests.get(first.url + "/api/me", headers=bearer(token), timeout=10)
        other = requests.get(second.url + "/api/me", headers=bearer(token), timeout=10)

    assert one.status_code == other.status_code == 200
    assert one.json()["pid"] != other.json()["pid"]
    assert one.json()["from_cache"] is False
    assert other.json()["from_cache"] is True
    assert len(ias_emulator.exchanges) == 1


def test_burst_over_four_workers_makes_one_exchange(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    environment = app_environment(ias_emulator, **redis_config(redis_server))
    burst_makes_one_exchange(ias_emulator, environment)


def test_refused_token_is_refused_again_by_another_process_without_exchange(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    environment = app_environment(ias_emulator, **redis_config(redis_server))
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(
        "/oauth2/token",
        status=400,
        body={"error": "invalid_grant", "error_description": "assertion revoked"},
    )
    with Gunicorn(environment) as first, Gunicorn(environment) as second:
        refused = requests.get(first.url + "/api/me", headers=bearer(token), timeout=10)
        replayed = [
            requests.get(app.url + "/api/me", headers=bearer(token), timeout=10)
            for app in (first, second, second)
        ]

    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert [answer.status_code for answer in replayed] == [401, 401, 401]
    assert len(ias_emulator.exchanges) == 1


def test_requests_succeed_while_redis_is_down_and_caching_resumes(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    # Without the in-process tier every hit goes to Redis, so its absence shows.
    client = build_app(ias_emulator, **redis_config(redis_server, IAS_PKCE_L1_SIZE=0)).test_client()
    first = ias_emulator.issue_public_token()
    assert client.get("/api/me", headers=bearer(first)).json["from_cache"] is False
    assert client.get("/api/me", headers=bearer(first)).json["from_cache"] is True

    redis_server.stop()
    while_down = [client.get("/api/me", headers=bearer(first)) for _ in range(3)]
    assert [answer.status_code for answer in while_down] == [200, 200, 200]
    assert len(ias_emulator.exchanges) == 4  # no cache, so each request exchanged

    redis_server.start()
    second = ias_emulator.issue_public_token()
    assert client.get("/api/me", headers=bearer(second)).json["from_cache"] is False
    assert client.get("/api/me", headers=bearer(second)).json["from_cache"] is True
    assert len(ias_emulator.exchanges) == 5


def test_in_process_tier_serves_hot_tokens_without_redis(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    client = build_app(ias_emulator, **redis_config(redis_server)).test_client()
    token = ias_emulator.issue_public_token()
    client.get("/api/me", headers=bearer(token))
    redis_server.stop()

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.json["from_cache"] is True
    assert len(ias_emulator.exchanges) == 1


def _parts(text: str, size: int = 20) -> set[str]:
    return {text[i : i + size] for i in range(0, len(text) - size + 1)}


def test_redis_holds_neither_tokens_nor_claims_in_clear(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    client = build_app(ias_emulator, **redis_config(redis_server)).test_client()
    token = ias_emulator.issue_public_token()
    claims = client.get("/api/me", headers=bearer(token)).json
    raw = redis_server.client()

    stored = {name: raw.get(name) for name in raw.keys("*")}

    assert len(stored) == 1
    [(name, value)] = stored.items()
    plaintext = Sealer(SECRET).open(value, associated=name)
    assert plaintext is not None  # it is our entry, sealed
    exchanged = from_bytes(plaintext)
    assert isinstance(exchanged, Entry)
    assert exchanged.token
    everything = name + value
    for secret_text in (token, exchanged.token):
        assert not [part for part in _parts(secret_text) if part.encode() in everything]
    for claim in (claims["sub"], ias_emulator.client_id, "alice"):
        assert claim.encode() not in everything


class _Marker:
    path = ""

    def __reduce__(self) -> Any:
        return (Path(self.path).touch, ())


@pytest.mark.parametrize("plant", ["pickle", "garbage", "other_secret", "other_key"])
def test_values_planted_in_redis_are_never_trusted(
    plant: str,
    ias_emulator: IASEmulator,
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build_app(ias_emulator, **redis_config(redis_server))
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    key = token_cache_key(app, token)
    forged = to_bytes(Entry("forged.token.value", 4_102_444_800.0))
    marker = tmp_path / "unpickled"
    _Marker.path = str(marker)
    values = {
        "pickle": pickle.dumps(_Marker()),
        "garbage": b"\x00\xff not a sealed value",
        "other_secret": Sealer("another-secret-of-sufficient-length-0123456789").seal(
            forged, associated=key.encode()
        ),
        "other_key": Sealer(SECRET).seal(forged, associated=b"iaspkce:exchange:another"),
    }
    redis_server.client().set(key, values[plant], px=60_000)

    with caplog.at_level(logging.WARNING, logger="flask_ias_pkce"):
        answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 200
    assert answer.json["from_cache"] is False  # the planted value was not used
    assert len(ias_emulator.exchanges) == 1
    assert not marker.exists()
    assert "failed authentication" in caplog.text


def test_shared_cache_needs_a_secret(ias_emulator: IASEmulator, redis_server: RedisServer) -> None:
    config = redis_config(redis_server)
    del config["IAS_PKCE_CACHE_SECRET"]
    with pytest.raises(ConfigError, match="IAS_PKCE_CACHE_SECRET"):
        build_app(ias_emulator, **config)


def test_short_secret_is_refused(ias_emulator: IASEmulator, redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        build_app(ias_emulator, **redis_config(redis_server, IAS_PKCE_CACHE_SECRET="short"))


@pytest.mark.parametrize(
    "cache_type",
    [
        "flask_caching.backends.RedisCache",
        "flask_caching.backends.rediscache.RedisCache",
        "flask_caching.backends.rediscache.RedisSentinelCache",
        "flask_caching.backends.rediscache.RedisClusterCache",
        "RedisSentinelCache",
        "RedisClusterCache",
    ],
)
def test_pickling_redis_backends_are_refused(
    cache_type: str, ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    with pytest.raises(ConfigError, match="unpickles"):
        build_app(ias_emulator, **redis_config(redis_server, IAS_PKCE_CACHE_TYPE=cache_type))


def test_redis_url_from_a_bound_redis_service(
    ias_emulator: IASEmulator, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    vcap = ias_emulator.vcap_services()
    vcap["redis-cache"] = [
        {
            "label": "redis-cache",
            "name": "cache",
            "credentials": {
                "hostname": "127.0.0.1",
                "port": redis_server.port,
                "password": "",
                "tls": False,
            },
        }
    ]
    monkeypatch.setenv("VCAP_SERVICES", __import__("json").dumps(vcap))
    app = Flask("bound_redis")
    app.config.update(
        IAS_PKCE_CACHE_TYPE="RedisCache",
        IAS_PKCE_CACHE_SECRET=SECRET,
        IAS_PKCE_VERIFY=ias_emulator.ca_file,
    )
    from flask_ias_pkce import IASPKCE

    IASPKCE(app)
    app.add_url_rule("/x", "x", lambda: "x")
    answer = app.test_client().get("/x", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 200
    assert redis_server.client().dbsize() == 1


def test_host_cache_config_does_not_leak_into_ours(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    app = build_app(
        ias_emulator,
        **redis_config(redis_server),
        CACHE_TYPE="NullCache",
        CACHE_KEY_PREFIX="host:",
    )
    app.test_client().get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    [name] = redis_server.client().keys("*")
    assert name.startswith(b"iaspkce:v2:exchange-")
