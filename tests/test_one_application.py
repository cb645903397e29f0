"""The set-up that works with real IAS: the mobile app and the backend are one IAS
application. A separate public registration is refused at the exchange, as IAS refuses it,
and the extension says so at start-up and answers such tokens 401."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jose import jwt

from flask_ias_pkce.service import same_user
from flask_ias_pkce.testing import IASEmulator

from helpers import bearer, build_app


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


MOBILE_APP = "mobile-app-public-client"


@pytest.fixture
def separate_ias() -> Iterator[IASEmulator]:
    """IAS with the mobile app registered as an application of its own."""
    with IASEmulator(public_client_id=MOBILE_APP) as emulator:
        yield emulator


def test_pkce_login_gives_a_token_for_the_binding_client(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    tokens = ias_emulator.pkce_login()

    answer = client.get("/api/me", headers=bearer(tokens["id_token"]))

    assert answer.status_code == 200, answer.json
    assert answer.json["aud"] == [ias_emulator.client_id, ias_emulator.xsuaa_client_id]
    [call] = ias_emulator.exchanges
    assert call.status == 200


def test_one_application_logs_no_audience_warning(
    ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_ias_pkce"):
        build_app(ias_emulator)

    assert "IAS_PKCE_ACCEPTED_AUDIENCES" not in caplog.text


def test_separate_public_client_warns_at_init_app(
    separate_ias: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_ias_pkce"):
        build_app(separate_ias, IAS_PKCE_ACCEPTED_AUDIENCES=[MOBILE_APP])

    [record] = [r for r in caplog.records if "IAS_PKCE_ACCEPTED_AUDIENCES" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert repr(MOBILE_APP) in record.getMessage()
    assert separate_ias.client_id in record.getMessage()


def test_binding_client_id_among_the_audiences_warns_only_of_the_other(
    ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_ias_pkce"):
        build_app(ias_emulator, IAS_PKCE_ACCEPTED_AUDIENCES=[ias_emulator.client_id, "legacy"])

    [message] = [r.getMessage() for r in caplog.records if "ACCEPTED_AUDIENCES" in r.getMessage()]
    assert message.startswith("IAS_PKCE_ACCEPTED_AUDIENCES holds 'legacy', not the binding's")


def test_token_of_a_separate_public_client_is_refused_by_ias_as_invalid_token(
    separate_ias: IASEmulator,
) -> None:
    client = build_app(separate_ias, IAS_PKCE_ACCEPTED_AUDIENCES=[MOBILE_APP]).test_client()
    token = separate_ias.pkce_login()["id_token"]

    first = client.get("/api/me", headers=bearer(token))
    again = client.get("/api/me", headers=bearer(token))

    for answer in (first, again):
        assert answer.status_code == 401
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    # IAS was asked once and refused; the refusal is remembered.
    [call] = separate_ias.exchanges
    assert call.status == 400


def test_separate_public_client_is_refused_before_the_exchange_by_default(
    separate_ias: IASEmulator,
) -> None:
    client = build_app(separate_ias).test_client()

    answer = client.get("/api/me", headers=bearer(separate_ias.issue_public_token()))

    assert answer.status_code == 401
    assert separate_ias.exchanges == []


# -- the subject rule ---------------------------------------------------------------------


def test_exchanged_token_with_another_sub_but_the_same_user_uuid_is_the_same_user(
    ias_emulator: IASEmulator,
) -> None:
    # IAS finds the user by user_uuid and writes sub as the application configures it.
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token(sub="P000042")

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 200, answer.json
    assert answer.json["sub"] == jwt.get_unverified_claims(token)["user_uuid"] != "P000042"


def exchanged_claims(ias: IASEmulator, **claims: Any) -> dict[str, Any]:
    return {
        "iss": ias.issuer,
        "aud": [ias.client_id, ias.xsuaa_client_id],
        "exp": int(time.time()) + 600,
        # IAS keeps the tenant; a token of another tenant is refused (exchanged_tenant).
        "app_tid": ias.app_tid,
        **claims,
    }


@pytest.mark.parametrize(
    ("public", "exchanged", "status"),
    [
        pytest.param({"user_uuid": "u-1"}, {"sub": "x", "user_uuid": "u-2"}, 502, id="other-uuid"),
        pytest.param(
            {"user_uuid": None, "sub": "s"}, {"sub": "s", "user_uuid": "u"}, 200, id="sub"
        ),
        pytest.param({"user_uuid": None, "sub": "s"}, {"sub": "t"}, 502, id="other-sub"),
    ],
)
def test_subject_rule_on_what_ias_answers(
    ias_emulator: IASEmulator, public: dict[str, Any], exchanged: dict[str, Any], status: int
) -> None:
    client = build_app(ias_emulator).test_client()
    token = ias_emulator.issue_public_token(**public)
    answer = {"id_token": ias_emulator.sign(exchanged_claims(ias_emulator, **exchanged))}
    ias_emulator.inject("/oauth2/token", body=answer)

    assert client.get("/api/me", headers=bearer(token)).status_code == status


@pytest.mark.parametrize(
    ("public", "exchanged", "same"),
    [
        ({"sub": "a", "user_uuid": "u"}, {"sub": "b", "user_uuid": "u"}, True),
        ({"sub": "a", "user_uuid": "u"}, {"sub": "a", "user_uuid": "v"}, False),
        ({"sub": "a", "user_uuid": "u"}, {"sub": "a"}, True),
        ({"sub": "a"}, {"sub": "a", "user_uuid": "u"}, True),
        ({"sub": "a"}, {"sub": "b", "user_uuid": "u"}, False),
        ({}, {}, False),
        ({"sub": 1}, {"sub": 1}, False),
        ({"sub": "a", "user_uuid": 7}, {"sub": "a", "user_uuid": 8}, True),
    ],
)
def test_same_user(public: dict[str, Any], exchanged: dict[str, Any], same: bool) -> None:
    assert same_user(public, exchanged) is same
