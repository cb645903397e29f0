"""The shared cache against a real redis-server: sealing, the safe backend, the lock."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask
from flask_caching import Cache

from flask_ias_pkce.redis_cache import RedisLock, SafeRedisCache
from flask_ias_pkce.sealing import KEY_VERSION, Sealer
from flask_ias_pkce.testing.redis_server import RedisServer, RedisServerNotFoundError

SECRET = "s" * 40
OTHER_SECRET = "t" * 40
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJl"


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def is_available(cache: SafeRedisCache) -> bool:
    # A function call, so that a type checker does not keep an earlier answer.
    return cache.available


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(redis_server: RedisServer, clock: FakeClock) -> Iterator[SafeRedisCache]:
    safe_cache = SafeRedisCache.from_url(redis_server.url, clock=clock)
    yield safe_cache
    safe_cache.client.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client, to look at (and tamper with) what Redis holds."""
    client = redis_server.client()
    yield client
    client.close()


# --- sealing -----------------------------------------------------------------------------


def test_sealed_value_opens_with_same_secret_and_key() -> None:
    key = Sealer(SECRET).cache_key(TOKEN)
    sealed = Sealer(SECRET).seal(b'{"token": "x"}', associated=key.encode())
    assert Sealer(SECRET).open(sealed, associated=key.encode()) == b'{"token": "x"}'
    assert b"token" not in sealed


def test_seal_is_repeatable_with_an_injected_nonce_source() -> None:
    sealer = Sealer(SECRET, nonce_source=lambda n: b"\x07" * n)
    assert sealer.seal(b"v", associated=b"k") == sealer.seal(b"v", associated=b"k")
    assert Sealer(SECRET).seal(b"v", associated=b"k") != Sealer(SECRET).seal(b"v", associated=b"k")


def _sealed() -> bytes:
    return Sealer(SECRET).seal(b"exchanged token", associated=b"key-1")


def _flipped(index: int) -> bytes:
    # One sealed value with one bit flipped. Each seal has a fresh nonce, so splicing two
    # of them tested something else, and with odds of 1 in 256 gave back a valid value.
    sealed = bytearray(_sealed())
    sealed[index] ^= 1
    return bytes(sealed)


@pytest.mark.parametrize(
    ("sealed", "associated", "secret"),
    [
        pytest.param(_flipped(-1), b"key-1", SECRET, id="tag"),
        pytest.param(_flipped(20), b"key-1", SECRET, id="body"),
        pytest.param(b"\x02" + _sealed()[1:], b"key-1", SECRET, id="version"),
        pytest.param(_sealed(), b"key-1", OTHER_SECRET, id="other-secret"),
        pytest.param(_sealed(), b"key-2", SECRET, id="other-associated"),
        pytest.param(_sealed()[:28], b"key-1", SECRET, id="truncated"),
        pytest.param(os.urandom(64), b"key-1", SECRET, id="garbage"),
        pytest.param(b"", b"key-1", SECRET, id="empty"),
    ],
)
def test_untrusted_value_opens_to_none(sealed: bytes, associated: bytes, secret: str) -> None:
    assert Sealer(secret).open(sealed, associated=associated) is None


def test_open_of_a_non_bytes_value_is_none() -> None:
    assert Sealer(SECRET).open("text", associated=b"k") is None


def test_short_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as error:
        Sealer("short-but-secret")
    assert "short-but-secret" not in str(error.value)


def test_cache_key_hides_the_token_and_depends_on_secret_and_purpose() -> None:
    key = Sealer(SECRET).cache_key(TOKEN)
    assert key.startswith("iaspkce:v2:exchange:")
    assert TOKEN not in key
    assert all(part not in key for part in TOKEN.split("."))
    assert key == Sealer(SECRET).cache_key(TOKEN)
    assert key != Sealer(OTHER_SECRET).cache_key(TOKEN)
    assert key != Sealer(SECRET).cache_key(TOKEN + "x")
    negative = Sealer(SECRET).cache_key(TOKEN, purpose="negative")
    assert negative.startswith("iaspkce:v2:negative:")
    assert negative.split(":")[-1] != key.split(":")[-1]


