"""A failing IAS, as a user of the app sees it: every fault gets its answer from DESIGN.md's
error table, no request waits longer than the timeouts and retries allow, and once IAS
recovers the same app serves again without a restart."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import shutil
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from jose import jwk as jose_jwk
from jose import jwt
from werkzeug.test import TestResponse

from flask_ias_pkce import KeyLimits
from flask_ias_pkce.constants import EXTENSION_NAME, RETRY_AFTER_SECONDS
from flask_ias_pkce.keys import rsa_signing_keys
from flask_ias_pkce.testing import IASEmulator, _pki
from flask_ias_pkce.transport import HttpPolicy, new_session

import helpers
from helpers import FakeClock, bearer


def build_app(ias: IASEmulator, **options: Any) -> Flask:
    """These tests break IAS and mend it within a second; the backoff after a failed first
    key fetch (tested in test_key_fetch_failure_is_not_repeated_within_the_backoff) would
    hide the recovery they check."""
    options.setdefault("key_limits", KeyLimits(failure_backoff=0.0))
    return helpers.build_app(ias, **options)


JSON = {"Content-Type": "application/json"}
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/oauth2/certs"
DISCOVERY_PATH = "/.well-known/openid-configuration"
#: Scheduling and the in-process work around the calls to IAS; not a performance budget.
SLACK_SECONDS = 1.0
#: Short timeouts for the tests that wait for one to pass.
SHORT_TIMEOUT = (1.0, 0.5)


# -- helpers ------------------------------------------------------------------------------


def worst_case(app: Flask) -> float:
    """The longest one call to IAS may take with this app's timeouts and retries."""
    settings = app.extensions[EXTENSION_NAME].settings
    return HttpPolicy(timeout=settings.timeout, retries=settings.retries).worst_case_seconds()


def timed_get(app: Flask, client: FlaskClient, token: str) -> TestResponse:
    """``GET /api/me`` with ``token``; fails if it took longer than the timeouts allow."""
    started = time.monotonic()
    answer = client.get("/api/me", headers=bearer(token))
    elapsed = time.monotonic() - started
    bound = worst_case(app)
    assert elapsed <= bound + SLACK_SECONDS, f"waited {elapsed:.2f}s, bound {bound:.2f}s"
    return answer


def assert_gateway_error(answer: TestResponse, status: int, error: str) -> None:
    """A 5xx of the error table: JSON body, no challenge, ``Retry-After`` on 503."""
    assert answer.status_code == status
    assert answer.json is not None
    assert answer.json["error"] == error
    assert isinstance(answer.json["error_description"], str)
    assert "WWW-Authenticate" not in answer.headers
    if status == 503:
        assert answer.headers["Retry-After"].isdigit()
    else:
        assert "Retry-After" not in answer.headers


def assert_invalid_token(answer: TestResponse) -> None:
    assert answer.status_code == 401
    assert answer.json is not None
    assert answer.json["error"] == "invalid_token"
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


def exchanged_claims(ias: IASEmulator, public_token: str, **changes: Any) -> dict[str, Any]:
    """Claims as IAS would put them in the exchanged token of ``public_token``."""
    claims: dict[str, Any] = jwt.get_unverified_claims(public_token)
    claims.update({"aud": [ias.client_id, ias.xsuaa_client_id], "azp": ias.client_id})
    claims.update(changes)
    return claims


