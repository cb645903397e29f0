"""The token cache on its own: expiry by not_after, the bounded in-process tier, single
flight within a process, and what a waiter does when the exchange takes too long."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask_caching.backends.simplecache import SimpleCache

from flask_ias_pkce.cache import Cached, Denial, Entry, TokenCache, from_bytes, to_bytes
from flask_ias_pkce.errors import InvalidToken
from flask_ias_pkce.sealing import Sealer
from flask_ias_pkce.testing import IASEmulator

from helpers import FakeClock, bearer, build_app


def make_cache(clock: FakeClock, *, l1_size: int = 8, wait_timeout: float = 5.0) -> TokenCache:
    return TokenCache(
        SimpleCache(), Sealer.random(), l1_size=l1_size, clock=clock, wait_timeout=wait_timeout
    )


def test_entry_is_served_until_not_after_and_never_after() -> None:
    clock = FakeClock(1_000_000.0)
    cache = make_cache(clock)
    cache.put("k", Entry("exchanged", clock.now + 100))

    clock.advance(99)
    assert cache.get("k") == Entry("exchanged", 1_000_100.0)
    clock.advance(1)
    assert cache.get("k") is None


def test_entry_due_within_a_second_is_not_stored() -> None:
    clock = FakeClock(1_000_000.0)
    cache = make_cache(clock)
    # Flask-Caching reads a timeout of 0 as "forever": such an entry must never reach it.
    cache.put("k", Entry("exchanged", clock.now + 0.5))
    cache.put("past", Entry("exchanged", clock.now - 10))

    assert cache.get("k") is None
    assert cache.get("past") is None
    assert cache.backend.get("k") is None


def test_backend_entry_is_found_when_the_in_process_tier_forgot_it() -> None:
    clock = FakeClock(1_000_000.0)
    cache = make_cache(clock, l1_size=0)
    cache.put("k", Entry("exchanged", clock.now + 100))

    assert cache.get("k") == Entry("exchanged", clock.now + 100)


def test_the_fast_lookup_serves_only_a_valid_exchange_entry_held_in_process() -> None:
    clock = FakeClock(1_000_000.0)
    cache = make_cache(clock)
    cache.put(cache.key("valid"), Entry("exchanged", clock.now + 100))
    cache.put(cache.key("refused"), Denial(clock.now + 100))
    assert cache.has_in_process_tier
    assert cache.in_process("valid") == Entry("exchanged", clock.now + 100)
    assert cache.in_process("refused") is None  # a denial is the full path's to answer
    assert cache.in_process("unknown") is None
    # Another purpose's entry for the same token is not its exchange entry.
    cache.put(cache.key("other", purpose="xsuaa"), Entry("xsuaa token", clock.now + 100))
    assert cache.in_process("other") is None
    clock.advance(100)
    assert cache.in_process("valid") is None


def test_the_fast_lookup_never_asks_the_backend() -> None:
    clock = FakeClock(1_000_000.0)
    cache = make_cache(clock, l1_size=0)
    cache.put(cache.key("valid"), Entry("exchanged", clock.now + 100))
    assert not cache.has_in_process_tier
    assert cache.in_process("valid") is None
    assert cache.get(cache.key("valid")) == Entry("exchanged", clock.now + 100)


def test_in_process_tier_is_bounded() -> None:
    clock = FakeClock(1_000_000.0)
    cache = make_cache(clock, l1_size=3)
    for index in range(10):
        cache.put(f"k{index}", Entry(f"t{index}", clock.now + 100))

    assert len(cache._l1) == 3
    assert set(cache._l1) == {"k7", "k8", "k9"}


def test_concurrent_misses_compute_once() -> None:
    cache = make_cache(FakeClock(1_000_000.0))
    calls = 0
    release = threading.Event()

    def compute() -> Entry:
        nonlocal calls
        calls += 1
        release.wait(5)
        return Entry("exchanged", 2_000_000.0)

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(cache.get_or_compute, "k", compute) for _ in range(20)]
        time.sleep(0.2)
        release.set()
        results = [future.result() for future in futures]

    assert calls == 1
    assert sum(computed for _, computed in results) == 1
    assert {entry.token for entry, _ in results} == {"exchanged"}


def test_error_of_the_computing_thread_reaches_its_waiters() -> None:
    cache = make_cache(FakeClock(1_000_000.0))
    release = threading.Event()

    def compute() -> Entry:
        release.wait(5)
        raise InvalidToken("refused", reason="ias_invalid_grant")

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(cache.get_or_compute, "k", compute) for _ in range(5)]
        time.sleep(0.2)
        release.set()
        errors = [future.exception() for future in futures]

    assert all(isinstance(error, InvalidToken) for error in errors)


def test_waiter_computes_for_itself_when_the_exchange_takes_too_long() -> None:
    cache = make_cache(FakeClock(1_000_000.0), wait_timeout=0.2)
    stuck = threading.Event()
    leader_started = threading.Event()

    def slow() -> Entry:
        leader_started.set()
        stuck.wait(5)
        return Entry("late", 2_000_000.0)

    with ThreadPoolExecutor(max_workers=1) as pool:
        leader = pool.submit(cache.get_or_compute, "k", slow)
        leader_started.wait(5)
        entry, computed = cache.get_or_compute("k", lambda: Entry("own", 2_000_000.0))
        stuck.set()
        leader.result()

    assert (entry.token, computed) == ("own", True)


def test_concurrent_first_requests_in_one_process_make_one_exchange(
    ias_emulator: IASEmulator,
) -> None:
    app = build_app(ias_emulator)
    token = ias_emulator.issue_public_token()
    ias_emulator.inject("/oauth2/token", delay=0.3)
    start = threading.Barrier(20)

    def call(_: int) -> int:
        start.wait()
        return app.test_client().get("/api/me", headers=bearer(token)).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(call, range(20)))

    assert statuses == [200] * 20
    assert len(ias_emulator.exchanges) == 1


@pytest.mark.parametrize(
    "cached", [Entry("a.b.c", 12.5), Entry("a.b.c", 12.5, passthrough=True), Denial(12.5)]
)
def test_entries_round_trip_through_bytes(cached: Cached) -> None:
    assert from_bytes(to_bytes(cached)) == cached


@pytest.mark.parametrize(
    "data", [b"", b"{}", b"[]", b'{"v":2,"t":"x","n":1,"d":false,"p":false}', b"\xff"]
)
def test_malformed_entry_bytes_are_no_entry(data: bytes) -> None:
    assert from_bytes(data) is None


@pytest.fixture
def clock() -> FakeClock:
    """Seconds since the epoch that move only when the test says so."""
    return FakeClock(1_000_000.0)


#: (what is computed, seconds from now it is served for, seconds later it is asked for,
#: whether it is still there)
LIFETIMES: list[tuple[Cached, float, bool]] = [
    (Entry("exchanged", 1_000_100.0), 99, True),
    (Entry("exchanged", 1_000_100.0), 100, False),
    (Entry("public", 1_000_100.0, passthrough=True), 50, True),
    (Denial(1_000_030.0), 29, True),
    (Denial(1_000_030.0), 30, False),
    # Due within a second: never stored (Flask-Caching reads a timeout of 0 as forever).
    (Entry("exchanged", 1_000_000.5), 0, False),
    (Denial(999_990.0), 0, False),
]


@pytest.mark.parametrize(("computed", "later", "kept"), LIFETIMES)
@pytest.mark.parametrize("l1_size", [0, 8], ids=["backend-only", "with-l1"])
def test_get_or_compute_stores_what_it_computes_until_not_after(
    clock: FakeClock, computed: Cached, later: float, kept: bool, l1_size: int
) -> None:
    cache = make_cache(clock, l1_size=l1_size)
    calls: list[Cached] = []

    def compute() -> Cached:
        calls.append(computed)
        return computed

    assert cache.get_or_compute("k", compute) == (computed, True)
    clock.advance(later)

    assert cache.get("k") == (computed if kept else None)
    assert cache.get_or_compute("k", compute) == (computed, not kept)
    assert len(calls) == (1 if kept else 2)


def test_a_denial_is_its_own_kind_and_holds_no_token(clock: FakeClock) -> None:
    cache = make_cache(clock)
    cache.get_or_compute("k", lambda: Denial(clock.now + 30))

    found = cache.get("k")
    assert isinstance(found, Denial)
    assert not isinstance(found, Entry)
    assert not hasattr(found, "token")
