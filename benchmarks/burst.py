"""A burst: N concurrent first requests with one fresh token, with and without single flight.

Run: ``python -m benchmarks.burst [--quick]``. A client that opens a screen fires several
calls at once, all with the token it just got: every one of them misses the cache. With
single flight one request exchanges and the others wait for its result; without it each
one calls IAS. The emulator delays every exchange by :data:`EXCHANGE_DELAY` seconds so the
requests overlap as they would against a distant IAS, and counts the exchanges it answered.

Variants: threads of one process (in-process cache; and Redis cache), two gunicorn sync
workers sharing Redis (the cross-process lock), and, for comparison, the in-process app
with single flight removed: its ``TokenCache.get_or_compute`` is replaced by a plain
compute, by monkeypatching, in this benchmark only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from flask import Flask

from flask_ias_pkce.cache import Entry
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisServer

from ._common import Figure, run_alone
from ._gunicorn import Gunicorn, app_environment
from .hot_path import protected_app, redis_config

SECTION = "4 burst (one fresh token)"
#: Seconds the emulator holds every exchange: long enough for the burst to overlap.
EXCHANGE_DELAY = 0.3

Send = Callable[[str], int]


def without_single_flight(app: Flask) -> Flask:
    """``app`` with single flight removed: every cache miss computes (exchanges) itself."""
    cache = app.extensions["ias_pkce"].authenticator.cache

    def plain_compute(key: str, compute: Callable[[], Entry]) -> tuple[Entry, bool]:
        return compute(), True

    cache.get_or_compute = plain_compute
    return app


def in_process(app: Flask) -> Send:
    """Send one request through ``app``'s test client (one client per thread)."""
    local = threading.local()

    def send(token: str) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = app.test_client()
        answer = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        status: int = answer.status_code
        return status

    return send


def over_http(url: str) -> Send:
    """Send one request to a running server (one connection per request)."""

    def send(token: str) -> int:
        answer = requests.get(
            url + "/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        return answer.status_code

    return send


def burst(ias: IASEmulator, send: Send, size: int) -> tuple[int, int]:
    """``(exchanges at the emulator, answers that were 200)`` for ``size`` requests started
    together with one token nobody has used yet."""
    token = ias.issue_public_token()
    before = len(ias.exchanges)
    ias.inject("/oauth2/token", delay=EXCHANGE_DELAY, times=size)
    start = threading.Barrier(size)

    def one() -> int:
        start.wait()
        return send(token)

    try:
        with ThreadPoolExecutor(max_workers=size) as pool:
            statuses = list(pool.map(lambda _: one(), range(size)))
    finally:
        ias.clear_faults()
    return len(ias.exchanges) - before, statuses.count(200)


def measure(sizes: Sequence[int]) -> list[tuple[str, int, int, int]]:
    """``(variant, N, exchanges, answers 200)`` for each variant and burst size."""
    results = []
    with IASEmulator() as ias, RedisServer() as redis:
        shared: dict[str, Any] = redis_config(redis)
        with Gunicorn(app_environment(ias, **shared)) as workers:
            variants: dict[str, Send] = {
                "single flight, threads, in-process cache": in_process(protected_app(ias)),
                "single flight, threads, Redis cache": in_process(protected_app(ias, **shared)),
                "single flight, 2 gunicorn workers, Redis": over_http(workers.url),
                "NO single flight (monkeypatched), threads": in_process(
                    without_single_flight(protected_app(ias))
                ),
            }
            for size in sizes:
                for name, send in variants.items():
                    exchanges, ok = burst(ias, send, size)
                    results.append((name, size, exchanges, ok))
    return results


def figures(quick: bool = False) -> Sequence[Figure]:
    """Exchanges per burst for each variant; single flight must make exactly one."""
    lines = []
    for name, size, exchanges, ok in measure((10, 100)):
        single_flight = not name.startswith("NO")
        lines.append(
            Figure(
                SECTION,
                f"N={size}, {name}: exchanges (answers 200)",
                f"{exchanges} ({ok}/{size})",
                "exactly 1" if single_flight else "",
                exchanges == 1 and ok == size if single_flight else None,
            )
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    run_alone("A burst of first requests with one fresh token", figures, argv)


if __name__ == "__main__":
    main()