class _Relay:
    """A TCP relay on a fixed local port in front of the emulator.

    ``close()`` makes the port refuse connections and cuts the open ones, ``open()`` serves
    on the same port again; with ``hang`` set it accepts connections and never answers.
    Tokens whose ``ias_iss`` names the relay are verified and exchanged through it.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.hang = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]

    @property
    def origin(self) -> str:
        return f"https://localhost:{self.port}"

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener, self._stop = listener, threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.cut_connections()

    def cut_connections(self) -> None:
        with self._lock:
            open_sockets, self._sockets = self._sockets, []
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._sockets.append(client)
            if self.hang:
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            with self._lock:
                self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay(ias_emulator: IASEmulator) -> Iterator[_Relay]:
    relay = _Relay(int(ias_emulator.url.rsplit(":", 1)[1]))
    relay.open()
    # The relay's origin is the issuer we trust; its keys are the emulator's, fetched through it.
    # Key sets are per tenant and client (azp): the public and the exchanged token each
    # discover once, and a test may fetch keys again after a failure.
    # The exchange finds its token endpoint in the same document.
    document = {
        "issuer": relay.origin,
        "jwks_uri": relay.origin + JWKS_PATH,
        "token_endpoint": relay.origin + TOKEN_PATH,
    }
    ias_emulator.inject(DISCOVERY_PATH, body=document, times=20)
    yield relay
    relay.close()


def relayed_token(ias: IASEmulator, relay: _Relay) -> str:
    return ias.issue_public_token(ias_iss=relay.origin)


# -- IAS cannot be reached ----------------------------------------------------------------


def test_refused_connection_answers_503_and_recovers_when_ias_is_back(
    ias_emulator: IASEmulator, relay: _Relay
) -> None:
    app = build_app(ias_emulator, IAS_PKCE_IAS_URL=relay.origin, IAS_PKCE_RETRIES=2)
    client = app.test_client()
    assert timed_get(app, client, relayed_token(ias_emulator, relay)).status_code == 200

    relay.close()
    token = relayed_token(ias_emulator, relay)
    answer = timed_get(app, client, token)

    assert_gateway_error(answer, 503, "temporarily_unavailable")
    assert answer.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert len(ias_emulator.exchanges) == 1

    relay.open()
    recovered = timed_get(app, client, token)
    assert recovered.status_code == 200
    assert recovered.json is not None
    assert recovered.json["from_cache"] is False


def test_ias_gone_before_the_keys_were_fetched_answers_503(
    ias_emulator: IASEmulator, tmp_path: Path
) -> None:
    # The emulator removes its CA file when it stops; the app keeps trusting a copy.
    ca_file = shutil.copy(ias_emulator.ca_file, tmp_path / "ca.pem")
    app = build_app(ias_emulator, IAS_PKCE_VERIFY=str(ca_file), IAS_PKCE_RETRIES=1)
    token = ias_emulator.issue_public_token()
    ias_emulator.stop()

    answer = timed_get(app, app.test_client(), token)

    assert_gateway_error(answer, 503, "temporarily_unavailable")


def test_ca_bundle_removed_after_start_answers_503_until_it_is_back(
    ias_emulator: IASEmulator, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    shutil.copy(ias_emulator.ca_file, ca_file)
    app = build_app(ias_emulator, IAS_PKCE_VERIFY=str(ca_file), IAS_PKCE_RETRIES=1)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ca_file.unlink()

    assert_gateway_error(timed_get(app, client, token), 503, "temporarily_unavailable")
    assert ias_emulator.calls == []

    shutil.copy(ias_emulator.ca_file, ca_file)
    assert timed_get(app, client, token).status_code == 200


def test_untrusted_certificate_of_ias_answers_503_without_retries(
    ias_emulator: IASEmulator,
) -> None:
    with IASEmulator() as other:
        app = build_app(ias_emulator, IAS_PKCE_VERIFY=other.ca_file, IAS_PKCE_RETRIES=2)
        answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 503, "temporarily_unavailable")
    # A certificate does not mend between attempts: one handshake, nothing sent.
    assert ias_emulator.connections == 1
    assert ias_emulator.calls == []


# -- IAS is slow --------------------------------------------------------------------------


def test_ias_that_accepts_and_never_answers_gets_504(
    ias_emulator: IASEmulator, relay: _Relay
) -> None:
    app = build_app(
        ias_emulator,
        IAS_PKCE_IAS_URL=relay.origin,
        IAS_PKCE_TIMEOUT=SHORT_TIMEOUT,
        IAS_PKCE_RETRIES=2,
    )
    client = app.test_client()
    assert timed_get(app, client, relayed_token(ias_emulator, relay)).status_code == 200

    relay.hang = True
    relay.cut_connections()
    answer = timed_get(app, client, relayed_token(ias_emulator, relay))

    assert_gateway_error(answer, 504, "gateway_timeout")

    relay.hang = False
    assert timed_get(app, client, relayed_token(ias_emulator, relay)).status_code == 200


def test_exchange_slower_than_read_timeout_gets_504_then_recovers(
    ias_emulator: IASEmulator,
) -> None:
    app = build_app(ias_emulator, IAS_PKCE_TIMEOUT=SHORT_TIMEOUT, IAS_PKCE_RETRIES=2)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(TOKEN_PATH, delay=SHORT_TIMEOUT[1] + 0.5)

    answer = timed_get(app, client, token)

    assert_gateway_error(answer, 504, "gateway_timeout")
    # A read timeout is not retried: IAS has the request, and the user has waited enough.
    assert len(ias_emulator.exchanges) <= 1
    assert timed_get(app, client, token).status_code == 200


def test_keys_slower_than_read_timeout_get_504(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_TIMEOUT=SHORT_TIMEOUT, IAS_PKCE_RETRIES=2)
    ias_emulator.inject(JWKS_PATH, delay=SHORT_TIMEOUT[1] + 0.5)

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 504, "gateway_timeout")
    assert ias_emulator.exchanges == []


class _TricklingIAS:
    """An HTTPS server that serves the emulator's keys at once but sends the answer of
    ``/oauth2/token`` a byte at a time, each byte well within the read timeout."""

    def __init__(self, ias: IASEmulator, folder: Path, byte_interval: float) -> None:
        ca = _pki.make_ca("Trickle CA")
        server_identity = _pki.issue(ca, "localhost", server=True)
        self.ca_file = folder / "trickle-ca.pem"
        self.ca_file.write_text(ca.certificate_pem)
        (folder / "server.pem").write_text(server_identity.certificate_pem)
        (folder / "server-key.pem").write_text(server_identity.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(folder / "server.pem", folder / "server-key.pem")
        jwks = json.dumps(ias.jwks).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silent."""

            def do_GET(self) -> None:
                document = {
                    "issuer": outer.origin,
                    "jwks_uri": outer.origin + JWKS_PATH,
                    "token_endpoint": outer.origin + TOKEN_PATH,
                }
                discovery = json.dumps(document).encode()
                self._answer(jwks if self.path == JWKS_PATH else discovery, trickle=False)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer(json.dumps({"id_token": "a.b.c", "pad": "x" * 40}).encode(), True)

            def _answer(self, body: bytes, trickle: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    for index in range(len(body) if trickle else 1):
                        self.wfile.write(body[index : index + 1] if trickle else body)
                        if trickle:
                            time.sleep(byte_interval)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.origin = f"https://localhost:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_answer_trickling_past_the_timeouts_gets_504(
    ias_emulator: IASEmulator, tmp_path: Path
) -> None:
    read_timeout = SHORT_TIMEOUT[1]
    trickling = _TricklingIAS(ias_emulator, tmp_path, byte_interval=read_timeout / 4)
    try:
        app = build_app(
            ias_emulator,
            IAS_PKCE_IAS_URL=trickling.origin,
            IAS_PKCE_VERIFY=str(trickling.ca_file),
            IAS_PKCE_TIMEOUT=SHORT_TIMEOUT,
            IAS_PKCE_RETRIES=2,
        )
        token = ias_emulator.issue_public_token(ias_iss=trickling.origin)

        # Each byte comes within the read timeout, the whole answer far beyond it.
        answer = timed_get(app, app.test_client(), token)
    finally:
        trickling.close()

    assert_gateway_error(answer, 504, "gateway_timeout")


