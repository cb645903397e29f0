"""The cost of a cache hit on each kind of shared cache, side by side in one run.

A hit served by the in-process tier, and hits served by Redis alone (the in-process tier
off, so that every request makes the round trip): plain ``redis://``, ``rediss://`` (TLS
with a verified certificate, a pooled connection) and a 3-master Redis Cluster. Each is
a ratio to the bare route measured in the same rounds::

    python -m benchmarks.redis_topologies [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisClusterServer, RedisServer

from ._common import Figure, interleaved_medians, ratio, run_alone
from .hot_path import SECRET, bare_app, protected_app, request_of

SECTION = "7 shared cache: hit cost per Redis topology"
BARE = "bare route (baseline)"
IN_PROCESS = "in-process tier"
PLAIN = "Redis only, redis://"
TLS = "Redis only, rediss:// (TLS, verified)"
CLUSTER = "Redis Cluster only (3 masters)"


def _shared(url: str, **more: Any) -> dict[str, Any]:
    return {
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_URL": url,
        "IAS_PKCE_CACHE_SECRET": SECRET,
        "IAS_PKCE_L1_SIZE": 0,
        **more,
    }


def measure(rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per request of each variant, interleaved round by round."""
    with (
        IASEmulator() as ias,
        RedisServer() as plain,
        RedisServer(tls=True) as tls,
        RedisClusterServer(masters=3) as cluster,
    ):
        token = ias.issue_public_token()
        runs = {
            BARE: request_of(bare_app(), token),
            IN_PROCESS: request_of(
                protected_app(ias, **_shared(plain.url, IAS_PKCE_L1_SIZE=1024)), token
            ),
            PLAIN: request_of(protected_app(ias, **_shared(plain.url)), token),
            TLS: request_of(
                protected_app(
                    ias, **_shared(tls.url, IAS_PKCE_CACHE_REDIS_CA=str(tls.tls.ca_file))
                ),
                token,
            ),
            CLUSTER: request_of(
                protected_app(ias, **_shared(cluster.url, IAS_PKCE_CACHE_REDIS_CLUSTER=True)),
                token,
            ),
        }
        return interleaved_medians(runs, rounds=rounds, calls=calls)


def figures(quick: bool = False) -> Sequence[Figure]:
    """Each variant's µs per request and ratio to the bare route, and TLS and cluster
    against plain Redis."""
    # Many short rounds: on a shared machine a neighbour's burst then spoils few samples.
    rounds, calls = (3, 200) if quick else (25, 300)
    medians = measure(rounds, calls)
    base = medians[BARE]
    lines = [Figure(SECTION, "rounds x requests per variant", f"{rounds} x {calls}")]
    for name, seconds in medians.items():
        lines.append(
            Figure(
                SECTION,
                f"{name}: µs/request, ratio to bare",
                f"{seconds * 1e6:.1f}, {ratio(seconds / base)} ({(seconds - base) * 1e6:+.0f} µs)",
            )
        )
    plain = medians[PLAIN] - base
    lines.append(
        Figure(
            SECTION,
            "added cost of a hit: TLS / plain; cluster / plain",
            f"{ratio((medians[TLS] - base) / plain)}; {ratio((medians[CLUSTER] - base) / plain)}",
        )
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    run_alone("Cache-hit cost per Redis topology", figures, argv)


if __name__ == "__main__":
    main()
