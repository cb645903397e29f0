"""A Flask-Caching backend for Redis that stores bytes and never unpickles, and a lock.

Flask-Caching's own ``RedisCache`` unpickles whatever it reads, so anyone who can write to
that Redis could run code in the app. :class:`SafeRedisCache` stores only the bytes it is
given (our sealed values, see :mod:`flask_ias_pkce.sealing`) and hands back the raw bytes
it reads, for the caller to authenticate.

Redis is an optimisation here, never a dependency: when it is down or slow, every
operation returns a miss or ``False`` within a short socket timeout instead of raising, the
failure is logged at most once per interval, and the cache works again by itself when Redis
does.

Select it with ``CACHE_TYPE = "flask_ias_pkce.redis_cache.SafeRedisCache"`` and
``CACHE_REDIS_URL``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import redis
from flask_caching.backends.base import BaseCache
from redis.backoff import NoBackoff
from redis.retry import Retry

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


def _check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        # Anything else would need a serializer, and serializers are what we avoid.
        raise TypeError(f"SafeRedisCache stores bytes only, got {type(value).__name__}")
    return value


class SafeRedisCache(BaseCache):
    """Flask-Caching backend over Redis for ``bytes`` values, with no serializer at all.

    :param client: a ``redis.Redis`` that returns bytes (``decode_responses=False``);
        :meth:`factory` builds one from ``CACHE_REDIS_URL`` with short timeouts.
    :param key_prefix: put in front of every key, so that several apps can share a Redis
        and :meth:`clear` only touches our entries.
    :param default_timeout: kept for Flask-Caching's interface, never used: :meth:`set` and
        :meth:`add` require an explicit positive timeout.
    :param clock: monotonic seconds, for the log interval (tests pass a fake one).
    :param log_interval: while Redis stays down, warn at most once per this many seconds.

    No method raises because of Redis: a failed read is a miss (``None``), a failed write
    is ``False``. Programming errors still raise: a non-bytes value (:class:`TypeError`),
    a missing or non-positive timeout (:class:`ValueError`).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        default_timeout: int = 300,
        ignore_delete_many_errors: bool = True,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = DEFAULT_LOG_INTERVAL,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout, ignore_delete_many_errors=ignore_delete_many_errors
        )
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("SafeRedisCache needs a Redis client with decode_responses=False")
        self.client = client
        self.key_prefix = key_prefix
        self._clock = clock
        self._log_interval = log_interval
        self._available = True
        self._last_warning_at: float | None = None
        self._state_lock = threading.Lock()
        connection_kwargs = client.get_connection_kwargs()
        # Where Redis is, for the log; never the password.
        self._where = f"{connection_kwargs.get('host', '?')}:{connection_kwargs.get('port', '?')}"

    @classmethod
    def factory(
        cls,
        app: Flask,
        config: dict[str, Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> SafeRedisCache:
        """Build the cache from Flask-Caching's configuration.

        Reads ``CACHE_REDIS_URL`` (``redis://`` or ``rediss://``, required),
        ``CACHE_KEY_PREFIX``, ``CACHE_REDIS_SOCKET_TIMEOUT`` (seconds, default 0.25, used
        for connecting and for every answer) and ``CACHE_REDIS_HEALTH_CHECK_INTERVAL``.
        Other ``CACHE_OPTIONS`` are passed to ``redis.Redis.from_url``.
        """
        options = dict(kwargs)
        default_timeout = options.pop("default_timeout", 300)
        ignore_delete_many_errors = options.pop("ignore_delete_many_errors", True)
        return cls.from_url(
            str(config.get("CACHE_REDIS_URL") or ""),
            key_prefix=config.get("CACHE_KEY_PREFIX", DEFAULT_KEY_PREFIX) or "",
            socket_timeout=float(config.get("CACHE_REDIS_SOCKET_TIMEOUT", DEFAULT_SOCKET_TIMEOUT)),
            health_check_interval=int(
                config.get("CACHE_REDIS_HEALTH_CHECK_INTERVAL", DEFAULT_HEALTH_CHECK_INTERVAL)
            ),
            default_timeout=default_timeout,
            ignore_delete_many_errors=ignore_delete_many_errors,
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
        **redis_options: Any,
    ) -> SafeRedisCache:
        """Build the cache and its client from a ``redis://`` or ``rediss://`` URL.

        :param socket_timeout: seconds, for connecting and for every answer.
        :param health_check_interval: seconds after which an idle pooled connection is
            checked with a PING before use.
        :param redis_options: passed on to ``redis.Redis.from_url``.
        """
        if urlsplit(url).scheme not in _URL_SCHEMES:
            # Not the URL itself: it may carry a password.
            raise ValueError(
                "SafeRedisCache needs CACHE_REDIS_URL starting with redis:// or rediss://"
            )
        redis_options.setdefault("socket_timeout", socket_timeout)
        redis_options.setdefault("socket_connect_timeout", socket_timeout)
        redis_options.setdefault("health_check_interval", health_check_interval)
        # redis-py retries three times with backoff by default, which turns "Redis is
        # down" into seconds per request. One immediate retry on a connection error is
        # enough to replace a pooled connection that a Redis restart broke; a timeout is
        # not retried, so a slow Redis costs one socket timeout per call.
        redis_options.setdefault(
            "retry", Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        )
        redis_options["decode_responses"] = False
        return cls(
            redis.Redis.from_url(url, **redis_options),
            key_prefix=key_prefix,
            default_timeout=default_timeout,
            ignore_delete_many_errors=ignore_delete_many_errors,
            clock=clock,
            log_interval=log_interval,
        )

    @property
    def available(self) -> bool:
        """Whether the last Redis operation succeeded (no round trip of its own)."""
        return self._available

    def _key(self, key: str) -> str:
        return self.key_prefix + key

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
            logger.info("Redis cache at %s is available again", self._where)

    def _failed(self, error: redis.RedisError) -> None:
        now = self._clock()
        with self._state_lock:
            self._available = False
            if (
                self._last_warning_at is not None
                and now - self._last_warning_at < self._log_interval
            ):
                return
            self._last_warning_at = now
        # Only the error's class: a Redis error message could quote a command's arguments.
        logger.warning(
            "Redis cache at %s unavailable (%s); working without it",
            self._where,
            type(error).__name__,
        )

    def get(self, key: str) -> bytes | None:
        """The raw bytes stored under ``key``, or ``None`` (absent, or Redis unavailable)."""
        try:
            value = self.client.get(self._key(key))
        except redis.RedisError as error:
            self._failed(error)
            return None
        self._succeeded()
        return value if isinstance(value, bytes) else None

    def get_many(self, *keys: str) -> list[bytes | None]:
        """The values for ``keys`` in order (one ``MGET``); all ``None`` if Redis fails."""
        if not keys:
            return []
        try:
            values = self.client.mget([self._key(key) for key in keys])
        except redis.RedisError as error:
            self._failed(error)
            return [None] * len(keys)
        self._succeeded()
        return [value if isinstance(value, bytes) else None for value in values]

    def has(self, key: str) -> bool:
        """Whether ``key`` exists; ``False`` if Redis fails."""
        try:
            exists = self.client.exists(self._key(key))
        except redis.RedisError as error:
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
        except redis.RedisError as error:
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
        pipeline = self.client.pipeline(transaction=False)
        for key, value in values.items():
            pipeline.set(self._key(key), value, px=ttl_ms)
        try:
            results = pipeline.execute()
        except redis.RedisError as error:
            self._failed(error)
            return []
        self._succeeded()
        return [key for key, stored in zip(values, results, strict=True) if stored]

    def delete(self, key: str) -> bool:
        """Delete ``key``; ``True`` if it existed, ``False`` if not or if Redis failed."""
        try:
            deleted = self.client.delete(self._key(key))
        except redis.RedisError as error:
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
        except redis.RedisError as error:
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
        except redis.RedisError as error:
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
        """A :class:`RedisLock` named ``key`` under this cache's prefix."""
        return RedisLock(self.client, self._key(key), ttl_ms=ttl_ms, owner=owner)

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
            except redis.RedisError as error:
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

    :param client: the Redis client (e.g. :attr:`SafeRedisCache.client`).
    :param name: the lock's Redis key, used as given (see :meth:`SafeRedisCache.lock`).
    :param ttl_ms: the lock frees itself after this long unless renewed, so that a holder
        that dies cannot block the others for longer.
    :param owner: this holder's token; a random one by default. Only the owner can renew
        or release.

    Every method returns ``False`` when Redis fails: the caller then works without the
    lock (its own exchange), which costs an extra call to IAS but never a failed request.
    """

    def __init__(
        self, client: redis.Redis, name: str, *, ttl_ms: int, owner: str | None = None
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive: a lock without expiry could block forever")
        self.client = client
        self.name = name
        self.ttl_ms = ttl_ms
        self.owner = owner if owner is not None else secrets.token_hex(16)
        # Script objects send EVALSHA and fall back to EVAL when Redis lost its script
        # cache (after a restart).
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (``SET name owner NX PX ttl``, atomic)."""
        try:
            return bool(self.client.set(self.name, self.owner, nx=True, px=self.ttl_ms))
        except redis.RedisError:
            return False

    def renew(self) -> bool:
        """Extend the lock to ``ttl_ms`` from now, if we still own it."""
        try:
            return bool(self._renew(keys=[self.name], args=[self.owner, self.ttl_ms]))
        except redis.RedisError:
            return False

    def release(self) -> bool:
        """Free the lock if we own it; another owner's lock is left alone."""
        try:
            return bool(self._release(keys=[self.name], args=[self.owner]))
        except redis.RedisError:
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
