"""Signing keys are kept per issuer, tenant and client, as IAS hands them out: what one
tenant's token fetched never vouches for another's, and a failure of one never holds up
the others."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask

from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.verify import NEW_KEY_SETS_PER_MINUTE

from helpers import FakeClock, bearer, build_app

CERTS = "/oauth2/certs"
HOSTED_TENANTS = (
    "a",
    "b",
    "good",
    "t99",
    *(f"t{index}" for index in range(NEW_KEY_SETS_PER_MINUTE)),
)


@pytest.fixture
def ias_emulator() -> Iterator[IASEmulator]:
    """An IAS tenant that hosts several application tenants (``app_tid``), as one IAS
    tenant does for the subaccounts connected to it."""
    with IASEmulator(extra_app_tids=HOSTED_TENANTS) as emulator:
        yield emulator


def passthrough_token(ias: IASEmulator, **claims: object) -> str:
    # Passthrough tokens need no exchange: these tests are about the keys only.
    return ias.issue_public_token(aud=[ias.public_client_id, ias.xsuaa_client_id], **claims)


def key_fetches(ias: IASEmulator) -> list[dict[str, str]]:
    return [call.headers for call in ias.calls if call.path == CERTS]


def test_each_tenant_gets_the_keys_ias_gives_that_tenant(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()

    first = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="a")))
    second = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="b")))
    again = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="a")))

    assert (first.status_code, second.status_code, again.status_code) == (200, 200, 200)
    assert [fetch.get("x-app_tid") for fetch in key_fetches(ias_emulator)] == ["a", "b"]


def test_a_tenant_ias_refuses_does_not_lock_out_another(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    assert (
        client.get(
            "/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="good"))
        ).status_code
        == 200
    )
    # IAS answers 400 for a tenant it does not host (or this client may not see).
    refused = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="evil")))
    good = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="good")))

    assert refused.status_code == 401
    assert good.status_code == 200
    assert [call.status for call in ias_emulator.calls if call.path == CERTS] == [200, 400]


def test_new_tenants_are_limited_per_minute(ias_emulator: IASEmulator) -> None:
    clock = FakeClock(time.time())
    app: Flask = build_app(ias_emulator, clock=clock)
    client = app.test_client()
    statuses = [
        client.get(
            "/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid=f"t{index}"))
        ).status_code
        for index in range(NEW_KEY_SETS_PER_MINUTE + 1)
    ]
    fetches = len(key_fetches(ias_emulator))
    clock.advance(61)
    later = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="t99")))

    assert statuses == [200] * NEW_KEY_SETS_PER_MINUTE + [503]
    assert fetches == NEW_KEY_SETS_PER_MINUTE
    assert later.status_code == 200


def test_key_requests_name_the_client_tenant_and_azp_and_ias_refuses_strangers(
    ias_emulator: IASEmulator,
) -> None:
    client = build_app(ias_emulator).test_client()

    known = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="a")))
    stranger = client.get(
        "/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="b", azp="stranger"))
    )

    assert (known.status_code, stranger.status_code) == (200, 401)
    assert 'error="invalid_token"' in stranger.headers["WWW-Authenticate"]
    own = ias_emulator.client_id
    sent = [(f["x-client_id"], f["x-app_tid"], f["x-azp"]) for f in key_fetches(ias_emulator)]
    assert sent == [(own, "a", own), (own, "b", "stranger")]
    assert [call.status for call in ias_emulator.calls if call.path == CERTS] == [200, 400]