def test_cache_key_derivation_is_the_versioned_cache_format() -> None:
    # Every process that shares a cache must name entries alike: the derivation is part of
    # the cache format, so it is pinned here, computed independently of Sealer: HKDF-SHA256
    # of the secret under the v2 label keys a BLAKE2b-256 of purpose, NUL, token.
    name_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"flask-ias-pkce cache",
        info=b"flask-ias-pkce/v2 cache key BLAKE2b-256",
    ).derive(SECRET.encode())
    digest = hashlib.blake2b(b"exchange\x00" + TOKEN.encode(), key=name_key, digest_size=32)
    assert Sealer(SECRET).cache_key(TOKEN) == f"iaspkce:{KEY_VERSION}:exchange:{digest.hexdigest()}"
    assert KEY_VERSION == "v2"
    # Version 1's HMAC-SHA256 name of the same token is another key: a process of the old
    # version sharing the cache only misses, it never reads an entry under a wrong name.
    old_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"flask-ias-pkce cache",
        info=b"flask-ias-pkce/v1 cache key HMAC-SHA256",
    ).derive(SECRET.encode())
    old = hmac.new(old_key, b"exchange\x00" + TOKEN.encode(), "sha256").hexdigest()
    assert old not in Sealer(SECRET).cache_key(TOKEN)


def test_cache_key_refuses_a_purpose_that_could_break_the_key_format() -> None:
    with pytest.raises(ValueError, match="purpose"):
        Sealer(SECRET).cache_key(TOKEN, purpose="a:b")
    with pytest.raises(ValueError, match="purpose"):
        Sealer(SECRET).cache_keyer("A")


def test_a_keyer_names_entries_as_cache_key_does() -> None:
    sealer = Sealer(SECRET)
    keyer = sealer.cache_keyer("exchange-scope")
    # The keyer serves many tokens: each key depends on its token alone.
    assert [keyer(token) for token in (TOKEN, TOKEN + "x", TOKEN)] == [
        sealer.cache_key(token, purpose="exchange-scope") for token in (TOKEN, TOKEN + "x", TOKEN)
    ]
    assert keyer(TOKEN) == Sealer(SECRET).cache_keyer("exchange-scope")(TOKEN)
    assert keyer(TOKEN) != sealer.cache_keyer("exchange")(TOKEN)


def test_random_sealers_do_not_share_entries() -> None:
    first, second = Sealer.random(), Sealer.random()
    assert first.cache_key(TOKEN) != second.cache_key(TOKEN)
    assert second.open(first.seal(b"v", associated=b"k"), associated=b"k") is None


# --- the safe backend --------------------------------------------------------------------


def test_bytes_round_trip_through_redis_under_the_prefix(
    cache: SafeRedisCache, raw: redis.Redis
) -> None:
    assert cache.set("k", b"\x00value", timeout=30)
    assert cache.get("k") == b"\x00value"
    assert raw.get("iaspkce:k") == b"\x00value"
    assert cache.has("k")
    assert cache.get("absent") is None
    assert is_available(cache)


def test_configured_through_flask_caching_import_string(redis_server: RedisServer) -> None:
    app = Flask(__name__)
    flask_cache = Cache(
        app,
        config={
            "CACHE_TYPE": "flask_ias_pkce.redis_cache.SafeRedisCache",
            "CACHE_REDIS_URL": redis_server.url,
            "CACHE_KEY_PREFIX": "app1:",
        },
    )
    backend = app.extensions["cache"][flask_cache]
    assert isinstance(backend, SafeRedisCache)
    assert flask_cache.set("k", b"v", timeout=30)
    assert flask_cache.get("k") == b"v"
    raw = redis_server.client()
    assert raw.get("app1:k") == b"v"
    raw.close()
    backend.client.close()


def test_pickle_written_into_redis_is_returned_raw_and_never_run(
    cache: SafeRedisCache, raw: redis.Redis, tmp_path: Path
) -> None:
    def payload_creating(path: Path) -> bytes:
        class Payload:
            def __reduce__(self) -> tuple[object, tuple[str, str]]:
                return (open, (str(path), "w"))

        return pickle.dumps(Payload())

    # The payload is live: unpickling it does create the file.
    control = tmp_path / "control"
    pickle.loads(payload_creating(control)).close()  # noqa: S301
    assert control.exists()

    marker = tmp_path / "pwned"
    payload = payload_creating(marker)
    raw.set("iaspkce:k", payload, px=30_000)
    assert cache.get("k") == payload
    assert cache.get_many("k") == [payload]
    assert not marker.exists()
    assert Sealer(SECRET).open(payload, associated=b"iaspkce:k") is None


