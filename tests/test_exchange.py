"""The exchange as a user sees it: a public token in, the XSUAA audience in the view."""

from __future__ import annotations

import time

import pytest

from flask_ias_pkce.constants import JWT_BEARER_GRANT
from flask_ias_pkce.testing import IASEmulator

from helpers import FakeClock, bearer, build_app


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


def test_public_token_reaches_view_with_xsuaa_audience(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.pkce_login()["id_token"]

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 200
    assert ias_emulator.xsuaa_client_id in answer.json["aud"]
    assert answer.json["sub"]
    assert answer.json["from_cache"] is False
    [exchange] = ias_emulator.exchanges
    assert exchange.params == {
        "grant_type": JWT_BEARER_GRANT,
        "client_id": ias_emulator.client_id,
        "assertion": token,
        "token_format": "jwt",
        "refresh_expiry": "0",
        "app_tid": ias_emulator.app_tid,
    }
    assert exchange.auth_method == "tls_client_auth"
    assert exchange.client_cn == ias_emulator.client_id
    assert exchange.status == 200


def test_exchange_with_client_secret() -> None:
    with IASEmulator(credential_type="SECRET") as ias:
        client = build_app(ias).test_client()
        answer = client.get("/api/me", headers=bearer(ias.issue_public_token()))

        assert answer.status_code == 200
        assert ias.xsuaa_client_id in answer.json["aud"]
        [exchange] = ias.exchanges
        assert exchange.auth_method == "client_secret_basic"
        assert exchange.client_cn is None


def test_one_exchange_per_token(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token()
    client.get("/api/me", headers=bearer(token))

    answers = [client.get("/api/me", headers=bearer(token)) for _ in range(10)]

    assert [a.status_code for a in answers] == [200] * 10
    assert all(a.json["from_cache"] for a in answers)
    assert len(ias_emulator.exchanges) == 1
    assert (
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token())).json["from_cache"]
        is False
    )
    assert len(ias_emulator.exchanges) == 2


def test_keep_alive_connection_serves_every_exchange(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    for _ in range(3):
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    connections = {call.connection_id for call in ias_emulator.exchanges}
    assert len(ias_emulator.exchanges) == 3
    assert len(connections) == 1


def test_cached_exchange_not_served_after_public_token_expired(ias_emulator: IASEmulator) -> None:
    clock = FakeClock(time.time())
    client = build_app(ias_emulator, clock=clock).test_client()
    token = ias_emulator.issue_public_token(exp=int(clock.now) + 600)
    assert client.get("/api/me", headers=bearer(token)).status_code == 200

    clock.advance(600 - 60 - 5)  # inside exp less the leeway: still served from the cache
    assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is True

    clock.advance(600)  # long past exp + leeway
    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert len(ias_emulator.exchanges) == 1


def test_rotated_key_accepted_without_restart(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    assert (
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token())).status_code == 200
    )

    ias_emulator.rotate_keys(retire_old=True)
    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 200
    assert len(ias_emulator.exchanges) == 2


def test_passthrough_of_token_with_xsuaa_audience(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token(
        aud=[ias_emulator.public_client_id, ias_emulator.xsuaa_client_id]
    )

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 200
    assert answer.json["passthrough"] is True
    assert ias_emulator.exchanges == []


def test_passthrough_off_exchanges_anyway(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator, IAS_PKCE_PASSTHROUGH=False).test_client()
    token = ias_emulator.issue_public_token(
        aud=[ias_emulator.public_client_id, ias_emulator.xsuaa_client_id]
    )

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 200
    assert answer.json["passthrough"] is False
    assert len(ias_emulator.exchanges) == 1


def test_passthrough_still_checks_audience(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token(aud=[ias_emulator.xsuaa_client_id])

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 401
    assert ias_emulator.exchanges == []


def test_token_without_app_tid_is_exchanged_for_the_binding_tenant(
    ias_emulator: IASEmulator,
) -> None:
    client = build_app(ias_emulator).test_client()

    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token(app_tid=None)))

    assert answer.status_code == 200
    [exchange] = ias_emulator.exchanges
    assert exchange.params["app_tid"] == ias_emulator.app_tid


def test_exchanged_token_for_another_subject_is_refused(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token()
    claims = {
        "iss": ias_emulator.issuer,
        "sub": "someone-else",
        "aud": [ias_emulator.client_id, ias_emulator.xsuaa_client_id],
        "exp": int(time.time()) + 600,
    }
    ias_emulator.inject(
        "/oauth2/token", body={"id_token": ias_emulator.sign(claims), "access_token": "x"}
    )

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 502
    assert "someone-else" not in answer.get_data(as_text=True)


def test_token_in_its_last_minute_is_exchanged_once(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token(exp=int(time.time()) + 30)

    answers = [client.get("/api/me", headers=bearer(token)) for _ in range(5)]

    assert [answer.status_code for answer in answers] == [200] * 5
    assert len(ias_emulator.exchanges) == 1


def test_expired_token_refused_by_ias_is_not_sent_again(ias_emulator: IASEmulator) -> None:
    # Within the leeway our check accepts it; IAS refuses it; the refusal is remembered.
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token(exp=int(time.time()) - 30)

    answers = [client.get("/api/me", headers=bearer(token)) for _ in range(5)]

    assert [answer.status_code for answer in answers] == [401] * 5
    assert len(ias_emulator.exchanges) == 1


def test_other_spellings_of_one_token_are_refused(ias_emulator: IASEmulator) -> None:
    # base64url's last character can carry unused bits: 16 spellings of one signature.
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    variants = [token[:-1] + alphabet[(last & ~0b1111) | low] for low in range(16)]

    statuses = [client.get("/api/me", headers=bearer(variant)).status_code for variant in variants]

    assert statuses.count(200) == 1
    assert statuses.count(401) == 15
    assert len(ias_emulator.exchanges) == 1


def test_cache_entry_repr_hides_the_token() -> None:
    from flask_ias_pkce.cache import Entry

    assert "secret.token.value" not in repr(Entry("secret.token.value", 1.0))
