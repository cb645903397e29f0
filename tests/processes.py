"""Real processes for tests: ``tests/wsgi_app.py`` under gunicorn, bound to the emulator
through the environment as a deployed app is."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.gunicorn import GunicornServer, bound_environment

TESTS = Path(__file__).parent


def app_environment(ias: IASEmulator, **config: Any) -> dict[str, str]:
    """The environment of the test app bound to ``ias`` (VCAP_SERVICES + TESTAPP_*)."""
    return bound_environment(ias, prefix="TESTAPP", IAS_PKCE_TIMEOUT=[2.0, 2.0], **config)


class Gunicorn(GunicornServer):
    """``tests/wsgi_app.py`` under gunicorn on a loopback port."""

    def __init__(
        self,
        environment: dict[str, str],
        *,
        workers: int = 1,
        threads: int = 1,
        worker_class: str | None = None,
    ):
        super().__init__(
            "wsgi_app:create_app()",
            environment=environment,
            chdir=TESTS,
            workers=workers,
            threads=threads,
            worker_class=worker_class,
        )

    def wait_for_workers(self, count: int, *, timeout: float = 30) -> None:
        """Return once ``count`` different workers have answered (they boot one by one)."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(max_workers=2 * count) as pool:
            while len(seen) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(seen)} of {count} workers answered")
                answers = pool.map(
                    lambda _: requests.get(self.url + "/busy", timeout=5).json()["pid"],
                    range(2 * count),
                )
                seen.update(answers)


def two_apps_share_one_exchange(ias: IASEmulator, environment: dict[str, str]) -> None:
    """Two gunicorn apps with ``environment``, one token: the first exchanges it, the
    second finds the first one's entry in the shared cache."""
    token = ias.issue_public_token()
    bearer = {"Authorization": f"Bearer {token}"}
    with Gunicorn(environment) as first, Gunicorn(environment) as second:
        one = requests.get(first.url + "/api/me", headers=bearer, timeout=10)
        other = requests.get(second.url + "/api/me", headers=bearer, timeout=10)

    assert one.status_code == other.status_code == 200
    assert one.json()["pid"] != other.json()["pid"]
    assert (one.json()["from_cache"], other.json()["from_cache"]) == (False, True)
    assert len(ias.exchanges) == 1


def burst_makes_one_exchange(ias: IASEmulator, environment: dict[str, str]) -> None:
    """100 first requests with one token at once over 4 gunicorn workers: all 200, served
    by several workers, and one exchange at IAS."""
    token = ias.issue_public_token()
    bearer = {"Authorization": f"Bearer {token}"}
    # Slow IAS down a little so that the burst really overlaps the exchange.
    ias.inject("/oauth2/token", delay=0.3)
    start = threading.Barrier(100)

    # Sync workers take one request at a time, so while one worker exchanges, the burst
    # must reach the others (a threaded worker could queue the whole burst itself).
    with Gunicorn(environment, workers=4) as app:
        app.wait_for_workers(4)

        def call(_: int) -> tuple[int, int]:
            start.wait()
            answer = requests.get(app.url + "/api/me", headers=bearer, timeout=30)
            return answer.status_code, answer.json().get("pid", 0)

        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(call, range(100)))

    assert [status for status, _ in results] == [200] * 100
    assert len({pid for _, pid in results}) > 1, "the burst should reach several workers"
    assert len(ias.exchanges) == 1
