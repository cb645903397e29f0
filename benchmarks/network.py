"""The exchange where the network is real: IAS 20 ms away, keep-alive against a new
connection per exchange, and a wave of new tokens through gunicorn and Redis.

Run: ``python -m benchmarks.network [--quick]``. Needs ``redis-server``. IAS (the emulator)
is reached over loopback with a round-trip time of :data:`RTT`, through the delaying TCP
proxy of :mod:`benchmarks._network` (the report says whether a netem namespace would have
been possible here). Redis stays local, as it is next to the app.

- **Exchange**: our keep-alive mTLS session against a new connection per exchange (the
  reference sample's way, which pays the TCP and TLS handshakes, two more round trips,
  every time), taking turns, each with a new token.
- **Token wave**: :data:`WAVE_TOKENS` distinct tokens nobody has used yet, each sent by
  :data:`REQUESTS_PER_TOKEN` requests at once (a client opening a screen), by
  :data:`CLIENTS` keep-alive HTTP clients, to gunicorn with 4 ``gthread`` workers of 8
  threads sharing Redis; IAS answers each exchange after :data:`IAS_DELAY` plus the round
  trip. Once as we run, and once as the sample runs: single flight off and a new connection
  per exchange (``BENCHMARK_LIKE_THE_SAMPLE`` in ``benchmarks/_wsgi_app.py``). The figures:
  exchanges IAS saw (ours: exactly one per token), answers that were not 2xx (0), and the
  requests' p50 and p99 latency.
"""

from __future__ import annotations

import http.client
import queue
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask_ias_pkce.testing.redis_server import RedisServer

from ._common import Figure, ratio, run_alone
from ._gunicorn import Gunicorn, app_environment
from ._network import DistantIAS, netem_refusal
from .exchange import keep_alive_exchange, new_connection_exchange
from .hot_path import redis_config

SECTION = "6 network (IAS 20 ms away)"
#: Round-trip time between the app and IAS.
RTT = 0.020
#: What IAS itself takes to answer an exchange in the wave.
IAS_DELAY = 0.030
WAVE_TOKENS = 1000
REQUESTS_PER_TOKEN = 4
CLIENTS = 64
WORKERS, THREADS = 4, 8
OURS = "ours (single flight, keep-alive)"
SAMPLE = "no single flight, new connection per exchange"


def delay_method() -> str:
    """How the round trip is made, for the report."""
    refusal = netem_refusal()
    return f"delaying TCP proxy on loopback (netem: {refusal or 'available, not used'})"


def exchange_latencies(exchanges: int) -> dict[str, tuple[float, int]]:
    """``variant -> (median seconds per exchange, connections opened)`` at :data:`RTT`."""
    with DistantIAS(rtt=RTT) as ias:
        keep_alive, close = keep_alive_exchange(ias)
        variants = {"keep-alive": keep_alive, "new connection": new_connection_exchange(ias)}
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        connections = dict.fromkeys(variants, 0)
        try:
            for turn in range(exchanges + 1):
                for name, exchange in variants.items():
                    token = ias.issue_public_token()
                    opened = ias.connections
                    start = time.perf_counter()
                    exchange(token)
                    elapsed = time.perf_counter() - start
                    connections[name] += ias.connections - opened
                    if turn:  # the first turn warms up (TLS contexts, the first handshake)
                        seconds[name].append(elapsed)
        finally:
            close()
    return {name: (statistics.median(seconds[name]), connections[name]) for name in variants}


@dataclass(frozen=True)
class Wave:
    """What one token wave saw."""

    requests: int
    exchanges: int
    connections: int
    not_ok: int
    p50: float
    p99: float
    seconds: float