def test_answer_head_trickling_past_the_timeouts_gets_504(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_TIMEOUT=SHORT_TIMEOUT, IAS_PKCE_RETRIES=0)
    client = app.test_client()
    assert (
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token())).status_code == 200
    )
    # The status line at once, then a header byte every quarter of the read timeout.
    ias_emulator.inject(TOKEN_PATH, header_interval=SHORT_TIMEOUT[1] / 4)

    answer = timed_get(app, client, ias_emulator.issue_public_token())

    assert_gateway_error(answer, 504, "gateway_timeout")
    assert timed_get(app, client, ias_emulator.issue_public_token()).status_code == 200


def test_answer_head_sent_slowly_within_the_deadline_is_used(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_TIMEOUT=(2.0, 2.0), IAS_PKCE_RETRIES=0)
    client = app.test_client()
    assert (
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token())).status_code == 200
    )
    ias_emulator.inject(TOKEN_PATH, header_interval=0.002)

    assert timed_get(app, client, ias_emulator.issue_public_token()).status_code == 200


# -- IAS fails for a while ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retries"), [(500, 2), (502, 1), (503, 0), (503, 2), (504, 1), (408, 1), (429, 2)]
)
def test_transient_failure_is_retried_then_answers_503(
    ias_emulator: IASEmulator, status: int, retries: int
) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=retries)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(TOKEN_PATH, status=status, body={"error": "x"}, times=retries + 1)

    answer = timed_get(app, client, token)

    assert_gateway_error(answer, 503, "temporarily_unavailable")
    assert answer.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert len(ias_emulator.exchanges) == retries + 1
    # Not held against the token: once IAS is well, the same token is served.
    assert timed_get(app, client, token).status_code == 200
    assert len(ias_emulator.exchanges) == retries + 2


