"""Throughput over HTTP: gunicorn with 2 sync workers, bare route against protected route.

Run: ``python -m benchmarks.over_http [--quick]``. Needs ``wrk`` (``apt-get install wrk``)
and ``redis-server``. Each gunicorn serves ``benchmarks/_wsgi_app.py``: ``/bare`` is the
same app's exempt view, so the requests-per-second ratio is the cost of our hook and cache
hit inside a real server, with HTTP parsing, the WSGI stack and the kernel around it. One
server keeps tokens in process, another in Redis with the in-process tier, and a third
runs gunicorn's ``gevent`` worker (in-process cache, keep-alive connections); each
protected route is compared with the bare route of its own server. ``wrk`` drives each
route for a fixed time, a server's two routes back to back (which one first alternates),
for several rounds; the figure is the median of the rounds' protected/bare ratios. Every
worker exchanges the token once during a warm-up, so the timed requests are cache hits.
The first two servers run gunicorn's default sync workers (a connection per request). On
a 2-core machine that also runs ``wrk`` and other jobs, one run's figure varies by ±10 %
and more, hence the pairing and the median.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from collections.abc import Sequence

from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisServer

from ._common import Figure, ratio, require_program, run_alone
from ._gunicorn import Gunicorn, app_environment
from .hot_path import redis_config

SECTION = "2 over HTTP (gunicorn, 2 workers)"
WRK_HINT = "install it with `apt-get install wrk` (the HTTP benchmark drives gunicorn with it)"
IN_PROCESS = "in-process cache"
REDIS = "Redis + in-process tier"
GEVENT = "gevent worker, in-process cache"
BARE = "bare route (exempt, same app)"
PROTECTED = "protected route"
#: Protected/bare requests per second, at least.
THROUGHPUT_TARGET = 0.95
#: Connections wrk keeps open: enough to keep both workers busy while others reconnect
#: (a sync worker closes the connection after each answer).
CONNECTIONS = 8

_REQUESTS_PER_SECOND = re.compile(r"Requests/sec:\s+([0-9.]+)")
_NOT_OK = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def drive(wrk: str, url: str, token: str, seconds: int) -> float:
    """Requests per second ``wrk`` gets from ``url`` in ``seconds``; every answer must be 2xx."""
    command = [
        wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s",
        "-H", f"Authorization: Bearer {token}",
        url,
    ]  # fmt: skip
    finished = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 30,
    )
    if finished.returncode != 0:
        raise RuntimeError(f"wrk failed on {url}:\n{finished.stdout}{finished.stderr}")
    not_ok = _NOT_OK.search(finished.stdout)
    if not_ok is not None:
        raise RuntimeError(f"{not_ok.group(1)} answers of {url} were not 2xx")
    found = _REQUESTS_PER_SECOND.search(finished.stdout)
    if found is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{finished.stdout}")
    return float(found.group(1))


def measure(*, rounds: int, seconds: int) -> dict[tuple[str, str], list[float]]:
    """Requests per second of each ``(server, route)`` in each of ``rounds`` interleaved
    runs, in round order."""
    wrk = require_program("wrk", WRK_HINT)
    with IASEmulator() as ias, RedisServer() as redis:
        shared = redis_config(redis)
        token = ias.issue_public_token()
        with (
            Gunicorn(app_environment(ias)) as in_process,
            Gunicorn(app_environment(ias, **shared)) as with_redis,
            Gunicorn(app_environment(ias), worker_class="gevent") as with_gevent,
        ):
            servers = ((IN_PROCESS, in_process), (REDIS, with_redis), (GEVENT, with_gevent))
            urls = {
                (server, route): running.url + path
                for server, running in servers
                for route, path in ((BARE, "/bare"), (PROTECTED, "/api/me"))
            }
            for url in urls.values():
                drive(wrk, url, token, 1)  # warm-up: each worker exchanges and caches
            samples: dict[tuple[str, str], list[float]] = {name: [] for name in urls}
            names = [server for server, _ in servers]
            for turn in range(rounds):
                # A server's two routes run back to back, so that a change in the machine's
                # load weighs on both sides of their ratio; which goes first alternates,
                # and each round starts with another server.
                shift = turn % len(names)
                routes = (BARE, PROTECTED) if turn % 2 == 0 else (PROTECTED, BARE)
                for server in names[shift:] + names[:shift]:
                    for route in routes:
                        samples[server, route].append(
                            drive(wrk, urls[server, route], token, seconds)
                        )
    return samples


def figures(quick: bool = False) -> Sequence[Figure]:
    """Median requests per second of each route and the protected/bare ratios."""
    rounds, seconds = (1, 1) if quick else (10, 2)
    samples = measure(rounds=rounds, seconds=seconds)
    lines = [
        Figure(SECTION, "wrk runs per route (interleaved)", f"{rounds} x {seconds} s"),
        *(
            Figure(
                SECTION, f"{server}: {route}: median requests/s", f"{statistics.median(runs):.0f}"
            )
            for (server, route), runs in samples.items()
        ),
    ]
    for server in (IN_PROCESS, REDIS, GEVENT):
        # Each round's protected run against the same round's bare run, so that a slow
        # spell of the machine weighs on both sides of a ratio; the median of the rounds.
        pairs = zip(samples[server, PROTECTED], samples[server, BARE], strict=True)
        share = statistics.median(protected / bare for protected, bare in pairs)
        lines.append(
            Figure(
                SECTION,
                f"{server}: protected / bare throughput (median of rounds)",
                ratio(share),
                f">= {THROUGHPUT_TARGET:.2f}x",
                share >= THROUGHPUT_TARGET,
            )
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    run_alone("Throughput over HTTP (median requests/s)", figures, argv)


if __name__ == "__main__":
    main()
