"""Secrets never leak: the main scenarios run with every logger at DEBUG (urllib3's and
requests' included), and no log record, error text, response body or header holds a token,
the client secret or the private key, nor any 20-character piece of one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jose import jwt

from flask_ias_pkce import KeyLimits, current_token
from flask_ias_pkce.errors import IASPKCEError
from flask_ias_pkce.testing import IASEmulator

import helpers
from helpers import bearer


def build_app(ias: IASEmulator, **options: Any) -> Flask:
    """These tests break IAS and mend it within a second; the backoff after a failed first
    key fetch (tested in test_key_fetch_failure_is_not_repeated_within_the_backoff) would
    hide the recovery they check."""
    options.setdefault("key_limits", KeyLimits(failure_backoff=0.0))
    return helpers.build_app(ias, **options)


WINDOW = 20
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/oauth2/certs"


@dataclass
class Witness:
    """What a scenario exposed to the outside world, and the secrets it must not show."""

    secrets: dict[str, str] = field(default_factory=dict)
    exposed: list[str] = field(default_factory=list)

    def secret(self, name: str, value: str) -> str:
        self.secrets[name] = value
        return value

    def leaks(self) -> list[str]:
        """The secrets of which some 20-character piece was exposed."""
        haystack = "\n".join(self.exposed)
        seen = {haystack[i : i + WINDOW] for i in range(len(haystack) - WINDOW + 1)}
        return [name for name, value in self.secrets.items() if _windows(value) & seen]


def _windows(secret: str) -> set[str]:
    # A PEM's lines are searched one by one: a log would not keep its line breaks.
    parts = [line for line in secret.splitlines() if not line.startswith("-----")]
    return {part[i : i + WINDOW] for part in parts for i in range(len(part) - WINDOW + 1)}


@pytest.fixture
def witness(caplog: pytest.LogCaptureFixture) -> Iterator[Witness]:
    caplog.set_level(logging.DEBUG)
    for name in ("flask_ias_pkce", "urllib3", "requests", "werkzeug", "flask"):
        caplog.set_level(logging.DEBUG, logger=name)
    seen = Witness()
    yield seen
    # In teardown, caplog.records would hold the teardown's records only.
    records = caplog.get_records("call")
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        seen.exposed += [formatter.format(record), repr(record.args), record.exc_text or ""]
    assert records, "the scenario logged nothing: the test would prove nothing"
    assert seen.leaks() == [], f"leaked: {seen.leaks()}"


def secret_app(ias: IASEmulator, seen: Witness, **config: Any) -> FlaskClient:
    """An app whose view records the exchanged token as a secret, and whose errors are
    recorded with their text as an app's error handler would see them."""
    app: Flask = build_app(ias, **config)

    @app.get("/api/token")
    def token() -> str:
        seen.secret(f"exchanged token {len(seen.secrets)}", current_token.token)
        return "ok"

    @app.errorhandler(IASPKCEError)
    def refused(error: IASPKCEError) -> IASPKCEError:
        seen.exposed += [str(error), repr(error), error.description or "", error.reason]
        return error

    binding = ias.binding
    if "clientsecret" in binding:
        seen.secret("client secret", binding["clientsecret"])
    else:
        seen.secret("private key", binding["key"])
    return app.test_client()


def call(client: FlaskClient, seen: Witness, path: str = "/api/token", **kwargs: Any) -> int:
    answer = client.get(path, **kwargs)
    seen.exposed.append(answer.get_data(as_text=True))
    seen.exposed += [f"{name}: {value}" for name, value in answer.headers.items()]
    return answer.status_code


def public(ias: IASEmulator, seen: Witness, **claims: Any) -> str:
    return seen.secret(f"public token {len(seen.secrets)}", ias.issue_public_token(**claims))


@pytest.fixture(params=["X509_GENERATED", "SECRET"])
def ias(request: pytest.FixtureRequest) -> Iterator[IASEmulator]:
    with IASEmulator(credential_type=request.param) as emulator:
        yield emulator


# -- the scenarios --------------------------------------------------------------------------