@pytest.mark.parametrize("status", [503, 429])
def test_one_transient_failure_is_invisible_to_the_user(
    ias_emulator: IASEmulator, status: int
) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=2)
    ias_emulator.inject(TOKEN_PATH, status=status, headers={"Retry-After": "1"})

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert answer.status_code == 200
    assert [call.status for call in ias_emulator.exchanges] == [status, 200]


def test_short_retry_after_of_ias_is_passed_on(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=2)
    ias_emulator.inject(TOKEN_PATH, status=503, headers={"Retry-After": "1"}, times=3)

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 503, "temporarily_unavailable")
    assert answer.headers["Retry-After"] == "1"
    assert len(ias_emulator.exchanges) == 3


def test_long_retry_after_of_ias_stops_the_retries(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=2)
    ias_emulator.inject(TOKEN_PATH, status=429, headers={"Retry-After": "120"}, times=3)

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 503, "temporarily_unavailable")
    assert answer.headers["Retry-After"] == "120"
    assert len(ias_emulator.exchanges) == 1


def test_dropped_connection_is_retried(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=2)
    ias_emulator.inject(TOKEN_PATH, drop=True)

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert answer.status_code == 200
    assert [call.status for call in ias_emulator.exchanges] == [None, 200]


def test_connection_dropped_on_every_attempt_answers_503(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=1)
    ias_emulator.inject(TOKEN_PATH, drop=True, times=2)

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 503, "temporarily_unavailable")
    assert len(ias_emulator.exchanges) == 2


# -- IAS refuses --------------------------------------------------------------------------


def test_invalid_grant_is_401_and_a_replay_is_refused_without_asking_ias(
    ias_emulator: IASEmulator,
) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=2)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(
        TOKEN_PATH, status=400, body={"error": "invalid_grant", "error_description": "revoked"}
    )

    assert_invalid_token(timed_get(app, client, token))
    assert len(ias_emulator.exchanges) == 1

    for _ in range(3):
        assert_invalid_token(timed_get(app, client, token))
    assert len(ias_emulator.exchanges) == 1
    # The refusal is this token's alone.
    assert timed_get(app, client, ias_emulator.issue_public_token()).status_code == 200


