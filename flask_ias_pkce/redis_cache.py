"""A Flask-Caching backend for Redis that stores bytes and never unpickles, and a lock.

Flask-Caching's own ``RedisCache`` unpickles whatever it reads, so anyone who can write to
that Redis could run code in the app. :class:`SafeRedisCache` stores only the bytes it is
given (our sealed values, see :mod:`flask_ias_pkce.sealing`) and hands back the raw bytes
it reads, for the caller to authenticate.

Redis is an optimisation here, never a dependency: when it is down or slow, every
operation returns a miss or ``False`` within a short socket timeout instead of raising, the
failure is logged at most once per interval, and the cache works again by itself when Redis
does.

It speaks to one Redis (``redis://``, or ``rediss://`` with the certificate always
verified), to a Redis Cluster (``CACHE_REDIS_CLUSTER``; an entry and its lock share a hash
slot) or to the master that Sentinels name (``CACHE_REDIS_SENTINELS``), following a
failover without a restart.

Select it with ``CACHE_TYPE = "flask_ias_pkce.redis_cache.SafeRedisCache"`` and
``CACHE_REDIS_URL`` (see :meth:`SafeRedisCache.factory` for every key).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

import redis
from flask_caching.backends.base import BaseCache
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from .config import ConfigError

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["DEFAULT_KEY_PREFIX", "RedisLock", "SafeRedisCache"]

logger = logging.getLogger("flask_ias_pkce")

DEFAULT_KEY_PREFIX: Final = "iaspkce:"
#: Seconds; a Redis that does not answer within this is treated as down for this call.
DEFAULT_SOCKET_TIMEOUT: Final = 0.25
#: Seconds an idle pooled connection may stay unused before it is checked with a PING, so
#: that connections left over from before a Redis restart are replaced, not failed on.
DEFAULT_HEALTH_CHECK_INTERVAL: Final = 10
#: While Redis stays down, the warning is repeated at most this often (seconds).
DEFAULT_LOG_INTERVAL: Final = 30.0

_URL_SCHEMES: Final = ("redis", "rediss")
# Characters that SCAN's MATCH pattern would read as wildcards.
_GLOB_SPECIALS: Final = "\\*?[]"
#: What the token cache appends to an entry's key to name its lock; on a cluster both get
#: the same hash tag, so the lock, its Lua release and the wait live in the entry's slot.
LOCK_SUFFIX: Final = ":lock"
#: A cluster that could not be reached is tried again at most this often (seconds).
_RECONNECT_INTERVAL: Final = 1.0
#: Everything redis-py raises for a Redis that is down, slow, failing over or resharding.
#: ``RedisClusterException`` (no cluster node reachable, a slot not covered) is not a
#: ``RedisError``.
_REDIS_ERRORS: Final = (redis.RedisError, RedisClusterException)
# Options that would decide TLS verification or replace the connection (and with it the
# verification): only our own keys set TLS, and they always verify.
_REFUSED_OPTIONS: Final = frozenset({"connection_class", "connection_pool", "redis_connect_func"})

Client = redis.Redis | redis.RedisCluster


def _host_port(address: object) -> tuple[str, int]:
    text = str(address).strip()
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            "IAS_PKCE_CACHE_REDIS_SENTINELS must be a list of 'host:port' (or one string of "
            f"them separated by commas); {text!r} is not one"
        )
    return host.strip("[]"), int(port)


def _sentinel_addresses(value: object) -> list[tuple[str, int]]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, bytes) or not items:
        raise ConfigError("IAS_PKCE_CACHE_REDIS_SENTINELS must be a list of 'host:port'")
    return [_host_port(item) for item in items]


def _file(value: object, key: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | os.PathLike) or not os.path.isfile(value):
        raise ConfigError(f"IAS_PKCE_CACHE_REDIS_{key} must be the path of an existing file")
    return os.fspath(value)


def _tls_options(
    url: str | None,
    options: dict[str, Any],
    *,
    ca: object = None,
    cert: object = None,
    key: object = None,
) -> dict[str, Any]:
    """The redis-py options for TLS with verification always on, or ``{}`` for plain Redis.

    Verification cannot be turned off: TLS settings in the URL's query (redis-py would pass
    ``ssl_cert_reqs=none`` on to the connection) and in the options are refused, and so
    are options that replace the connection. A private CA and a client certificate come
    from ``CA``, ``CERT`` and ``KEY`` (file paths) only.
    """
    query = [name for name, _ in parse_qsl(urlsplit(url).query)] if url else []
    in_url = sorted({name for name in query if name.lower().startswith("ssl")})
    if in_url:
        raise ConfigError(
            f"the Redis URL sets {', '.join(in_url)}: TLS settings in the URL are refused, "
            "since certificate verification cannot be turned off. Use "
            "IAS_PKCE_CACHE_REDIS_CA (a private CA), IAS_PKCE_CACHE_REDIS_CERT and "
            "IAS_PKCE_CACHE_REDIS_KEY (a client certificate)"
        )
    refused = sorted(
        name for name in options if name.lower().startswith("ssl") or name in _REFUSED_OPTIONS
    )
    if refused:
        raise ConfigError(
            f"IAS_PKCE_CACHE_OPTIONS sets {', '.join(refused)}, which could turn certificate "
            "verification off, and is refused. Use a rediss:// URL with "
            "IAS_PKCE_CACHE_REDIS_CA, IAS_PKCE_CACHE_REDIS_CERT and IAS_PKCE_CACHE_REDIS_KEY"
        )
    ca_file, cert_file, key_file = _file(ca, "CA"), _file(cert, "CERT"), _file(key, "KEY")
    if key_file is not None and cert_file is None:
        raise ConfigError("IAS_PKCE_CACHE_REDIS_KEY needs IAS_PKCE_CACHE_REDIS_CERT")
    tls = url is not None and urlsplit(url).scheme == "rediss"
    if not tls:
        if ca_file or cert_file:
            raise ConfigError(
                "IAS_PKCE_CACHE_REDIS_CA, _CERT and _KEY need a rediss:// URL (TLS); the "
                "Redis URL is plain redis://"
            )
        return {}
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": ca_file,
        "ssl_certfile": cert_file,
        "ssl_keyfile": key_file,
    }


def _cause(error: BaseException) -> str:
    """What the log may say about ``error``: its class, and for a refused certificate why.

    Never the message itself: a Redis error message could quote a command's arguments.
    """
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (
                f"{type(error).__name__}: the server's TLS certificate was refused "
                f"({seen.verify_message}); check IAS_PKCE_CACHE_REDIS_CA"
            )
        if isinstance(seen, ssl.SSLError):
            return f"{type(error).__name__}: TLS handshake failed ({seen.reason})"
        # redis-py raises its ConnectionError while handling the ssl error: the context.
        seen = seen.__cause__ or seen.__context__
    return type(error).__name__


class _ClusterClient:
    """A ``redis.RedisCluster`` built at first use, and again after a failed attempt.

    redis-py's cluster client asks a node for the slot map in its constructor, so a cluster
    that is down while the app starts would stop the app. Here the app starts, the cache
    counts as unavailable, and the client is built once the cluster answers (tried at
    most once per ``_RECONNECT_INTERVAL``, so a down cluster costs no time per request).
    """

    def __init__(self, build: Callable[[], redis.RedisCluster]) -> None:
        self._build = build
        self._client: redis.RedisCluster | None = None
        self._failed_at: float | None = None
        self._lock = threading.Lock()

    def get(self) -> redis.RedisCluster:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                now = time.monotonic()
                if self._failed_at is not None and now - self._failed_at < _RECONNECT_INTERVAL:
                    raise redis.ConnectionError("no node of the Redis Cluster answered")
                try:
                    self._client = self._build()
                except _REDIS_ERRORS:
                    self._failed_at = now
                    raise
            return self._client


_Timeout = int | float | dt.timedelta


def _timeout_ms(timeout: _Timeout | None) -> int:
    """Milliseconds for ``SET ... PX``; refuses what Flask-Caching would read as "forever"."""
    if timeout is None or isinstance(timeout, bool):
        raise ValueError(
            "SafeRedisCache needs an explicit positive timeout: entries are never stored "
            "forever (Flask-Caching reads 0 and the default as 'no expiry')"
        )
    seconds = timeout.total_seconds() if isinstance(timeout, dt.timedelta) else timeout
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"cache timeout must be a positive number of seconds, got {timeout!r}")
    return max(1, math.ceil(seconds * 1000))


def _connection_kwargs(client: Client) -> dict[str, Any]:
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call]
        return dict(node.redis_connection.get_connection_kwargs())
    return dict(client.get_connection_kwargs())


def _client_defaults(
    options: dict[str, Any], socket_timeout: float, health_check_interval: int
) -> None:
    options.setdefault("socket_timeout", socket_timeout)
    options.setdefault("socket_connect_timeout", socket_timeout)
    options.setdefault("health_check_interval", health_check_interval)
    # redis-py retries three times with backoff by default, which turns "Redis is
    # down" into seconds per request. One immediate retry on a connection error is
    # enough to replace a pooled connection that a Redis restart broke; a timeout is
    # not retried, so a slow Redis costs one socket timeout per call.
    options.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    options["decode_responses"] = False


def _check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        # Anything else would need a serializer, and serializers are what we avoid.
        raise TypeError(f"SafeRedisCache stores bytes only, got {type(value).__name__}")
    return value


class SafeRedisCache(BaseCache):
    """Flask-Caching backend over Redis for ``bytes`` values, with no serializer at all.

    :param client: a ``redis.Redis`` (one server, or a Sentinel-managed master) or a
        ``redis.RedisCluster`` that returns bytes (``decode_responses=False``);
        :meth:`factory` and :meth:`from_url` build one with short timeouts. A zero-argument
        callable that returns the client is accepted too (a cluster client built at first
        use, so that the app starts while the cluster is down).
    :param key_prefix: put in front of every key, so that several apps can share a Redis
        and :meth:`clear` only touches our entries.
    :param default_timeout: kept for Flask-Caching's interface, never used: :meth:`set` and
        :meth:`add` require an explicit positive timeout.
    :param clock: monotonic seconds, for the log interval (tests pass a fake one).
    :param log_interval: while Redis stays down, warn at most once per this many seconds.
    :param cluster: keys carry a hash tag (``prefix{key}``, ``prefix{key}:lock``), so that
        an entry and its lock live in one slot; set for a ``redis.RedisCluster``.
    :param where: where Redis is, for logs and ``flask ias-pkce check`` (never a password);
        by default the client's host and port.
    :param mode: what kind of Redis this is, for the same places.

    No method raises because of Redis: a failed read is a miss (``None``), a failed write
    is ``False``. Programming errors still raise: a non-bytes value (:class:`TypeError`),
    a missing or non-positive timeout (:class:`ValueError`).
    """

    def __init__(
        self,
        client: Client | Callable[[], Client],
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        default_timeout: int = 300,
        ignore_delete_many_errors: bool = True,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = DEFAULT_LOG_INTERVAL,
        cluster: bool | None = None,
        where: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout, ignore_delete_many_errors=ignore_delete_many_errors
        )
        if isinstance(client, redis.Redis | redis.RedisCluster):
            fixed = client
            if _connection_kwargs(client).get("decode_responses"):
                raise ValueError("SafeRedisCache needs a Redis client with decode_responses=False")
            self._connect: Callable[[], Client] = lambda: fixed
            if where is None:
                kwargs = _connection_kwargs(client)
                where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            if cluster is None:
                cluster = isinstance(client, redis.RedisCluster)
        else:
            self._connect = client
        self._cluster = bool(cluster)
        if self._cluster and ("{" in key_prefix or "}" in key_prefix):
            raise ValueError("on a Redis Cluster the key prefix must not contain '{' or '}'")
        self.key_prefix = key_prefix
        self._clock = clock
        self._log_interval = log_interval
        self._available = True
        self._last_warning_at: float | None = None
        self._state_lock = threading.Lock()
        # Where Redis is, for the log; never the password.
        self._where = where or "?"
        self.mode = mode or ("Redis Cluster" if self._cluster else "Redis")

    @property
    def client(self) -> Client:
        """The Redis client. For a cluster not reached yet this tries to connect, and raises
        a ``redis.RedisError`` (or ``RedisClusterException``) while it cannot."""
        return self._connect()

    @property
    def where(self) -> str:
        """Where Redis is (host and port, the Sentinels, a cluster's first node)."""
        return self._where

    def ping(self) -> bool:
        """One round trip to Redis; ``False`` (and counted as an outage) if it fails."""
        return self.check() is None

    def check(self) -> str | None:
        """One ``PING``: ``None`` if Redis answered, else why not (the error's class, and
        for TLS what was wrong with the certificate; never a password or a key)."""
        try:
            self.client.ping()
        except _REDIS_ERRORS as error:
            self._failed(error)
            return _cause(error)
        self._succeeded()
        return None

    @classmethod
    def factory(
        cls,
        app: Flask,
        config: dict[str, Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> SafeRedisCache:
        """Build the cache from Flask-Caching's configuration.

        Reads ``CACHE_REDIS_URL`` (``redis://`` or ``rediss://``; required unless
        Sentinels are given), ``CACHE_KEY_PREFIX``, ``CACHE_REDIS_SOCKET_TIMEOUT``
        (seconds, default 0.25, used for connecting and for every answer) and
        ``CACHE_REDIS_HEALTH_CHECK_INTERVAL``; for TLS ``CACHE_REDIS_CA``,
        ``CACHE_REDIS_CERT`` and ``CACHE_REDIS_KEY`` (file paths); ``CACHE_REDIS_CLUSTER``
        (``True``: a Redis Cluster, the URL names one of its nodes);
        ``CACHE_REDIS_SENTINELS`` (``host:port`` list) with
        ``CACHE_REDIS_SENTINEL_MASTER``; ``CACHE_REDIS_PASSWORD`` (the Redis password, if
        the URL has none) and ``CACHE_REDIS_SENTINEL_PASSWORD`` (the Sentinels' own).
        Other ``CACHE_OPTIONS`` are passed to redis-py, except those that would decide TLS
        verification.
        """
        options = dict(kwargs)
        default_timeout = options.pop("default_timeout", 300)
        ignore_delete_many_errors = options.pop("ignore_delete_many_errors", True)
        common: dict[str, Any] = {
            "key_prefix": config.get("CACHE_KEY_PREFIX", DEFAULT_KEY_PREFIX) or "",
            "socket_timeout": float(
                config.get("CACHE_REDIS_SOCKET_TIMEOUT", DEFAULT_SOCKET_TIMEOUT)
            ),
            "health_check_interval": int(
                config.get("CACHE_REDIS_HEALTH_CHECK_INTERVAL", DEFAULT_HEALTH_CHECK_INTERVAL)
            ),
            "default_timeout": default_timeout,
            "ignore_delete_many_errors": ignore_delete_many_errors,
        }
        password = config.get("CACHE_REDIS_PASSWORD")
        if password is not None:
            options.setdefault("password", str(password))
        sentinels = config.get("CACHE_REDIS_SENTINELS")
        if sentinels:
            if config.get("CACHE_REDIS_CLUSTER"):
                raise ConfigError(
                    "IAS_PKCE_CACHE_REDIS_SENTINELS and IAS_PKCE_CACHE_REDIS_CLUSTER exclude "
                    "each other"
                )
            if any(config.get(f"CACHE_REDIS_{key}") for key in ("CA", "CERT", "KEY")):
                raise ConfigError(
                    "TLS to Sentinels (IAS_PKCE_CACHE_REDIS_CA, _CERT, _KEY) is not supported"
                )
            master = config.get("CACHE_REDIS_SENTINEL_MASTER")
            if not isinstance(master, str) or not master:
                raise ConfigError(
                    "IAS_PKCE_CACHE_REDIS_SENTINELS needs IAS_PKCE_CACHE_REDIS_SENTINEL_MASTER, "
                    "the name of the master's service"
                )
            sentinel_password = config.get("CACHE_REDIS_SENTINEL_PASSWORD")
            return cls.from_sentinels(
                _sentinel_addresses(sentinels),
                master,
                sentinel_password=str(sentinel_password) if sentinel_password else None,
                **common,
                **options,
            )
        cluster = config.get("CACHE_REDIS_CLUSTER") or False
        if not isinstance(cluster, bool):
            raise ConfigError("IAS_PKCE_CACHE_REDIS_CLUSTER must be True or False")
        return cls.from_url(
            str(config.get("CACHE_REDIS_URL") or ""),
            cluster=cluster,
            ca=config.get("CACHE_REDIS_CA"),
            cert=config.get("CACHE_REDIS_CERT"),
            key=config.get("CACHE_REDIS_KEY"),
            **common,
            **options,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL,
        default_timeout: int = 300,
        ignore_delete_many_errors: bool = True,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = DEFAULT_LOG_INTERVAL,
        cluster: bool = False,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        **redis_options: Any,
    ) -> SafeRedisCache:
        """Build the cache and its client from a ``redis://`` or ``rediss://`` URL.

        :param socket_timeout: seconds, for connecting and for every answer.
        :param health_check_interval: seconds after which an idle pooled connection is
            checked with a PING before use.
        :param cluster: the URL names a node of a Redis Cluster: use redis-py's cluster
            client, which follows ``MOVED`` and ``ASK`` and finds the new master after a
            failover.
        :param ca: over ``rediss://``, a CA bundle to verify the server with instead of the
            system's; the certificate and the host name are always verified.
        :param cert: a client certificate (PEM file) for a server that asks for one.
        :param key: its private key (PEM file), unless ``cert`` holds it.
        :param redis_options: passed on to redis-py; options that would decide TLS
            verification are refused.
        """
        parts = urlsplit(url)
        if parts.scheme not in _URL_SCHEMES:
            # Not the URL itself: it may carry a password.
            raise ValueError(
                "SafeRedisCache needs CACHE_REDIS_URL starting with redis:// or rediss://"
            )
        redis_options.update(_tls_options(url, redis_options, ca=ca, cert=cert, key=key))
        _client_defaults(redis_options, socket_timeout, health_check_interval)
        tls = " over TLS" if parts.scheme == "rediss" else ""
        where = f"{parts.hostname}:{parts.port or 6379}"
        if cluster:
            # The cluster client retries a command itself after a connection error
            # (refreshing the slot map): once, like the single client below.
            retry = redis_options.pop("retry")
            connect = _ClusterClient(
                lambda: redis.RedisCluster.from_url(url, retry=retry, **redis_options)
            )
            return cls(
                connect.get,
                key_prefix=key_prefix,
                default_timeout=default_timeout,
                ignore_delete_many_errors=ignore_delete_many_errors,
                clock=clock,
                log_interval=log_interval,
                cluster=True,
                where=where,
                mode=f"Redis Cluster{tls}",
            )
        return cls(
            redis.Redis.from_url(url, **redis_options),
            key_prefix=key_prefix,
            default_timeout=default_timeout,
            ignore_delete_many_errors=ignore_delete_many_errors,
            clock=clock,
            log_interval=log_interval,
            where=where,
            mode=f"Redis{tls}",
        )

    @classmethod
    def from_sentinels(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        sentinel_password: str | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL,
        default_timeout: int = 300,
        ignore_delete_many_errors: bool = True,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = DEFAULT_LOG_INTERVAL,
        **redis_options: Any,
    ) -> SafeRedisCache:
        """Build the cache on the master that the Sentinels name for ``service_name``.

        Every new connection asks the Sentinels for the master, so after a failover the
        connections to the old master fail once (a miss) and the next ones reach the new
        master, without a restart.

        :param sentinels: ``(host, port)`` of each Sentinel.
        :param sentinel_password: the Sentinels' own password, if they require one; the
            master's is ``password`` in ``redis_options``.
        """
        _tls_options(None, redis_options)
        _client_defaults(redis_options, socket_timeout, health_check_interval)
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
        }
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(list(sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        client = sentinel.master_for(  # type: ignore[no-untyped-call]
            service_name, redis_class=redis.Redis, **redis_options
        )
        addresses = ",".join(f"{host}:{port}" for host, port in sentinels)
        return cls(
            client,
            key_prefix=key_prefix,
            default_timeout=default_timeout,
            ignore_delete_many_errors=ignore_delete_many_errors,
            clock=clock,
            log_interval=log_interval,
            where=f"master {service_name!r} of the Sentinels at {addresses}",
            mode="Redis Sentinel",
        )

    @property
    def available(self) -> bool:
        """Whether the last Redis operation succeeded (no round trip of its own)."""
        return self._available

    def _key(self, key: str) -> str:
        if not self._cluster:
            return self.key_prefix + key
        # The hash tag: Redis Cluster hashes only what is between the first { and }.
        if key.endswith(LOCK_SUFFIX):
            return f"{self.key_prefix}{{{key[: -len(LOCK_SUFFIX)]}}}{LOCK_SUFFIX}"
        return f"{self.key_prefix}{{{key}}}"

    def _succeeded(self) -> None:
        # Plain attribute read on the hot path; the lock only when the state changes.
        if not self._available:
            self._recovered()

    def _recovered(self) -> None:
        with self._state_lock:
            # Another thread may have seen the recovery first; only one logs it.
            was_available, self._available = self._available, True
            self._last_warning_at = None
        if not was_available:
            logger.info("%s cache at %s is available again", self.mode, self._where)

    def _failed(self, error: BaseException) -> None:
        now = self._clock()
        with self._state_lock:
            self._available = False
            if (
                self._last_warning_at is not None
                and now - self._last_warning_at < self._log_interval
            ):
                return
            self._last_warning_at = now
        logger.warning(
            "%s cache at %s unavailable (%s); working without it",
            self.mode,
            self._where,
            _cause(error),
        )

    def get(self, key: str) -> bytes | None:
        """The raw bytes stored under ``key``, or ``None`` (absent, or Redis unavailable)."""
        try:
            value = self.client.get(self._key(key))
        except _REDIS_ERRORS as error:
            self._failed(error)
            return None
        self._succeeded()
        return value if isinstance(value, bytes) else None

    def get_many(self, *keys: str) -> list[bytes | None]:
        """The values for ``keys`` in order (one ``MGET``); all ``None`` if Redis fails."""
        if not keys:
            return []
        try:
            names = [self._key(key) for key in keys]
            client = self.client
            if isinstance(client, redis.RedisCluster):
                # The keys may live in several slots: one MGET per slot.
                values = client.mget_nonatomic(names)
            else:
                values = client.mget(names)
        except _REDIS_ERRORS as error:
            self._failed(error)
            return [None] * len(keys)
        self._succeeded()
        return [value if isinstance(value, bytes) else None for value in values]

    def has(self, key: str) -> bool:
        """Whether ``key`` exists; ``False`` if Redis fails."""
        try:
            exists = self.client.exists(self._key(key))
        except _REDIS_ERRORS as error:
            self._failed(error)
            return False
        self._succeeded()
        return bool(exists)

    def set(self, key: str, value: bytes, timeout: _Timeout | None = None) -> bool:
        """Store ``value`` under ``key`` for ``timeout`` seconds (millisecond precision).

        :raises TypeError: ``value`` is not ``bytes``.
        :raises ValueError: ``timeout`` is missing, zero or negative: nothing is stored
            forever.
        :returns: ``True`` once stored, ``False`` if Redis failed.
        """
        return self._set(key, value, timeout, only_new=False)

    def add(self, key: str, value: bytes, timeout: _Timeout | None = None) -> bool:
        """Like :meth:`set`, but only if ``key`` does not exist yet (``SET NX``).

        :returns: ``True`` if stored, ``False`` if the key existed or Redis failed.
        """
        return self._set(key, value, timeout, only_new=True)

    def _set(self, key: str, value: bytes, timeout: _Timeout | None, *, only_new: bool) -> bool:
        value = _check_value(value)
        ttl_ms = _timeout_ms(timeout)
        try:
            stored = self.client.set(self._key(key), value, px=ttl_ms, nx=only_new)
        except _REDIS_ERRORS as error:
            self._failed(error)
            return False
        self._succeeded()
        return bool(stored)

    def set_many(self, mapping: dict[str, bytes], timeout: _Timeout | None = None) -> list[str]:
        """Store every item of ``mapping`` in one round trip; the keys that were stored."""
        ttl_ms = _timeout_ms(timeout)
        values = {key: _check_value(value) for key, value in mapping.items()}
        if not values:
            return []
        try:
            pipeline = self.client.pipeline(transaction=False)
            for key, value in values.items():
                pipeline.set(self._key(key), value, px=ttl_ms)
            results = pipeline.execute()
        except _REDIS_ERRORS as error:
            self._failed(error)
            return []
        self._succeeded()
        return [key for key, stored in zip(values, results, strict=True) if stored]

    def delete(self, key: str) -> bool:
        """Delete ``key``; ``True`` if it existed, ``False`` if not or if Redis failed."""
        try:
            deleted = self.client.delete(self._key(key))
        except _REDIS_ERRORS as error:
            self._failed(error)
            return False
        self._succeeded()
        return bool(deleted)

    def delete_many(self, *keys: str) -> list[str]:
        """Delete ``keys`` in one round trip; the keys now absent (``[]`` if Redis failed).

        Never raises for a Redis failure, whatever ``ignore_delete_many_errors`` says.
        """
        return self._remove(keys, unlink=False)

    def unlink(self, *keys: str) -> list[str]:
        """Like :meth:`delete_many`, but Redis frees the memory in the background."""
        return self._remove(keys, unlink=True)

    def _remove(self, keys: tuple[str, ...], *, unlink: bool) -> list[str]:
        if not keys:
            return []
        names = [self._key(key) for key in keys]
        try:
            if unlink:
                self.client.unlink(*names)
            else:
                self.client.delete(*names)
        except _REDIS_ERRORS as error:
            self._failed(error)
            return []
        self._succeeded()
        return list(keys)

    def clear(self) -> bool:
        """Delete every key under our prefix (``SCAN`` + ``UNLINK``, never ``FLUSHDB``).

        Refused (``False``) when the prefix is empty: the Redis may hold other apps' data.
        """
        if not self.key_prefix:
            return False
        pattern = "".join(
            "\\" + char if char in _GLOB_SPECIALS else char for char in self.key_prefix
        )
        try:
            batch: list[bytes] = []
            for name in self.client.scan_iter(match=pattern + "*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    self.client.unlink(*batch)
                    batch.clear()
            if batch:
                self.client.unlink(*batch)
        except _REDIS_ERRORS as error:
            self._failed(error)
            return False
        self._succeeded()
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Not supported: a Redis counter would be stored without expiry."""
        raise NotImplementedError("SafeRedisCache stores expiring bytes only, not counters")

    def dec(self, key: str, delta: int = 1) -> int | None:
        """Not supported: a Redis counter would be stored without expiry."""
        raise NotImplementedError("SafeRedisCache stores expiring bytes only, not counters")

    def lock(self, key: str, *, ttl_ms: int, owner: str | None = None) -> RedisLock:
        """A :class:`RedisLock` named ``key`` under this cache's prefix (on a cluster, in the
        slot of the entry ``key`` locks: name it ``<entry key>:lock``)."""
        return RedisLock(self._connect, self._key(key), ttl_ms=ttl_ms, owner=owner)

    def wait_for(
        self, key: str, timeout: float, poll: float = 0.02, *, lock_key: str | None = None
    ) -> bytes | None:
        """Wait until a value appears under ``key``, and return it.

        Used by a process that lost the race for an exchange's lock: the winner will store
        the result under ``key``. Returns ``None`` when ``timeout`` seconds pass, when the
        lock ``lock_key`` (a key of this cache, see :meth:`lock`) is gone without a value
        (the holder failed or its lock expired), or when Redis fails; the caller then does
        its own exchange.

        This polls (one pipelined ``GET`` + ``EXISTS`` each ``poll`` seconds) instead of
        using pub/sub or a blocking pop: waiting only happens while one exchange runs, a
        poll costs one short round trip, and polling needs no extra connection per waiter
        and stays correct when the holder dies, because its lock then simply expires.

        ``timeout`` is wall time (:func:`time.monotonic`), not this cache's ``clock``: the
        wait is for another process, which a fake clock cannot speed up.
        """
        name = self._key(key)
        lock_name = self._key(lock_key) if lock_key is not None else None
        deadline = time.monotonic() + timeout
        while True:
            try:
                pipeline = self.client.pipeline(transaction=False)
                pipeline.get(name)
                if lock_name is not None:
                    pipeline.exists(lock_name)
                results = pipeline.execute()
                value = results[0]
                if isinstance(value, bytes):
                    self._succeeded()
                    return value
                if lock_name is not None and not results[1]:
                    # The holder may have stored the value and released the lock between
                    # our GET and EXISTS: look once more.
                    last = self.client.get(name)
                    self._succeeded()
                    return last if isinstance(last, bytes) else None
            except _REDIS_ERRORS as error:
                self._failed(error)
                return None
            self._succeeded()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(poll, remaining))


_RENEW_SCRIPT: Final = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_SCRIPT: Final = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""


class RedisLock:
    """A lock in Redis shared by processes: one exchange per token across all workers.

    :param client: the Redis client (e.g. :attr:`SafeRedisCache.client`), a Redis Cluster
        client (the lock is one key, so one slot), or a zero-argument callable that returns
        the client when needed.
    :param name: the lock's Redis key, used as given (see :meth:`SafeRedisCache.lock`).
    :param ttl_ms: the lock frees itself after this long unless renewed, so that a holder
        that dies cannot block the others for longer.
    :param owner: this holder's token; a random one by default. Only the owner can renew
        or release.

    Every method returns ``False`` when Redis fails: the caller then works without the
    lock (its own exchange), which costs an extra call to IAS but never a failed request.
    """

    def __init__(
        self,
        client: Client | Callable[[], Client],
        name: str,
        *,
        ttl_ms: int,
        owner: str | None = None,
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive: a lock without expiry could block forever")
        if isinstance(client, redis.Redis | redis.RedisCluster):
            fixed = client
            self._connect: Callable[[], Client] = lambda: fixed
        else:
            self._connect = client
        self.name = name
        self.ttl_ms = ttl_ms
        self.owner = owner if owner is not None else secrets.token_hex(16)

    @property
    def client(self) -> Client:
        """The Redis client the lock lives in."""
        return self._connect()

    def _script(self, source: str) -> Any:
        # Script objects send EVALSHA and fall back to EVAL when Redis lost its script
        # cache (after a restart or a failover); registering costs no round trip.
        return self.client.register_script(source)

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (``SET name owner NX PX ttl``, atomic)."""
        try:
            return bool(self.client.set(self.name, self.owner, nx=True, px=self.ttl_ms))
        except _REDIS_ERRORS:
            return False

    def renew(self) -> bool:
        """Extend the lock to ``ttl_ms`` from now, if we still own it."""
        try:
            renew = self._script(_RENEW_SCRIPT)
            return bool(renew(keys=[self.name], args=[self.owner, self.ttl_ms]))
        except _REDIS_ERRORS:
            return False

    def release(self) -> bool:
        """Free the lock if we own it; another owner's lock is left alone."""
        try:
            release = self._script(_RELEASE_SCRIPT)
            return bool(release(keys=[self.name], args=[self.owner]))
        except _REDIS_ERRORS:
            return False

    @contextmanager
    def keep_alive(self, interval: float | None = None) -> Iterator[None]:
        """Renew the lock from a background thread while the ``with`` block runs.

        :param interval: seconds between renewals; a third of the TTL by default, so that
            one late or failed renewal does not let the lock expire.

        The thread is a daemon (it never keeps the process alive) and is stopped when the
        block exits. It keeps renewing after a failed attempt, since Redis may come back.
        """
        every = interval if interval is not None else self.ttl_ms / 3000
        stop = threading.Event()

        def renew_until_stopped() -> None:
            while not stop.wait(every):
                self.renew()

        thread = threading.Thread(
            target=renew_until_stopped, name="flask-ias-pkce lock renewal", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=1.0)
