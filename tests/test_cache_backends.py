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