def test_exchange_cache_hit_and_passthrough_leak_nothing(
    ias: IASEmulator, witness: Witness
) -> None:
    client = secret_app(ias, witness)
    token = public(ias, witness)

    assert call(client, witness, headers=bearer(token)) == 200
    assert call(client, witness, headers=bearer(token)) == 200
    passthrough = public(ias, witness, aud=[ias.public_client_id, ias.xsuaa_client_id])
    assert call(client, witness, headers=bearer(passthrough)) == 200
    assert call(client, witness, path="/api/me", headers=bearer(token)) == 200
    assert len(ias.exchanges) == 1


def test_refused_tokens_leak_nothing(ias: IASEmulator, witness: Witness) -> None:
    client = secret_app(ias, witness)
    expired = public(ias, witness, exp=1_000_000, iat=999_000)
    forged = witness.secret("forged token", ias.foreign_key_token())
    wrong_audience = public(ias, witness, aud="someone-else")
    good = public(ias, witness)

    assert call(client, witness) == 401
    assert call(client, witness, headers={"Authorization": f"Basic {good}"}) == 401
    assert call(client, witness, headers={"Authorization": f"Bearer {good} {good}"}) == 400
    assert call(client, witness, headers={"Authorization": f"Bearer {good}\x01"}) == 400
    assert call(client, witness, query_string={"access_token": good}) == 400
    for token in (expired, forged, wrong_audience, good[:-10] + "AAAAAAAAAA", good + ".x"):
        assert call(client, witness, headers=bearer(token)) == 401
    assert ias.exchanges == []


def test_refusals_by_ias_leak_nothing(ias: IASEmulator, witness: Witness) -> None:
    client = secret_app(ias, witness, IAS_PKCE_RETRIES=1)
    token = public(ias, witness)
    # An IAS that echoes what it was sent in its error description.
    ias.inject(
        TOKEN_PATH,
        status=400,
        body={"error": "invalid_grant", "error_description": f"bad assertion {token}"},
    )
    assert call(client, witness, headers=bearer(token)) == 401
    assert call(client, witness, headers=bearer(token)) == 401

    other = public(ias, witness)
    secret = ias.binding.get("clientsecret", "")
    ias.inject(
        TOKEN_PATH,
        status=401,
        body={"error": "invalid_client", "error_description": f"{other} {secret}"},
    )
    assert call(client, witness, headers=bearer(other)) == 502


def test_wrong_client_secret_leaks_neither_secret(witness: Witness) -> None:
    with IASEmulator(credential_type="SECRET") as ias:
        wrong = witness.secret("wrong secret", "configured-but-wrong-secret-0123456789")
        client = secret_app(ias, witness, IAS_PKCE_CLIENT_SECRET=wrong)

        assert call(client, witness, headers=bearer(public(ias, witness))) == 502


def test_failing_ias_leaks_nothing(ias: IASEmulator, witness: Witness) -> None:
    client = secret_app(ias, witness, IAS_PKCE_RETRIES=1, IAS_PKCE_TIMEOUT=(1.0, 0.5))
    ias.inject(JWKS_PATH, status=500, times=2)
    assert call(client, witness, headers=bearer(public(ias, witness))) == 503

    ias.inject(TOKEN_PATH, status=503, body="try later", times=2)
    assert call(client, witness, headers=bearer(public(ias, witness))) == 503

    ias.inject(TOKEN_PATH, delay=1.0)
    assert call(client, witness, headers=bearer(public(ias, witness))) == 504

    token = public(ias, witness)
    ias.inject(TOKEN_PATH, status=200, body=f"<html>{token}</html>")
    assert call(client, witness, headers=bearer(token)) == 502

    token = public(ias, witness)
    claims = {**jwt.get_unverified_claims(token), "aud": [ias.client_id]}
    unusable = witness.secret("unusable exchanged token", ias.sign(claims))
    ias.inject(TOKEN_PATH, body={"id_token": unusable, "access_token": unusable})
    assert call(client, witness, headers=bearer(token)) == 502

    ias.inject(TOKEN_PATH, drop=True, times=2)
    assert call(client, witness, headers=bearer(public(ias, witness))) == 503


# -- the witness itself ---------------------------------------------------------------------


def test_witness_catches_a_logged_piece_of_a_token(caplog: pytest.LogCaptureFixture) -> None:
    seen = Witness()
    token = seen.secret("token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2ln")
    logging.getLogger("flask_ias_pkce").error("oops %s", token[5:26])
    seen.exposed += [record.getMessage() for record in caplog.records]

    assert seen.leaks() == ["token"]
