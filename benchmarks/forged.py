"""What forged tokens cost IAS, and what they cost a real user meanwhile.

Run: ``python -m benchmarks.forged [--quick]``. Threads send tokens signed by a key of
the attacker's that carry the real key id: half name the real issuer with made-up
``app_tid`` values, half name made-up tenants under the trusted domain (as anyone can, with
any tenant of a domain such as ``accounts.ondemand.com``). Meanwhile a real user sends
requests, a fresh token every few requests, so that some of theirs are cache misses too.
Every call flask-ias-pkce makes towards IAS is counted where it is sent (attempts that fail
to connect included). The figures: calls the forged tokens caused, the real user's
statuses, and their latency under attack against a baseline measured in the same run.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from flask_ias_pkce import transport
from flask_ias_pkce.keys import DEFAULT_KEY_LIMITS
from flask_ias_pkce.testing import IASEmulator

from ._common import Figure, ratio, run_alone
from .hot_path import protected_app

SECTION = "8 forged tokens"


@dataclass(frozen=True)
class Result:
    """What one run saw."""

    forged: int
    attack_statuses: Counter[int]
    ias_calls: Counter[str]  #: calls towards IAS during the attack, by ``host path``
    user_statuses: Counter[int]
    user_exchanges: int  #: fresh tokens of the real user, each one exchange
    baseline_latency: float  #: median seconds of a real user's request, no attack
    attack_latency: float  #: the same under attack

    @property
    def forged_calls(self) -> int:
        """Calls to IAS that were not the real user's exchanges."""
        return sum(self.ias_calls.values()) - self.user_exchanges


@contextmanager
def counted_calls() -> Iterator[Counter[str]]:
    """Count every request flask-ias-pkce sends towards IAS, by host and path."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    original = transport._send

    def send(session: Any, method: str, url: str, policy: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        with lock:
            counts[f"{parts.hostname} {parts.path}"] += 1
        return original(session, method, url, policy, **kwargs)

    transport._send = send
    try:
        yield counts
    finally:
        transport._send = original


def forged_tokens(ias: IASEmulator, count: int, tenants: int) -> list[str]:
    """``count`` tokens of a foreign key with the real kid, over ``tenants`` made-up
    tenants (issuers) and as many made-up ``app_tid`` values of the real issuer."""
    port = urlsplit(ias.url).port
    tokens = []
    for index in range(count):
        tenant = index % tenants
        claims: dict[str, Any] = {"app_tid": f"forged-{tenant}", "jti": str(uuid.uuid4())}
        if index % 2:
            claims["ias_iss"] = f"https://t{tenant}.localhost:{port}"
        tokens.append(ias.foreign_key_token(**claims))
    return tokens


def _user_requests(
    app: Flask, ias: IASEmulator, stop: threading.Event, per_token: int, at_least: int
) -> tuple[Counter[int], int, list[float]]:
    client = app.test_client()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    tokens = 0
    while not stop.is_set() or len(latencies) < at_least:
        if len(latencies) % per_token == 0:
            token = ias.issue_public_token()
            tokens += 1
        started = time.perf_counter()
        answer = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        latencies.append(time.perf_counter() - started)
        statuses[answer.status_code] += 1
        time.sleep(0.002)
    return statuses, tokens, latencies


def run(*, forged: int, tenants: int, threads: int, per_token: int = 20) -> Result:
    """Send ``forged`` forged tokens over ``tenants`` made-up tenants from ``threads``
    threads while a real user sends requests; see :class:`Result`."""
    # Each refusal is logged once; thousands of lines would only slow the attack down.
    logger = logging.getLogger("flask_ias_pkce")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return _run(forged=forged, tenants=tenants, threads=threads, per_token=per_token)
    finally:
        logger.setLevel(level)


def _run(*, forged: int, tenants: int, threads: int, per_token: int) -> Result:
    with IASEmulator(token_lifetime=3600) as ias:
        app = protected_app(ias)
        tokens = forged_tokens(ias, forged, tenants)
        # The baseline: the real user alone (its first request fetches the keys).
        baseline_stop = threading.Event()
        baseline_stop.set()
        _, _, baseline = _user_requests(app, ias, baseline_stop, per_token, 100)
        with counted_calls() as calls:
            attack_statuses: Counter[int] = Counter()
            lock = threading.Lock()

            def attack(share: Sequence[str]) -> None:
                client = app.test_client()
                seen: Counter[int] = Counter()
                for token in share:
                    seen[
                        client.get(
                            "/api/me", headers={"Authorization": f"Bearer {token}"}
                        ).status_code
                    ] += 1
                with lock:
                    attack_statuses.update(seen)

            attackers = [
                threading.Thread(target=attack, args=(tokens[index::threads],))
                for index in range(threads)
            ]
            stop = threading.Event()
            outcome: list[tuple[Counter[int], int, list[float]]] = []
            user = threading.Thread(
                target=lambda: outcome.append(_user_requests(app, ias, stop, per_token, 100))
            )
            user.start()
            for thread in attackers:
                thread.start()
            for thread in attackers:
                thread.join()
            stop.set()
            user.join()
        user_statuses, user_tokens, under_attack = outcome[0]
        return Result(
            forged=forged,
            attack_statuses=attack_statuses,
            ias_calls=Counter(calls),
            user_statuses=user_statuses,
            user_exchanges=user_tokens,
            baseline_latency=statistics.median(baseline),
            attack_latency=statistics.median(under_attack),
        )


def bound(minutes: float, retries: int = 2) -> int:
    """The most calls forged tokens may cause in ``minutes``: each of the unproven-issuer
    fetches a minute is discovery and JWKS, each with its retries."""
    return DEFAULT_KEY_LIMITS.unproven_fetches_per_minute * (int(minutes) + 1) * 2 * (retries + 1)


def _statuses(counts: Counter[int]) -> str:
    return ", ".join(f"{count} x {status}" for status, count in sorted(counts.items()))


def figures(quick: bool) -> Sequence[Figure]:
    """The figures of one run: 10,000 forged tokens over 200 tenants from 8 threads."""
    started = time.monotonic()
    result = (
        run(forged=500, tenants=50, threads=4)
        if quick
        else run(forged=10_000, tenants=200, threads=8)
    )
    limit = bound((time.monotonic() - started) / 60)
    users = sum(result.user_statuses.values())
    return [
        Figure(
            SECTION,
            f"calls to IAS caused by {result.forged:,} forged tokens",
            str(result.forged_calls),
            f"<= {limit}",
            result.forged_calls <= limit,
        ),
        Figure(SECTION, "answers to the forged tokens", _statuses(result.attack_statuses)),
        Figure(
            SECTION,
            "the real user's requests meanwhile",
            _statuses(result.user_statuses),
            "all 200",
            result.user_statuses[200] == users,
        ),
        Figure(
            SECTION,
            "real user's median latency, under attack / alone",
            ratio(result.attack_latency / result.baseline_latency),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    """Measure and print the figures."""
    run_alone("flask-ias-pkce: forged tokens", figures, argv)


if __name__ == "__main__":
    main()