def test_a_refusal_is_remembered_for_the_negative_ttl_even_past_the_tokens_exp(
    ias_emulator: IASEmulator,
) -> None:
    # docs/security.rst: remembered for IAS_PKCE_NEGATIVE_TTL, not capped at exp. An expired
    # token is refused locally anyway; the entry only ever refuses.
    clock = FakeClock(time.time())
    app = build_app(ias_emulator, clock=clock, IAS_PKCE_NEGATIVE_TTL=30)
    client = app.test_client()
    token = ias_emulator.issue_public_token(exp=int(clock.now) + 10)
    ias_emulator.inject(TOKEN_PATH, status=400, body={"error": "invalid_grant"})
    assert_invalid_token(client.get("/api/me", headers=bearer(token)))

    clock.advance(25)  # past exp (within the leeway), within the negative TTL
    assert_invalid_token(client.get("/api/me", headers=bearer(token)))
    assert len(ias_emulator.exchanges) == 1
    clock.advance(10)  # past the negative TTL: IAS is asked again
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert len(ias_emulator.exchanges) == 2


def test_injected_invalid_client_is_502_and_not_held_against_the_token(
    ias_emulator: IASEmulator,
) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=2)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(TOKEN_PATH, status=401, body={"error": "invalid_client"})

    assert_gateway_error(timed_get(app, client, token), 502, "bad_gateway")
    assert len(ias_emulator.exchanges) == 1
    assert timed_get(app, client, token).status_code == 200


def test_wrong_client_secret_is_502() -> None:
    with IASEmulator(credential_type="SECRET") as ias:
        app = build_app(ias, IAS_PKCE_CLIENT_SECRET="not-the-secret", IAS_PKCE_RETRIES=2)

        answer = timed_get(app, app.test_client(), ias.issue_public_token())

        assert_gateway_error(answer, 502, "bad_gateway")
        assert [call.status for call in ias.exchanges] == [401]


def test_foreign_client_certificate_is_refused_by_ias(ias_emulator: IASEmulator) -> None:
    certificate, key = ias_emulator.make_foreign_client_certificate()
    app = build_app(ias_emulator, IAS_PKCE_CERTIFICATE=certificate, IAS_PKCE_KEY=key)

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    # IAS either fails the handshake (503) or refuses the client (502); never a 401 or 200.
    assert answer.status_code in (502, 503)
    assert "WWW-Authenticate" not in answer.headers


# -- IAS answers something we cannot use ---------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("<html>Service Unavailable</html>", id="html"),
        pytest.param("{not json", id="broken json"),
        pytest.param("", id="empty"),
        pytest.param({"token_type": "Bearer", "expires_in": 3600}, id="no token"),
        pytest.param({"access_token": "opaque", "expires_in": 3600}, id="only opaque token"),
        pytest.param({"id_token": "not-a-jwt"}, id="id token not a jwt"),
        pytest.param({"id_token": 42}, id="id token a number"),
        pytest.param('["id_token"]', id="json array"),
    ],
)
def test_unusable_exchange_answer_is_502(ias_emulator: IASEmulator, body: Any) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=2)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(TOKEN_PATH, status=200, body=body)

    assert_gateway_error(timed_get(app, client, token), 502, "bad_gateway")
    assert len(ias_emulator.exchanges) == 1
    assert timed_get(app, client, token).status_code == 200


def test_oversized_exchange_answer_is_502(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator)
    ias_emulator.inject(TOKEN_PATH, status=200, body={"id_token": "a" * 300_000})

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 502, "bad_gateway")


