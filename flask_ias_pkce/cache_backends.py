"""Which Flask-Caching backend the token cache may use, and building our own.

The token cache accepts only backends that never unpickle what they read: SimpleCache and
NullCache keep nothing outside the process, and SafeRedisCache has no serializer at all.
Every other Flask-Caching backend (Redis, Redis Sentinel and Cluster, Memcached,
FileSystem, ...) unpickles what it reads, so whoever can write to its store could run code
in the app. The check is an allowlist of backend classes, made on the built instance: a
denylist of ``CACHE_TYPE`` strings missed import paths, aliases and the host's own Cache.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Final

from flask import Flask
from flask_caching import Cache
from flask_caching.backends.base import BaseCache
from flask_caching.backends.nullcache import NullCache
from flask_caching.backends.simplecache import SimpleCache
from werkzeug.utils import ImportStringError, import_string

from .config import ConfigError
from .sealing import Sealer

if TYPE_CHECKING:
    from .bindings import Bindings
    from .config import CacheSettings

_SAFE_REDIS: Final = "flask_ias_pkce.redis_cache.SafeRedisCache"
_REDIS_ALIASES: Final = frozenset({"RedisCache", "SafeRedisCache", _SAFE_REDIS})
_IN_PROCESS_BACKENDS: Final = (SimpleCache, NullCache)


def host_backend(app: Flask, cache: Cache) -> BaseCache:
    """The backend of the host's ``cache`` on this ``app``, if it is one we may use."""
    # Not ``cache.cache``: outside an app context that is the backend of the last app the
    # Cache was initialised on, which need not be this one.
    backend = app.extensions.get("cache", {}).get(cache)
    if backend is None:
        raise ConfigError(
            "init_app(app, cache=...) takes a flask_caching.Cache already initialised on "
            "this app: call cache.init_app(app) first"
        )
    _check_backend(backend, "The Cache passed to init_app(app, cache=...)")
    return backend  # type: ignore[no-any-return]


def own_backend(app: Flask, settings: CacheSettings, bindings: Bindings) -> BaseCache:
    """The extension's own backend, built from ``settings.backend_config`` alone (every key
    that Flask-Caching and our backends read is set there, so none of the host's
    ``CACHE_*`` gets in)."""
    config = dict(settings.backend_config)
    cache_type = config["CACHE_TYPE"]
    if not isinstance(cache_type, str):
        raise ConfigError("IAS_PKCE_CACHE_TYPE must be the name or import path of a backend")
    if cache_type in _REDIS_ALIASES:
        if importlib.util.find_spec("redis") is None:
            raise ConfigError(
                "IAS_PKCE_CACHE_TYPE RedisCache needs the redis package: "
                "pip install 'flask-ias-pkce[redis]'"
            )
        config["CACHE_TYPE"] = _SAFE_REDIS
        if not config["CACHE_REDIS_URL"] and not config["CACHE_REDIS_SENTINELS"]:
            config["CACHE_REDIS_URL"] = bindings.redis_url
            # The binding says whether its Redis is a cluster, unless the config does.
            if config["CACHE_REDIS_CLUSTER"] is None:
                config["CACHE_REDIS_CLUSTER"] = bindings.redis_cluster
            if not config["CACHE_REDIS_URL"]:
                raise ConfigError(
                    "IAS_PKCE_CACHE_TYPE is RedisCache but there is no "
                    "IAS_PKCE_CACHE_REDIS_URL, no IAS_PKCE_CACHE_REDIS_SENTINELS and no bound "
                    "Redis service"
                )
    else:
        # Refused before it is built when the name is a class: no connection, no files.
        factory = _backend_factory(cache_type)
        if isinstance(factory, type) and not _trusted(factory):
            raise ConfigError(_refusal(_class_name(factory), f"IAS_PKCE_CACHE_TYPE {cache_type!r}"))
    cache = Cache(config=config, with_jinja2_ext=False)
    cache.init_app(app, config=config)
    backend: BaseCache = app.extensions["cache"][cache]
    # The instance decides: a factory function can build anything.
    _check_backend(backend, f"IAS_PKCE_CACHE_TYPE {cache_type!r}")
    return backend


def sealer(secret: str | bytes | None, backend: BaseCache) -> Sealer:
    """The sealer of entries kept in ``backend``: under ``secret`` (``IAS_PKCE_CACHE_SECRET``),
    or a random key when the backend keeps nothing outside the process."""
    if secret is None:
        if not isinstance(backend, _IN_PROCESS_BACKENDS):
            raise ConfigError(
                "IAS_PKCE_CACHE_SECRET must be set (the same in every process) when the "
                f"token cache is shared ({type(backend).__name__})"
            )
        return Sealer.random()
    try:
        return Sealer(secret)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _backend_factory(cache_type: str) -> object:
    """What Flask-Caching will import for ``cache_type`` (same rule as its ``_set_cache``)."""
    path = cache_type if "." in cache_type else f"flask_caching.backends.{cache_type}"
    try:
        return import_string(path)
    except ImportStringError:
        raise ConfigError(
            f"IAS_PKCE_CACHE_TYPE {cache_type!r} names no cache backend that can be imported; "
            'use "SimpleCache" (the default) or "RedisCache" for flask-ias-pkce\'s safe '
            "Redis backend"
        ) from None


def _trusted(kind: type) -> bool:
    if issubclass(kind, _IN_PROCESS_BACKENDS):
        return True
    # redis is optional: our Redis backend can only be in use if its module was loaded.
    module = sys.modules.get("flask_ias_pkce.redis_cache")
    return module is not None and issubclass(kind, module.SafeRedisCache)


def _check_backend(backend: object, source: str) -> None:
    if not _trusted(type(backend)):
        raise ConfigError(_refusal(_class_name(type(backend)), source))


def _class_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _refusal(backend: str, source: str) -> str:
    return (
        f"{source} selects the cache backend {backend}, which flask-ias-pkce refuses: it "
        "unpickles what it reads, so whoever can write to its store could run code in this "
        "app. Only SimpleCache, NullCache and flask-ias-pkce's SafeRedisCache (and their "
        'subclasses) are accepted: use IAS_PKCE_CACHE_TYPE="RedisCache" for the safe '
        "Redis backend"
    )
