"""The extension under the gunicorn workers deployments run: ``gthread`` (threads) and
``gevent`` (greenlets, with the standard library monkey-patched). Single flight within a
worker, the Redis lock across instances, and every call to the emulator work in both."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from processes import Gunicorn, app_environment

from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisServer

from helpers import bearer

SECRET = "worker-test-cache-secret-0123456789-0123456789"
#: (worker class, threads): gevent serves many requests per worker without threads.
WORKERS = [pytest.param("gthread", 8, id="gthread"), pytest.param("gevent", 1, id="gevent")]


def redis_config(redis_server: RedisServer) -> dict[str, Any]:
    return {
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_URL": redis_server.url,
        "IAS_PKCE_CACHE_SECRET": SECRET,
    }


def burst(urls: list[str], token: str, size: int) -> list[dict[str, Any]]:
    """``size`` requests with ``token`` released together, spread over ``urls`` in turn;
    the answers' status and JSON."""
    start = threading.Barrier(size)

    def call(index: int) -> dict[str, Any]:
        start.wait()
        answer = requests.get(
            urls[index % len(urls)] + "/api/me", headers=bearer(token), timeout=30
        )
        return {"status": answer.status_code, **(answer.json() if answer.ok else {})}

    with ThreadPoolExecutor(max_workers=size) as pool:
        return list(pool.map(call, range(size)))


@pytest.mark.parametrize(("worker_class", "threads"), WORKERS)
def test_one_worker_serves_a_burst_with_one_exchange(
    ias_emulator: IASEmulator, worker_class: str, threads: int
) -> None:
    # One process, many concurrent requests (threads or greenlets), the in-process cache:
    # single flight alone must hold the exchange to one.
    token = ias_emulator.issue_public_token()
    ias_emulator.inject("/oauth2/token", delay=0.3)
    environment = app_environment(ias_emulator)
    with Gunicorn(environment, threads=threads, worker_class=worker_class) as app:
        answers = burst([app.url], token, 40)

    assert [answer["status"] for answer in answers] == [200] * 40
    assert [answer["from_cache"] for answer in answers].count(False) == 1
    assert len(ias_emulator.exchanges) == 1


@pytest.mark.parametrize(("worker_class", "threads"), WORKERS)
def test_instances_sharing_redis_exchange_a_token_once(
    ias_emulator: IASEmulator, redis_server: RedisServer, worker_class: str, threads: int
) -> None:
    # Two instances of two workers each, one Redis: the burst reaches both instances at
    # once, so only the Redis lock can keep the exchange to one.
    token = ias_emulator.issue_public_token()
    ias_emulator.inject("/oauth2/token", delay=0.3)
    environment = app_environment(ias_emulator, **redis_config(redis_server))
    options: dict[str, Any] = {"workers": 2, "threads": threads, "worker_class": worker_class}
    with Gunicorn(environment, **options) as first, Gunicorn(environment, **options) as second:
        answers = burst([first.url, second.url], token, 40)
        again = requests.get(second.url + "/api/me", headers=bearer(token), timeout=10)

    assert [answer["status"] for answer in answers] == [200] * 40
    assert len({answer["pid"] for answer in answers}) >= 2, "both instances must serve"
    assert len(ias_emulator.exchanges) == 1
    assert again.json()["from_cache"] is True


@pytest.mark.parametrize(("worker_class", "threads"), WORKERS)
def test_every_call_to_the_emulator_works_under_the_worker(
    ias_emulator: IASEmulator, redis_server: RedisServer, worker_class: str, threads: int
) -> None:
    # Discovery, JWKS, the mTLS exchange; IAS refusing a token; IAS too slow to answer:
    # each ends as it does under sync workers, with the worker's own sockets and timeouts.
    # app_environment sets 2 s timeouts to IAS.
    environment = app_environment(ias_emulator, **redis_config(redis_server), IAS_PKCE_RETRIES=0)
    good, refused, slow = (ias_emulator.issue_public_token() for _ in range(3))
    with Gunicorn(environment, threads=threads, worker_class=worker_class) as app:
        first = requests.get(app.url + "/api/me", headers=bearer(good), timeout=10)
        hit = requests.get(app.url + "/api/me", headers=bearer(good), timeout=10)
        ias_emulator.inject(
            "/oauth2/token",
            status=400,
            body={"error": "invalid_grant", "error_description": "assertion revoked"},
        )
        no = requests.get(app.url + "/api/me", headers=bearer(refused), timeout=10)
        exchanges = ias_emulator.exchanges
        ias_emulator.inject("/oauth2/token", delay=3.0)
        late = requests.get(app.url + "/api/me", headers=bearer(slow), timeout=10)

    assert (first.status_code, first.json()["from_cache"]) == (200, False)
    assert (hit.status_code, hit.json()["from_cache"]) == (200, True)
    assert first.json()["sub"] == hit.json()["sub"]
    assert no.status_code == 401
    assert 'error="invalid_token"' in no.headers["WWW-Authenticate"]
    assert late.status_code == 504
    paths = [call.path for call in ias_emulator.calls]
    assert "/.well-known/openid-configuration" in paths or "/oauth2/certs" in paths
    assert len(exchanges) == 2
    assert all(call.client_cn == ias_emulator.client_id for call in exchanges)