def test_exchanged_token_without_xsuaa_audience_is_502(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    claims = exchanged_claims(ias_emulator, token, aud=[ias_emulator.client_id])
    ias_emulator.inject(TOKEN_PATH, body={"id_token": ias_emulator.sign(claims)})

    assert_gateway_error(timed_get(app, client, token), 502, "bad_gateway")
    assert timed_get(app, client, token).status_code == 200


def test_exchanged_token_signed_by_a_foreign_key_is_502(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator)
    token = ias_emulator.issue_public_token()
    forged = ias_emulator.foreign_key_token(**exchanged_claims(ias_emulator, token))
    ias_emulator.inject(TOKEN_PATH, body={"id_token": forged})

    answer = timed_get(app, app.test_client(), token)

    assert_gateway_error(answer, 502, "bad_gateway")


def test_exchanged_token_with_an_unknown_kid_is_502(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator)
    token = ias_emulator.issue_public_token()
    unknown = ias_emulator.sign(
        exchanged_claims(ias_emulator, token), headers={"kid": "no-such-key"}
    )
    ias_emulator.inject(TOKEN_PATH, body={"id_token": unknown})

    answer = timed_get(app, app.test_client(), token)

    assert_gateway_error(answer, 502, "bad_gateway")


def test_exchanged_token_of_another_issuer_is_502(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator)
    token = ias_emulator.issue_public_token()
    claims = exchanged_claims(ias_emulator, token, iss="https://other.localhost")
    ias_emulator.inject(TOKEN_PATH, body={"id_token": ias_emulator.sign(claims)})

    answer = timed_get(app, app.test_client(), token)

    assert_gateway_error(answer, 502, "bad_gateway")


# -- the keys cannot be had ---------------------------------------------------------------


@pytest.mark.parametrize("path", [DISCOVERY_PATH, JWKS_PATH])
@pytest.mark.parametrize("status", [500, 503])
def test_failing_key_endpoints_answer_503_then_recover(
    ias_emulator: IASEmulator, path: str, status: int
) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=1)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(path, status=status, times=2)

    answer = timed_get(app, client, token)

    assert_gateway_error(answer, 503, "temporarily_unavailable")
    assert len([call for call in ias_emulator.calls if call.path == path]) == 2
    assert ias_emulator.exchanges == []
    assert timed_get(app, client, token).status_code == 200


@pytest.mark.parametrize("path", [DISCOVERY_PATH, JWKS_PATH])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("garbage", id="not json"),
        pytest.param({"keys": "none"}, id="keys not a list"),
        pytest.param({"keys": [{"kty": "RSA", "kid": "k", "n": "AQ"}]}, id="unusable key"),
        pytest.param({"jwks_uri": "https://evil.example/keys"}, id="keys elsewhere"),
    ],
)
def test_garbage_from_key_endpoints_is_502_then_recovers(
    ias_emulator: IASEmulator, path: str, body: Any
) -> None:
    app = build_app(ias_emulator)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    ias_emulator.inject(path, status=200, body=body)

    answer = timed_get(app, client, token)

    assert_gateway_error(answer, 502, "bad_gateway")
    assert ias_emulator.exchanges == []
    assert timed_get(app, client, token).status_code == 200


def test_keys_kept_when_a_refresh_fails(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator)
    client = app.test_client()
    assert timed_get(app, client, ias_emulator.issue_public_token()).status_code == 200
    ias_emulator.inject(JWKS_PATH, status=500, times=10)

    # An unknown kid asks for the keys again; their failure must not cost the known ones.
    unknown = ias_emulator.sign(
        jwt.get_unverified_claims(ias_emulator.issue_public_token()), headers={"kid": "new"}
    )
    assert_invalid_token(timed_get(app, client, unknown))
    assert timed_get(app, client, ias_emulator.issue_public_token()).status_code == 200


def test_key_fetch_failure_is_not_repeated_within_the_backoff(
    ias_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(time.time())
    app = build_app(
        ias_emulator, clock=clock, key_limits=KeyLimits(failure_backoff=5.0), IAS_PKCE_RETRIES=0
    )
    client = app.test_client()
    ias_emulator.inject("/.well-known/openid-configuration", status=503)

    first = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    again = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))
    calls_while_failing = len(ias_emulator.calls)
    clock.advance(5)
    later = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert (first.status_code, again.status_code, later.status_code) == (503, 503, 200)
    assert calls_while_failing == 1  # the second request did not call IAS


