"""No request waits for a key refresh: keys near their expiry are refreshed in a background
thread while requests go on with the known keys; ``Cache-Control: max-age`` sets how long
keys are kept, within a floor and a ceiling; a failing refresh keeps the old keys."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from flask_ias_pkce.constants import EXTENSION_NAME, JWKS_REFETCH_INTERVAL_SECONDS
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.verify import cache_max_age

from helpers import FakeClock, bearer, build_app

CERTS = "/oauth2/certs"
REFRESHER = "ias-pkce-keys-refresh"


class KeyCalls:
    """The JWKS calls of an app's IAS session, with the thread that made each."""

    def __init__(self, app: Flask) -> None:
        self.threads: list[str] = []
        session = app.extensions[EXTENSION_NAME].authenticator.exchanger.session

        def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if response.request.path_url.startswith(CERTS):
                self.threads.append(threading.current_thread().name)

        session.hooks["response"].append(record)

    def on_request_threads(self) -> int:
        return sum(1 for name in self.threads if name != REFRESHER)

    def in_background(self) -> int:
        return self.threads.count(REFRESHER)


def refreshes_done() -> None:
    deadline = time.monotonic() + 10
    while any(t.name == REFRESHER for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a background refresh did not end"
        time.sleep(0.01)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def ias(clock: FakeClock) -> Iterator[IASEmulator]:
    with IASEmulator(clock=clock) as emulator:
        yield emulator


def get(client: Any, ias: IASEmulator) -> int:
    # A token never seen before (a cache miss, so its signature is checked), passed through
    # (it carries the XSUAA audience) so that only the keys are at stake.
    token = ias.issue_public_token(
        aud=[ias.public_client_id, ias.xsuaa_client_id], jti=os.urandom(8).hex()
    )
    status: int = client.get("/api/me", headers=bearer(token)).status_code
    refreshes_done()
    return status


def test_in_steady_state_no_request_thread_calls_the_jwks(
    ias: IASEmulator, clock: FakeClock
) -> None:
    app = build_app(ias, clock=clock)
    calls = KeyCalls(app)
    client = app.test_client()
    assert get(client, ias) == 200
    cold = calls.on_request_threads()  # the cold start: nothing to serve yet
    assert cold >= 1

    # Forty minutes of traffic, one request a minute: keys are kept 15 minutes.
    statuses = []
    for _ in range(40):
        clock.advance(60)
        statuses.append(get(client, ias))

    assert statuses == [200] * 40
    assert calls.on_request_threads() == cold
    assert calls.in_background() >= 3 * cold


def test_a_failing_background_refresh_keeps_the_old_keys(
    ias: IASEmulator, clock: FakeClock
) -> None:
    app = build_app(ias, clock=clock, IAS_PKCE_RETRIES=0)
    calls = KeyCalls(app)
    client = app.test_client()
    assert get(client, ias) == 200
    cold = calls.on_request_threads()
    before = len([call for call in ias.calls if call.path == CERTS])
    ias.inject(CERTS, status=500, times=2 * cold)

    clock.advance(14 * 60)  # due: refreshed in the background, which fails
    assert get(client, ias) == 200
    clock.advance(JWKS_REFETCH_INTERVAL_SECONDS / 2)  # too soon for another try
    assert get(client, ias) == 200
    clock.advance(JWKS_REFETCH_INTERVAL_SECONDS)  # tried again, fails again
    assert get(client, ias) == 200
    clock.advance(JWKS_REFETCH_INTERVAL_SECONDS)  # and now it works
    assert get(client, ias) == 200

    statuses = [call.status for call in ias.calls if call.path == CERTS][before:]
    # Each key set failed twice in the background, an interval apart, then came back.
    assert statuses == [500] * (2 * cold) + [200] * cold
    assert calls.on_request_threads() == cold


@pytest.mark.parametrize(
    ("max_age", "quiet_until", "refreshed_by"),
    [
        pytest.param(1200, 890, 910, id="honoured"),
        pytest.param(10, 220, 230, id="floor of 5 minutes"),
        pytest.param(0, 220, 230, id="zero is the floor too"),
        pytest.param(86_400, 2690, 2710, id="ceiling of an hour"),
    ],
)
def test_cache_control_max_age_sets_when_keys_are_refreshed(
    ias: IASEmulator, clock: FakeClock, max_age: int, quiet_until: int, refreshed_by: int
) -> None:
    # Refreshed in the background once three quarters of that time have passed.
    app = build_app(ias, clock=clock)
    calls = KeyCalls(app)
    client = app.test_client()
    # Every key set this test fetches gets the header.
    header = {"Cache-Control": f"public, max-age={max_age}"}
    ias.inject(CERTS, body=ias.jwks, headers=header, times=20)
    assert get(client, ias) == 200
    cold = calls.on_request_threads()

    clock.advance(quiet_until)
    assert get(client, ias) == 200
    assert calls.in_background() == 0
    clock.advance(refreshed_by - quiet_until)
    assert get(client, ias) == 200
    assert calls.in_background() == cold
    assert calls.on_request_threads() == cold


def test_keys_long_past_their_time_are_fetched_while_the_request_waits(
    ias: IASEmulator, clock: FakeClock
) -> None:
    # After a long quiet spell (twice the keys' lifetime) nothing is known to be good.
    app = build_app(ias, clock=clock)
    calls = KeyCalls(app)
    client = app.test_client()
    assert get(client, ias) == 200
    cold = calls.on_request_threads()

    clock.advance(2 * 15 * 60)
    assert get(client, ias) == 200

    assert calls.on_request_threads() == 2 * cold
    assert calls.in_background() == 0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("max-age=600", 600.0),
        ("public, max-age=120, must-revalidate", 120.0),
        ("no-cache", None),
        ("private, no-store", None),
        ("max-age=0", 0.0),
        ("max-age=soon", None),
        ("", None),
    ],
)
def test_cache_control_is_read(value: str, seconds: float | None) -> None:
    assert cache_max_age({"Cache-Control": value}) == seconds
