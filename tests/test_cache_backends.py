"""Which Flask-Caching backends may hold our tokens: an allowlist of backend classes
(SimpleCache, NullCache, our SafeRedisCache), checked on the built backend, whether we
build it from IAS_PKCE_CACHE_* or the host passes its own Cache to init_app."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cachelib.memcached
import pytest
from flask import Flask
from flask_caching import Cache
from flask_caching.backends.filesystemcache import FileSystemCache
from flask_caching.backends.simplecache import SimpleCache

from flask_ias_pkce import IASPKCE, ConfigError, current_token
from flask_ias_pkce.redis_cache import SafeRedisCache
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisServer

from helpers import bearer, build_app, emulator_config


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


SECRET = "test-cache-secret-that-is-long-enough-0123456789"


class _Marker:
    path = ""

    def __reduce__(self) -> Any:
        return (Path(self.path).touch, ())


class _MySimpleCache(SimpleCache):
    """A subclass of an allowed backend is allowed."""


def pickling_factory(app: Flask, config: dict[str, Any], args: list[Any], kwargs: Any) -> Any:
    """A factory function, not a class: only the built instance shows what it is."""
    return FileSystemCache(config["CACHE_DIR"])


def simple_factory(app: Flask, config: dict[str, Any], args: list[Any], kwargs: Any) -> Any:
    return _MySimpleCache()


def _host_app(
    ias: IASEmulator, host_config: dict[str, Any], **config: Any
) -> tuple[Flask, Cache, IASPKCE]:
    """A host app with its own Flask-Caching ``Cache``, handed to ``init_app``."""
    app = Flask("host_cache_app")
    app.config.update(emulator_config(ias, **config))
    app.config.update(host_config)
    host_cache = Cache(app)
    extension = IASPKCE()

    @app.get("/api/me")
    def me() -> dict[str, Any]:
        return {"sub": current_token.claims["sub"], "from_cache": current_token.from_cache}

    return app, host_cache, extension


UNPICKLING = [
    "flask_caching.backends.RedisCache",
    "flask_caching.backends.rediscache.RedisCache",
    "flask_caching.backends.rediscache.RedisSentinelCache",
    "flask_caching.backends.rediscache.RedisClusterCache",
    "flask_caching.backends.RedisSentinelCache",
    "RedisSentinelCache",
    "RedisClusterCache",
    "flask_caching.backends.memcache.MemcachedCache",
    "flask_caching.backends.memcache.SASLMemcachedCache",
    "flask_caching.backends.memcache.SpreadSASLMemcachedCache",
    "MemcachedCache",
    "flask_caching.backends.filesystemcache.FileSystemCache",
    "FileSystemCache",
    "cachelib.redis.RedisCache",
    "cachelib.file.FileSystemCache",
]


@pytest.mark.parametrize("cache_type", UNPICKLING)
def test_unpickling_backends_are_refused_by_import_string(
    cache_type: str, ias_emulator: IASEmulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as refused:
        build_app(
            ias_emulator,
            IAS_PKCE_CACHE_TYPE=cache_type,
            IAS_PKCE_CACHE_REDIS_URL=redis_server.url,
            IAS_PKCE_CACHE_DIR=str(tmp_path),
            IAS_PKCE_CACHE_MEMCACHED_SERVERS=["127.0.0.1:1"],
            IAS_PKCE_CACHE_SECRET=SECRET,
        )
    message = str(refused.value)
    class_name = cache_type.rpartition(".")[2]
    assert f".{class_name}" in message  # the backend class, by its full name
    assert "unpickles what it reads" in message
    assert 'IAS_PKCE_CACHE_TYPE="RedisCache"' in message


def test_a_factory_building_an_unpickling_backend_is_refused(
    ias_emulator: IASEmulator, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"filesystemcache\.FileSystemCache.*unpickles"):
        build_app(
            ias_emulator,
            IAS_PKCE_CACHE_TYPE=f"{__name__}.pickling_factory",
            IAS_PKCE_CACHE_DIR=str(tmp_path),
            IAS_PKCE_CACHE_SECRET=SECRET,
        )


@pytest.mark.parametrize(
    "cache_type",
    [
        "SimpleCache",
        "flask_caching.backends.simplecache.SimpleCache",
        "NullCache",
        f"{__name__}._MySimpleCache",
        f"{__name__}.simple_factory",
    ],
)
def test_in_process_backends_are_accepted(cache_type: str, ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator, IAS_PKCE_CACHE_TYPE=cache_type).test_client()
    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    assert answer.status_code == 200


@pytest.mark.parametrize(
    "cache_type", ["RedisCache", "SafeRedisCache", "flask_ias_pkce.redis_cache.SafeRedisCache"]
)
def test_redis_aliases_select_our_safe_backend(
    cache_type: str, ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    app = build_app(
        ias_emulator,
        IAS_PKCE_CACHE_TYPE=cache_type,
        IAS_PKCE_CACHE_REDIS_URL=redis_server.url,
        IAS_PKCE_CACHE_SECRET=SECRET,
    )
    app.test_client().get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    assert redis_server.client().dbsize() == 1


def test_a_name_that_imports_nothing_is_a_config_error(ias_emulator: IASEmulator) -> None:
    with pytest.raises(ConfigError, match="names no cache backend"):
        build_app(ias_emulator, IAS_PKCE_CACHE_TYPE="redis")


# -- the host's own Cache ------------------------------------------------------------------


def test_host_cache_with_simple_cache_is_accepted(ias_emulator: IASEmulator) -> None:
    app, host_cache, extension = _host_app(ias_emulator, {"CACHE_TYPE": "SimpleCache"})
    extension.init_app(app, cache=host_cache)
    client = app.test_client()
    headers = bearer(ias_emulator.issue_public_token())

    assert client.get("/api/me", headers=headers).json["from_cache"] is False
    assert client.get("/api/me", headers=headers).json["from_cache"] is True
    backend = app.extensions["cache"][host_cache]
    assert isinstance(backend, SimpleCache)
    assert backend._cache  # the exchanged token went to the host's cache


def test_host_cache_with_our_safe_redis_is_accepted(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    app, host_cache, extension = _host_app(
        ias_emulator,
        {
            "CACHE_TYPE": "flask_ias_pkce.redis_cache.SafeRedisCache",
            "CACHE_REDIS_URL": redis_server.url,
        },
        IAS_PKCE_CACHE_SECRET=SECRET,
    )
    extension.init_app(app, cache=host_cache)
    assert isinstance(app.extensions["cache"][host_cache], SafeRedisCache)
    answer = app.test_client().get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    assert answer.status_code == 200
    assert redis_server.client().dbsize() == 1


def test_host_cache_with_flask_caching_redis_is_refused_and_never_read(
    ias_emulator: IASEmulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    app, host_cache, extension = _host_app(
        ias_emulator,
        {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis_server.url},
        IAS_PKCE_CACHE_SECRET=SECRET,
    )
    # What an attacker with write access to the host's Redis would plant under every key.
    marker = tmp_path / "unpickled"
    _Marker.path = str(marker)
    redis_server.client().set("planted", b"!" + pickle.dumps(_Marker()))

    with pytest.raises(ConfigError) as refused:
        extension.init_app(app, cache=host_cache)

    message = str(refused.value)
    assert "init_app(app, cache=...)" in message
    assert "flask_caching.backends.rediscache.RedisCache" in message
    assert "unpickles what it reads" in message
    assert 'IAS_PKCE_CACHE_TYPE="RedisCache"' in message
    assert "ias_pkce" not in app.extensions
    assert not marker.exists()


@pytest.mark.parametrize(
    ("host_config", "class_name"),
    [
        (
            {"CACHE_TYPE": "RedisSentinelCache", "CACHE_REDIS_SENTINELS": [("127.0.0.1", 1)]},
            "rediscache.RedisSentinelCache",
        ),
        ({"CACHE_TYPE": "FileSystemCache"}, "filesystemcache.FileSystemCache"),
        (
            {"CACHE_TYPE": "MemcachedCache", "CACHE_MEMCACHED_SERVERS": ["127.0.0.1:1"]},
            "memcache.MemcachedCache",
        ),
    ],
)
def test_host_cache_with_other_unpickling_backends_is_refused(
    host_config: dict[str, Any],
    class_name: str,
    ias_emulator: IASEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No memcache client library is installed; the backend needs only some client object.
    monkeypatch.setattr(
        cachelib.memcached.MemcachedCache,
        "import_preferred_memcache_lib",
        lambda self, *args: (object(), None),
    )
    app, host_cache, extension = _host_app(
        ias_emulator, {**host_config, "CACHE_DIR": str(tmp_path)}, IAS_PKCE_CACHE_SECRET=SECRET
    )
    with pytest.raises(ConfigError, match=rf"{class_name}, which flask-ias-pkce refuses"):
        extension.init_app(app, cache=host_cache)


def test_host_cache_not_initialised_on_this_app_is_a_config_error(
    ias_emulator: IASEmulator,
) -> None:
    app = Flask("uninitialised_host_cache")
    app.config.update(emulator_config(ias_emulator))
    with pytest.raises(ConfigError, match="already initialised on this app"):
        IASPKCE().init_app(app, cache=Cache())


class _ReadKeys(dict[str, Any]):
    """A config dict that notes every key read from it."""

    read: set[str]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().setdefault(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


@pytest.mark.parametrize(
    "cache_config",
    [
        {"IAS_PKCE_CACHE_TYPE": "SimpleCache"},
        {"IAS_PKCE_CACHE_TYPE": "NullCache"},
        {"IAS_PKCE_CACHE_TYPE": "RedisCache", "IAS_PKCE_CACHE_REDIS_URL": "redis://127.0.0.1:1"},
        {
            "IAS_PKCE_CACHE_TYPE": "RedisCache",
            "IAS_PKCE_CACHE_REDIS_SENTINELS": ["127.0.0.1:1"],
            "IAS_PKCE_CACHE_REDIS_SENTINEL_MASTER": "mymaster",
            "IAS_PKCE_CACHE_REDIS_PASSWORD": "pw",
        },
    ],
    ids=["simple", "null", "redis-url", "redis-sentinels"],
)
def test_every_cache_key_our_backends_read_is_pinned(
    cache_config: dict[str, Any], ias_emulator: IASEmulator
) -> None:
    # Flask-Caching builds a backend from a copy of the host's app.config: each CACHE_* key
    # that it or the backend reads must be one we set, or the host's value would be used.
    from flask_ias_pkce.constants import CACHE_BACKEND_DEFAULTS

    app = Flask("recording_app")
    app.config.update(emulator_config(ias_emulator, IAS_PKCE_CACHE_SECRET=SECRET, **cache_config))
    copies: list[_ReadKeys] = []

    def recording_copy() -> _ReadKeys:
        copies.append(_ReadKeys(dict(app.config)))
        return copies[-1]

    app.config.copy = recording_copy  # type: ignore[method-assign]
    IASPKCE(app)

    assert copies, "the backend was built from a copy of app.config"
    read = {key for copy in copies for key in copy.read if key.startswith("CACHE_")}
    assert "CACHE_TYPE" in read
    assert read <= set(CACHE_BACKEND_DEFAULTS), read - set(CACHE_BACKEND_DEFAULTS)


_HOST_CACHE_CONFIG: dict[str, Any] = {
    "CACHE_TYPE": "FileSystemCache",
    "CACHE_DIR": "/nonexistent",
    "CACHE_KEY_PREFIX": "host_",
    "CACHE_DEFAULT_TIMEOUT": 7,
    "CACHE_THRESHOLD": 1,
    "CACHE_OPTIONS": {"db": 7},
    "CACHE_ARGS": ["host"],
    "CACHE_SERIALIZER": "pickle",
    "CACHE_REDIS_URL": "redis://host-redis.invalid:6379/0",
    "CACHE_REDIS_PASSWORD": "host-password",
    "CACHE_REDIS_CLUSTER": True,
    "CACHE_REDIS_SENTINELS": ["host-sentinel.invalid:26379"],
    "CACHE_REDIS_SENTINEL_MASTER": "host-master",
    "CACHE_REDIS_SOCKET_TIMEOUT": 30.0,
    "CACHE_REDIS_HEALTH_CHECK_INTERVAL": 999,
    "CACHE_REDIS_CA": "/nonexistent/ca.pem",
}


def test_host_cache_settings_never_reach_our_redis_backend(
    ias_emulator: IASEmulator, redis_server: RedisServer
) -> None:
    app = Flask("host_settings_app")
    app.config.update(_HOST_CACHE_CONFIG)
    app.config.update(
        emulator_config(
            ias_emulator,
            IAS_PKCE_CACHE_TYPE="RedisCache",
            IAS_PKCE_CACHE_REDIS_URL=redis_server.url,
            IAS_PKCE_CACHE_SECRET=SECRET,
        )
    )
    IASPKCE(app)

    backend = app.extensions["ias_pkce"].authenticator.cache.backend
    assert isinstance(backend, SafeRedisCache)
    assert backend.key_prefix == ""
    kwargs = backend.client.get_connection_kwargs()
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["health_check_interval"] == 10
    assert kwargs.get("password") is None
    assert kwargs.get("db", 0) == 0
    assert backend.client.ping()


def test_host_cache_settings_never_reach_our_in_process_backend(
    ias_emulator: IASEmulator,
) -> None:
    app = Flask("host_settings_app")
    app.config.update(_HOST_CACHE_CONFIG)
    app.config.update(emulator_config(ias_emulator))
    IASPKCE(app)

    @app.get("/api/me")
    def me() -> dict[str, Any]:
        return {"from_cache": current_token.from_cache}

    backend = app.extensions["ias_pkce"].authenticator.cache.backend
    assert type(backend) is SimpleCache
    assert backend._threshold == 10_000
    assert backend.default_timeout == 300
    client, headers = app.test_client(), bearer(ias_emulator.issue_public_token())
    assert [client.get("/api/me", headers=headers).json for _ in range(2)] == [
        {"from_cache": False},
        {"from_cache": True},
    ]