def test_what_redis_holds_contains_neither_token_nor_claims(
    cache: SafeRedisCache, raw: redis.Redis
) -> None:
    sealer = Sealer(SECRET)
    key = sealer.cache_key(TOKEN)
    cache.set(key, sealer.seal(b'{"sub": "user-42"}', associated=key.encode()), timeout=30)
    for name in raw.scan_iter():
        assert TOKEN.encode() not in name
        value = raw.get(name)
        assert value is not None
        assert b"user-42" not in value
        assert TOKEN.encode() not in value
    assert sealer.open(cache.get(key) or b"", associated=key.encode()) == b'{"sub": "user-42"}'


@pytest.mark.parametrize("timeout", [0, None, -1, 0.0])
def test_set_without_a_positive_timeout_is_refused(
    cache: SafeRedisCache, timeout: float | None
) -> None:
    with pytest.raises(ValueError, match="timeout"):
        cache.set("k", b"v", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        cache.add("k", b"v", timeout=timeout)
    assert cache.get("k") is None


def test_non_bytes_values_are_refused(cache: SafeRedisCache) -> None:
    with pytest.raises(TypeError, match="bytes"):
        cache.set("k", "text", timeout=30)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        cache.set_many({"k": {"a": 1}}, timeout=30)  # type: ignore[dict-item]


def test_ttl_is_set_in_milliseconds(cache: SafeRedisCache, raw: redis.Redis) -> None:
    assert cache.set("k", b"v", timeout=1.5)
    assert 1000 < raw.pttl("iaspkce:k") <= 1500
    assert cache.set("short", b"v", timeout=0.05)
    time.sleep(0.1)
    assert cache.get("short") is None


def test_add_does_not_overwrite(cache: SafeRedisCache) -> None:
    assert cache.add("k", b"first", timeout=30)
    assert not cache.add("k", b"second", timeout=30)
    assert cache.get("k") == b"first"


def test_many_delete_and_clear_touch_only_our_prefix(
    cache: SafeRedisCache, raw: redis.Redis
) -> None:
    raw.set("someone-else", b"keep")
    assert cache.set_many({"a": b"1", "b": b"2", "c": b"3"}, timeout=30) == ["a", "b", "c"]
    assert cache.get_many("a", "x", "c") == [b"1", None, b"3"]
    assert cache.delete("a")
    assert not cache.delete("a")
    assert cache.delete_many("b", "x") == ["b", "x"]
    assert cache.clear()
    assert cache.get("c") is None
    assert raw.get("someone-else") == b"keep"


def test_unlink_and_empty_calls(cache: SafeRedisCache) -> None:
    assert cache.set_many({"a": b"1", "b": b"2"}, timeout=30) == ["a", "b"]
    assert cache.unlink("a", "b") == ["a", "b"]
    assert cache.get_many("a", "b") == [None, None]
    assert cache.get_many() == []
    assert cache.set_many({}, timeout=30) == []
    assert cache.delete_many() == []


def test_counters_are_refused(cache: SafeRedisCache) -> None:
    # A Redis counter would live without expiry: the backend stores expiring bytes only.
    with pytest.raises(NotImplementedError):
        cache.inc("n")
    with pytest.raises(NotImplementedError):
        cache.dec("n")


def test_clear_without_a_prefix_is_refused(redis_server: RedisServer, raw: redis.Redis) -> None:
    # The Redis may hold other apps' data: without a prefix, clear() would touch it.
    unprefixed = SafeRedisCache.from_url(redis_server.url, key_prefix="")
    raw.set("someone-else", b"keep")

    assert unprefixed.clear() is False
    assert raw.get("someone-else") == b"keep"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda url: SafeRedisCache.from_url(url.replace("redis://", "http://")), "redis://"),
        (
            lambda url: SafeRedisCache(redis.Redis.from_url(url, decode_responses=True)),
            "decode_responses",
        ),
        (lambda url: RedisLock(redis.Redis.from_url(url), "lock:k", ttl_ms=0), "ttl_ms"),
    ],
)
def test_unsafe_settings_are_refused(redis_server: RedisServer, make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        make(redis_server.url)
    assert redis_server.url not in str(refused.value)


def test_redis_down_means_misses_logged_once_then_recovery_by_itself(
    cache: SafeRedisCache,
    redis_server: RedisServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flask_ias_pkce")
    assert cache.set("k", b"v", timeout=30)
    redis_server.stop()

    for _ in range(5):
        assert cache.get("k") is None
        assert cache.set("k", b"v", timeout=30) is False
    assert cache.get_many("k") == [None]
    assert not cache.has("k")
    # Every write degrades the same way: nothing raises into the request.
    assert cache.set_many({"a": b"1"}, timeout=30) == []
    assert cache.delete("k") is False
    assert cache.delete_many("k", "a") == []
    assert cache.unlink("k") == []
    assert cache.clear() is False
    assert not is_available(cache)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unavailable" in warnings[0].getMessage()

    clock.now += 31
    assert cache.get("k") is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2

    redis_server.start()
    assert cache.set("k", b"secret-value-7", timeout=30)
    assert cache.get("k") == b"secret-value-7"
    assert is_available(cache)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "available again" in infos[0].getMessage()
    assert all(b"secret-value-7" not in r.getMessage().encode() for r in caplog.records)


def test_pooled_connection_survives_a_restart_between_calls(
    cache: SafeRedisCache, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert cache.set("k", b"v", timeout=30)
    redis_server.stop()
    redis_server.start()
    # The pooled connection is dead; the one immediate retry replaces it.
    assert cache.set("k", b"v2", timeout=30)
    assert cache.get("k") == b"v2"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_slow_redis_times_out_as_a_miss(redis_server: RedisServer) -> None:
    slow = SafeRedisCache.from_url(redis_server.url, socket_timeout=0.1)
    assert slow.set("k", b"v", timeout=30)
    redis_server.pause()
    try:
        assert slow.get("k") is None
        assert slow.set("k", b"v", timeout=30) is False
    finally:
        redis_server.resume()
    assert slow.get("k") == b"v"
    slow.client.close()


# --- the lock and waiting ----------------------------------------------------------------


def test_lock_is_exclusive_and_released_only_by_its_owner(cache: SafeRedisCache) -> None:
    holder = cache.lock("lock:k", ttl_ms=5000)
    rival = cache.lock("lock:k", ttl_ms=5000)
    assert holder.acquire()
    assert not rival.acquire()
    assert not rival.release()
    assert not rival.renew()
    assert not rival.acquire()
    assert holder.release()
    assert not holder.release()
    assert rival.acquire()


def test_lock_expires_unless_renewed(cache: SafeRedisCache, raw: redis.Redis) -> None:
    lapsing = cache.lock("lock:a", ttl_ms=100)
    assert lapsing.acquire()
    time.sleep(0.15)
    assert cache.lock("lock:a", ttl_ms=100).acquire()

    renewed = cache.lock("lock:b", ttl_ms=300)
    assert renewed.acquire()
    time.sleep(0.2)
    assert renewed.renew()
    assert raw.pttl("iaspkce:lock:b") > 200


def test_keep_alive_renews_while_the_holder_works(cache: SafeRedisCache) -> None:
    lock = cache.lock("lock:k", ttl_ms=300)
    assert lock.acquire()
    with lock.keep_alive():
        time.sleep(0.7)
        assert not cache.lock("lock:k", ttl_ms=300).acquire()
    assert lock.release()


def test_lock_methods_return_false_when_redis_is_down(
    redis_server: RedisServer, cache: SafeRedisCache
) -> None:
    lock = RedisLock(cache.client, "lock:k", ttl_ms=1000, owner="me")
    redis_server.stop()
    assert not lock.acquire()
    assert not lock.renew()
    assert not lock.release()


def test_wait_for_returns_the_value_another_thread_stores(cache: SafeRedisCache) -> None:
    lock = cache.lock("lock:k", ttl_ms=5000)
    assert lock.acquire()

    def exchange() -> None:
        time.sleep(0.1)
        cache.set("k", b"exchanged", timeout=30)
        lock.release()

    worker = threading.Thread(target=exchange)
    worker.start()
    assert cache.wait_for("k", timeout=5, lock_key="lock:k") == b"exchanged"
    worker.join()


def test_wait_for_gives_up_when_the_lock_goes_or_time_runs_out(cache: SafeRedisCache) -> None:
    assert cache.wait_for("k", timeout=5, lock_key="lock:nobody") is None
    assert cache.wait_for("k", timeout=0.05) is None


def test_missing_redis_server_binary_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RedisServerNotFoundError, match="apt-get install redis-server"):
        RedisServer()