def test_ias_hiding_its_keys_from_this_client_is_a_401(ias_emulator: IASEmulator) -> None:
    # IAS answers the JWKS with 400 when the asking client may not see that tenant's keys:
    # the token is not for this app, whatever its claims say.
    client = build_app(ias_emulator).test_client()
    ias_emulator.inject(JWKS_PATH, status=400, body={"error": "invalid_request"})

    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert ias_emulator.exchanges == []


# -- hostile answers (red-team review, issue 11) -------------------------------------------


def deeply_nested(depth: int = 20_000) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("path", [DISCOVERY_PATH, JWKS_PATH, TOKEN_PATH])
def test_deeply_nested_answer_of_ias_is_502(
    ias_emulator: IASEmulator, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(ias_emulator)
    ias_emulator.inject(path, status=200, body=deeply_nested(), headers=JSON)

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 502, "bad_gateway")
    assert all(record.exc_info is None for record in caplog.records)


def signed_deep(ias: IASEmulator, claims: dict[str, Any]) -> str:
    # json.dumps itself recurses: give it room to write what the parser must refuse.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10 * DEEP_CLAIM)
    try:
        return ias.sign(
            {**claims, "deep": functools.reduce(lambda x, _: [x], range(DEEP_CLAIM), [])}
        )
    finally:
        sys.setrecursionlimit(limit)


