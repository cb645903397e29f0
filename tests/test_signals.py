"""Signals and log lines: what an app's receivers and an operator see, never a token."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from blinker import Signal
from flask import Flask

from flask_ias_pkce import signals
from flask_ias_pkce.testing import IASEmulator

from helpers import bearer, build_app


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


TOKEN_PATH = "/oauth2/token"
ALL = {
    "token_exchanged": signals.token_exchanged,
    "cache_hit": signals.cache_hit,
    "token_rejected": signals.token_rejected,
    "exchange_failed": signals.exchange_failed,
    "credentials_expiring": signals.credentials_expiring,
}


@dataclass
class Received:
    """What the receivers connected to ``app`` got, in order."""

    app: Flask
    events: list[tuple[str, Flask, dict[str, Any]]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]

    def only(self, name: str) -> dict[str, Any]:
        [(got, sender, kwargs)] = self.events
        assert got == name
        assert sender is self.app
        return kwargs


def receive(app: Flask) -> Iterator[Received]:
    received = Received(app)
    receivers = []
    for name, signal in ALL.items():

        def receiver(sender: Flask, _name: str = name, **kwargs: Any) -> None:
            received.events.append((_name, sender, kwargs))

        receivers.append((signal, receiver))
        signal.connect(receiver, sender=app)
    try:
        yield received
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver, sender=app)


@pytest.fixture
def app(ias_emulator: IASEmulator) -> Flask:
    return build_app(ias_emulator, IAS_PKCE_RETRIES=0)


@pytest.fixture
def received(app: Flask) -> Iterator[Received]:
    yield from receive(app)


def assert_no_token(values: Any) -> None:
    # Every compact JWS starts with the base64 of '{"'.
    assert "eyJ" not in repr(values)


def test_exchange_then_cache_hit(app: Flask, ias_emulator: IASEmulator, received: Received) -> None:
    client = app.test_client()
    token = ias_emulator.issue_public_token()

    first = client.get("/api/me", headers=bearer(token))
    exchanged = received.only("token_exchanged")
    received.events.clear()
    client.get("/api/me", headers=bearer(token))
    hit = received.only("cache_hit")

    subject = first.json["sub"]
    assert set(exchanged) == {"subject", "issuer", "passthrough", "duration"}
    assert exchanged["subject"] == subject
    assert exchanged["issuer"] == ias_emulator.issuer
    assert exchanged["passthrough"] is False
    assert 0 < exchanged["duration"] < 10
    assert set(hit) == {"subject", "passthrough", "duration"}
    assert hit["subject"] == subject
    assert hit["passthrough"] is False
    # A hit costs less than an exchange: no call to IAS.
    assert 0 < hit["duration"] < exchanged["duration"]
    assert_no_token(received.events)


def test_passthrough_is_an_exchange_without_ias(
    app: Flask, ias_emulator: IASEmulator, received: Received
) -> None:
    token = ias_emulator.issue_public_token(
        aud=[ias_emulator.public_client_id, ias_emulator.xsuaa_client_id]
    )

    app.test_client().get("/api/me", headers=bearer(token))

    assert received.only("token_exchanged")["passthrough"] is True
    assert ias_emulator.exchanges == []


@pytest.mark.parametrize(
    ("headers", "reason", "error", "status"),
    [
        ({}, "missing_token", "unauthorized", 401),
        ({"Authorization": "Bearer "}, "empty_token", "invalid_request", 400),
        ({"Authorization": "Bearer a.b"}, "not_a_jws", "invalid_token", 401),
    ],
)
def test_refused_header(
    app: Flask,
    received: Received,
    headers: dict[str, str],
    reason: str,
    error: str,
    status: int,
) -> None:
    answer = app.test_client().get("/api/me", headers=headers)

    assert answer.status_code == status
    rejected = received.only("token_rejected")
    assert set(rejected) == {"reason", "error", "status", "duration"}
    assert (rejected["reason"], rejected["error"], rejected["status"]) == (reason, error, status)


def test_expired_token_rejected_without_ias(
    app: Flask, ias_emulator: IASEmulator, received: Received
) -> None:
    token = ias_emulator.issue_public_token(exp=int(time.time()) - 3600)

    app.test_client().get("/api/me", headers=bearer(token))

    assert received.only("token_rejected")["reason"] == "expired"
    assert_no_token(received.events)


def test_refusal_by_ias_rejected_again_from_the_cache(
    app: Flask, ias_emulator: IASEmulator, received: Received
) -> None:
    ias_emulator.inject(TOKEN_PATH, status=400, body={"error": "invalid_grant"})
    token = ias_emulator.issue_public_token()
    client = app.test_client()

    client.get("/api/me", headers=bearer(token))
    client.get("/api/me", headers=bearer(token))

    assert received.names() == ["token_rejected", "token_rejected"]
    assert {kwargs["reason"] for _, _, kwargs in received.events} == {"ias_invalid_grant"}
    assert len(ias_emulator.exchanges) == 1


def test_ias_unavailable_is_an_exchange_failure(
    app: Flask, ias_emulator: IASEmulator, received: Received
) -> None:
    ias_emulator.inject(TOKEN_PATH, status=503)

    answer = app.test_client().get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 503
    failed = received.only("exchange_failed")
    assert failed["status"] == 503
    assert failed["reason"] == "exchange_status_503"
    assert failed["error"] == "temporarily_unavailable"


def test_client_refused_by_ias_is_an_exchange_failure() -> None:
    with IASEmulator(credential_type="SECRET") as ias:
        app = build_app(ias, IAS_PKCE_CLIENT_SECRET="wrong")
        for received in receive(app):
            app.test_client().get("/api/me", headers=bearer(ias.issue_public_token()))

            failed = received.only("exchange_failed")
            assert (failed["status"], failed["reason"]) == (502, "exchange_refused_invalid_client")
            assert_no_token(received.events)


def test_signals_go_to_their_own_app_only(ias_emulator: IASEmulator, received: Received) -> None:
    other = build_app(ias_emulator)

    other.test_client().get("/api/me")

    assert received.events == []


def test_exempt_and_optional_requests_send_nothing(app: Flask, received: Received) -> None:
    assert app.test_client().get("/health").status_code == 200
    assert received.events == []


def test_every_signal_is_in_our_namespace() -> None:
    assert all(isinstance(signal, Signal) for signal in ALL.values())
    assert set(signals.__all__) == set(ALL)


# -- log lines ------------------------------------------------------------------------------


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name == "flask_ias_pkce"
    ]


def test_one_info_line_per_exchange_none_per_hit(
    app: Flask, ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_ias_pkce")
    token = ias_emulator.issue_public_token()
    client = app.test_client()
    client.get("/api/me", headers=bearer(token))
    caplog.clear()

    client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    client.get("/api/me", headers=bearer(token))

    [(level, message)] = [line for line in records(caplog) if line[1].startswith("Token ")]
    assert level == logging.INFO
    assert message.startswith(f"Token exchanged for GET me (issuer {ias_emulator.issuer}, ")
    assert not [line for line in records(caplog) if line[0] > logging.INFO]
    assert_no_token(records(caplog))


@pytest.mark.parametrize(
    ("inject", "headers", "level", "reason"),
    [
        (None, {}, logging.DEBUG, "missing_token"),
        (None, {"Authorization": "Bearer a.b"}, logging.INFO, "not_a_jws"),
        (
            {"status": 400, "body": {"error": "invalid_grant"}},
            None,
            logging.INFO,
            "ias_invalid_grant",
        ),
        ({"status": 503}, None, logging.WARNING, "exchange_status_503"),
        (
            {"status": 401, "body": {"error": "invalid_client"}},
            None,
            logging.ERROR,
            "exchange_refused_invalid_client",
        ),
    ],
)
def test_one_line_per_refusal_at_the_level_an_operator_wants(
    app: Flask,
    ias_emulator: IASEmulator,
    caplog: pytest.LogCaptureFixture,
    inject: dict[str, Any] | None,
    headers: dict[str, str] | None,
    level: int,
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_ias_pkce")
    if inject is not None:
        ias_emulator.inject(TOKEN_PATH, **inject)
    token = ias_emulator.issue_public_token()

    app.test_client().get("/api/me", headers=bearer(token) if headers is None else headers)

    refused = [line for line in records(caplog) if line[1].startswith("Refused")]
    assert refused == [(level, refused[0][1])]
    assert refused[0][1].endswith(f", reason {reason}")
    assert all(token not in message for _, message in records(caplog))