def send_wave(url: str, tokens: Sequence[str]) -> tuple[list[int], list[float], float]:
    """Each token :data:`REQUESTS_PER_TOKEN` times, by :data:`CLIENTS` keep-alive clients;
    the statuses (0: no answer), the latencies and the wave's duration."""
    work: queue.SimpleQueue[str] = queue.SimpleQueue()
    for token in tokens:
        for _ in range(REQUESTS_PER_TOKEN):
            work.put(token)  # one after another: free clients take them up together
    split = urlsplit(url)
    statuses: list[int] = []
    latencies: list[float] = []

    def client() -> None:
        connection = http.client.HTTPConnection(split.hostname or "", split.port, timeout=60)
        while True:
            try:
                token = work.get_nowait()
            except queue.Empty:
                break
            start = time.perf_counter()
            try:
                connection.request("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException):
                connection.close()  # reopened by the next request
                status = 0
            latencies.append(time.perf_counter() - start)
            statuses.append(status)
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, latencies, time.perf_counter() - started


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def token_waves(tokens: int) -> dict[str, Wave]:
    """One wave of ``tokens`` new tokens for each way of exchanging."""
    waves = {}
    with DistantIAS(rtt=RTT) as ias, RedisServer() as redis:
        for name, like_the_sample in ((OURS, False), (SAMPLE, True)):
            environment = app_environment(
                ias, **redis_config(redis), BENCHMARK_LIKE_THE_SAMPLE=like_the_sample
            )
            batch = [ias.issue_public_token() for _ in range(tokens)]
            with Gunicorn(environment, workers=WORKERS, threads=THREADS) as server:
                before, opened = len(ias.exchanges), ias.connections
                ias.inject("/oauth2/token", delay=IAS_DELAY, times=10**9)
                try:
                    statuses, latencies, seconds = send_wave(server.url, batch)
                finally:
                    ias.clear_faults()
                waves[name] = Wave(
                    requests=len(statuses),
                    exchanges=len(ias.exchanges) - before,
                    connections=ias.connections - opened,
                    not_ok=sum(1 for status in statuses if not 200 <= status < 300),
                    p50=percentile(latencies, 0.50),
                    p99=percentile(latencies, 0.99),
                    seconds=seconds,
                )
    return waves


def exchange_figures(exchanges: int) -> list[Figure]:
    """Keep-alive against a new connection per exchange, at :data:`RTT`."""
    results = exchange_latencies(exchanges)
    rtt_ms = RTT * 1e3
    keep_alive, keep_alive_connections = results["keep-alive"]
    fresh, fresh_connections = results["new connection"]
    return [
        Figure(SECTION, "round-trip time to IAS, how", f"{rtt_ms:.0f} ms, {delay_method()}"),
        Figure(
            SECTION,
            f"exchange, keep-alive (ours): median ms, connections for {exchanges + 1}",
            f"{keep_alive * 1e3:.1f}, {keep_alive_connections}",
        ),
        Figure(
            SECTION,
            f"exchange, new connection each time (sample): median ms, connections for "
            f"{exchanges + 1}",
            f"{fresh * 1e3:.1f}, {fresh_connections}",
        ),
        Figure(
            SECTION,
            "exchange: new connection / keep-alive latency (extra ms)",
            f"{ratio(fresh / keep_alive)} (+{(fresh - keep_alive) * 1e3:.0f} ms)",
            # TCP's and TLS 1.3's handshakes: one round trip each, whatever the load.
            f"extra >= 2 RTT ({2 * rtt_ms:.0f} ms)",
            fresh - keep_alive >= 2 * RTT,
        ),
    ]


def wave_figures(tokens: int) -> list[Figure]:
    """The token wave, ours and the sample's way side by side."""
    waves = token_waves(tokens)
    ours, sample = waves[OURS], waves[SAMPLE]
    return [
        Figure(
            SECTION,
            "token wave: tokens x requests each, server, IAS answers after",
            f"{tokens} x {REQUESTS_PER_TOKEN}, gunicorn {WORKERS} gthread x {THREADS} + "
            f"Redis, {IAS_DELAY * 1e3:.0f} ms + RTT",
        ),
        Figure(
            SECTION,
            f"wave exchanges: {OURS} | {SAMPLE}",
            f"{ours.exchanges} | {sample.exchanges}",
            f"ours exactly {tokens}",
            ours.exchanges == tokens,
        ),
        Figure(
            SECTION,
            "wave answers not 2xx: ours | sample's way",
            f"{ours.not_ok} | {sample.not_ok} (of {ours.requests} | {sample.requests})",
            "ours 0",
            ours.not_ok == 0 and ours.requests == tokens * REQUESTS_PER_TOKEN,
        ),
        Figure(
            SECTION,
            "wave connections IAS accepted: ours | sample's way",
            f"{ours.connections} | {sample.connections}",
        ),
        Figure(
            SECTION,
            "wave latency p50 / p99 ms: ours | sample's way",
            f"{ours.p50 * 1e3:.0f} / {ours.p99 * 1e3:.0f} | "
            f"{sample.p50 * 1e3:.0f} / {sample.p99 * 1e3:.0f}",
        ),
        Figure(
            SECTION,
            "wave duration s: ours | sample's way",
            f"{ours.seconds:.1f} | {sample.seconds:.1f}",
        ),
    ]


def figures(quick: bool = False) -> list[Figure]:
    """The exchange at a distance, then the token wave."""
    exchanges, tokens = (3, 40) if quick else (30, WAVE_TOKENS)
    return exchange_figures(exchanges) + wave_figures(tokens)


def main(argv: list[str] | None = None) -> None:
    run_alone("The exchange where the network is real", figures, argv)


if __name__ == "__main__":
    main()
