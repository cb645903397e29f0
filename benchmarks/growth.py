"""Growth: the cost of a cache hit as the cache fills, and the memory each cached token takes.

Run: ``python -m benchmarks.growth [--quick]``. A busy app holds one entry per user's
token. Three apps with the in-process cache hold 10, 1,000 and 100,000 distinct entries;
each serves the same token on a cache hit, the apps taking turns; the per-request cost
must stay flat. The caches are filled through the :class:`~flask_ias_pkce.cache.TokenCache`
API with entries the size of a real exchanged token (the emulator's, with a distinct
signature each), their claims decoded as on a served request.

Memory per cached token is measured on the largest fill: in process with ``tracemalloc``
(the in-process tier and the in-process backend together), and for the Redis backend as
Redis's ``used_memory`` growth, next to what its in-process tier holds.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable, Sequence

from flask import Flask

from flask_ias_pkce.cache import Entry, TokenCache
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisServer

from ._common import Figure, interleaved_medians, ratio, run_alone
from .hot_path import protected_app, redis_config, request_of

SECTION = "5 growth (cached tokens)"
#: Room for every entry in both in-process places (our tier and SimpleCache).
CAPACITY = 200_000


def token_cache(app: Flask) -> TokenCache:
    """The app's :class:`TokenCache`."""
    cache: TokenCache = app.extensions["ias_pkce"].authenticator.cache
    return cache


def fill(cache: TokenCache, count: int, exchanged_token: str) -> None:
    """Add ``count`` entries for distinct public tokens, each holding a distinct token of
    the size of ``exchanged_token``, valid for the whole run."""
    not_after = time.time() + 3000
    stem = exchanged_token[:-12]
    for number in range(count):
        entry = Entry(f"{stem}{number:012d}", not_after)
        cache.put(cache.key(f"benchmark-public-token-{number}"), entry)
        _ = entry.claims  # decoded, as on a served request


def traced_bytes(action: Callable[[], None]) -> int:
    """Bytes still allocated after ``action``, by ``tracemalloc``."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        action()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def measure(
    sizes: Sequence[int], redis_count: int, *, rounds: int, calls: int
) -> tuple[dict[int, float], float, float, float]:
    """``({size: median seconds per cache hit}, in-process bytes per token, Redis bytes per
    token, Redis app's in-process tier bytes per token)``."""
    with IASEmulator() as ias, RedisServer() as redis:
        token = ias.issue_public_token()
        in_process = {"IAS_PKCE_L1_SIZE": CAPACITY, "IAS_PKCE_CACHE_THRESHOLD": CAPACITY}
        apps = {size: protected_app(ias, **in_process) for size in sizes}
        runs = {str(size): request_of(app, token) for size, app in apps.items()}
        probe = token_cache(apps[sizes[0]])
        found = probe.get(probe.key(token))
        assert found is not None, "the warm-up request should have cached the token"
        exchanged = found.token
        largest = max(sizes)
        for size in sizes:
            if size != largest:  # the served token is one of the entries
                fill(token_cache(apps[size]), size - 1, exchanged)
        local_bytes = traced_bytes(lambda: fill(token_cache(apps[largest]), largest - 1, exchanged))
        medians = interleaved_medians(runs, rounds=rounds, calls=calls)

        shared = protected_app(ias, **redis_config(redis), IAS_PKCE_L1_SIZE=CAPACITY)
        client = redis.client()
        redis_before = int(client.info("memory")["used_memory"])
        tier_bytes = traced_bytes(lambda: fill(token_cache(shared), redis_count, exchanged))
        redis_bytes = int(client.info("memory")["used_memory"]) - redis_before
        client.close()
    return (
        {int(size): seconds for size, seconds in medians.items()},
        local_bytes / (largest - 1),
        redis_bytes / redis_count,
        tier_bytes / redis_count,
    )


def figures(quick: bool = False) -> Sequence[Figure]:
    """Cache-hit cost per size and its ratio to the smallest; bytes per cached token."""
    sizes = (10, 1_000, 10_000) if quick else (10, 1_000, 100_000)
    redis_count = 2_000 if quick else 20_000
    rounds, calls = (3, 300) if quick else (7, 2000)
    medians, local_bytes, redis_bytes, tier_bytes = measure(
        sizes, redis_count, rounds=rounds, calls=calls
    )
    smallest = medians[min(sizes)]
    lines = [Figure(SECTION, "rounds x requests per size (interleaved)", f"{rounds} x {calls}")]
    for size, seconds in medians.items():
        growth = seconds / smallest
        lines.append(
            Figure(
                SECTION,
                f"cache hit with {size:,} tokens cached: µs/request, ratio to {min(sizes)}",
                f"{seconds * 1e6:.1f}, {ratio(growth)}",
                "<= 1.10x (flat)" if size != min(sizes) else "",
                growth <= 1.10 if size != min(sizes) else None,
            )
        )
    lines += [
        Figure(
            SECTION,
            f"in-process cache: bytes per cached token ({max(sizes):,}, tracemalloc)",
            f"{local_bytes:,.0f}",
        ),
        Figure(
            SECTION,
            f"Redis: bytes per cached token ({redis_count:,}, used_memory)",
            f"{redis_bytes:,.0f}",
        ),
        Figure(
            SECTION,
            f"Redis app's in-process tier: bytes per cached token ({redis_count:,})",
            f"{tier_bytes:,.0f}",
        ),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    run_alone("Growth: cache-hit cost and memory per cached token", figures, argv)


if __name__ == "__main__":
    main()