DEEP_CLAIM = 1500


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"exp": 10**400}, id="exp 401 digits"),
        pytest.param({"iat": 10**400}, id="iat 401 digits"),
        pytest.param({"exp": float("nan")}, id="exp NaN"),
        pytest.param({"exp": float("inf")}, id="exp Infinity"),
        pytest.param({"nbf": "soon"}, id="nbf a string"),
        pytest.param({"deep": "nested"}, id="claims nested 1500 levels"),
    ],
)
def test_exchanged_token_with_hostile_structure_is_502(
    ias_emulator: IASEmulator, changes: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(ias_emulator)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    if changes == {"deep": "nested"}:
        exchanged = signed_deep(ias_emulator, exchanged_claims(ias_emulator, token))
    else:
        exchanged = ias_emulator.sign(exchanged_claims(ias_emulator, token, **changes))
    ias_emulator.inject(TOKEN_PATH, body={"id_token": exchanged})

    assert_gateway_error(timed_get(app, client, token), 502, "bad_gateway")
    assert all(record.exc_info is None for record in caplog.records)


def test_exchanged_token_of_another_tenant_is_502(caplog: pytest.LogCaptureFixture) -> None:
    # The IAS tenant hosts both application tenants, so its JWKS answers for either.
    with IASEmulator(extra_app_tids=("another-tenant",)) as ias:
        _exchanged_token_of_another_tenant_is_502(ias, caplog)


def _exchanged_token_of_another_tenant_is_502(
    ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(ias_emulator)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    claims = exchanged_claims(ias_emulator, token, app_tid="another-tenant")
    ias_emulator.inject(TOKEN_PATH, body={"id_token": ias_emulator.sign(claims)})

    assert_gateway_error(timed_get(app, client, token), 502, "bad_gateway")
    assert any("reason exchanged_tenant" in record.getMessage() for record in caplog.records)
    # The same user of the same tenant is served.
    assert timed_get(app, client, token).status_code == 200


def test_exchanged_token_that_names_no_tenant_is_502(
    ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # The public token names its tenant: an exchanged token without one cannot show that
    # it is of the same tenant.
    app = build_app(ias_emulator)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    claims = exchanged_claims(ias_emulator, token)
    del claims["app_tid"]
    ias_emulator.inject(TOKEN_PATH, body={"id_token": ias_emulator.sign(claims)})

    assert_gateway_error(timed_get(app, client, token), 502, "bad_gateway")
    assert any("reason exchanged_tenant" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "issuer",
    [
        "https://evil.localhost",
        "https://localhost:99999",  # no port at all
        "https://localhost/tenant",
        ["https://localhost"],
    ],
)
def test_discovery_document_of_another_issuer_is_502(
    ias_emulator: IASEmulator, issuer: Any
) -> None:
    # OpenID Connect Discovery 4.3: the issuer in the document is the one asked for.
    app = build_app(ias_emulator)
    ias_emulator.inject(
        DISCOVERY_PATH, body={"issuer": issuer, "jwks_uri": ias_emulator.issuer + JWKS_PATH}
    )

    answer = timed_get(app, app.test_client(), ias_emulator.issue_public_token())

    assert_gateway_error(answer, 502, "bad_gateway")


def rsa_jwk(kid: str, bits: int) -> tuple[rsa.RSAPrivateKey, dict[str, str]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = private.public_key().public_numbers()

    def number(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    jwk_ = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256"}
    return private, {**jwk_, "n": number(numbers.n), "e": number(numbers.e)}


def test_rsa_key_under_2048_bits_in_the_jwks_verifies_nothing(ias_emulator: IASEmulator) -> None:
    # RFC 7518 section 3.3: RS256 keys have 2048 bits or more.
    weak, weak_jwk = rsa_jwk("weak", 1024)
    ias_emulator.inject(JWKS_PATH, body={"keys": [*ias_emulator.jwks["keys"], weak_jwk]}, times=5)
    app = build_app(ias_emulator)
    # A passthrough token: nothing but our own check stands between it and the view.
    passthrough = [ias_emulator.public_client_id, ias_emulator.xsuaa_client_id]
    claims = jwt.get_unverified_claims(ias_emulator.issue_public_token(aud=passthrough))
    pem = weak.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forged = jwt.encode(claims, pem, algorithm="RS256", headers={"kid": "weak"})

    assert_invalid_token(timed_get(app, app.test_client(), forged))
    assert timed_get(app, app.test_client(), ias_emulator.issue_public_token()).status_code == 200


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"n": "A" * 1400, "e": "AQAB"}, id="modulus over 8192 bits"),
        pytest.param({"e": "A" * 1400}, id="exponent over 8192 bits"),
        pytest.param({"n": 5, "e": "AQAB"}, id="modulus a number"),
        pytest.param({"n": None, "e": None, "value": "P" * 4000}, id="PEM too long"),
    ],
)
def test_absurd_rsa_numbers_are_refused_before_they_are_decoded(entry: dict[str, Any]) -> None:
    _, good = rsa_jwk("good", 2048)
    absurd = {**good, "kid": "absurd", **entry}

    with mock.patch("jose.jwk.construct", wraps=jose_jwk.construct) as construct:
        keys = rsa_signing_keys([good, absurd], "test")

    assert set(keys) == {"good"}
    assert construct.call_count == 1  # the good key only: the absurd one was never decoded


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"n": "!!!", "e": "AQAB"}, id="modulus not base64url"),
        pytest.param(
            {"value": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}, id="PEM broken"
        ),
    ],
)
def test_broken_rsa_numbers_are_skipped(entry: dict[str, Any]) -> None:
    _, good = rsa_jwk("good", 2048)
    broken = {key: value for key, value in {**good, "kid": "broken", **entry}.items() if value}
    if "value" in entry:
        broken = {key: value for key, value in broken.items() if key not in ("n", "e")}

    assert set(rsa_signing_keys([good, broken], "test")) == {"good"}


def test_a_session_used_outside_a_call_has_no_deadline_of_ours(ias_emulator: IASEmulator) -> None:
    # The deadline is the policy's, set by call(); a bare request keeps requests' own rules.
    session = new_session()
    try:
        answer = session.get(
            ias_emulator.issuer + JWKS_PATH, verify=ias_emulator.ca_file, timeout=5
        )
    finally:
        session.close()

    assert answer.status_code == 200


def test_calls_through_a_proxy_keep_the_deadline_on_the_head() -> None:
    adapter = new_session().get_adapter("https://localhost")
    manager = adapter.proxy_manager_for("http://127.0.0.1:9")

    assert manager.pool_classes_by_scheme["https"].__name__ == "_DeadlineHTTPSConnectionPool"
