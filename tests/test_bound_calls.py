"""Calls downstream with the certificate the token is bound to: ``ias.session(mtls=True)``,
and plain ``ias.session()`` for a token that carries ``cnf.x5t#S256``, against a real
HTTPS server that requires the client certificate and checks the binding (RFC 8705)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from jose import jwt

from flask_ias_pkce import IASPKCE
from flask_ias_pkce.credentials import thumbprint
from flask_ias_pkce.testing import IASEmulator, _pki
from flask_ias_pkce.testing._server import Request, Response, TLSServer

from helpers import bearer, emulator_config


class CertificateRoute:
    """A CAP-like service on a certificate route: TLS demands a client certificate of the
    emulator's CA, and a request passes only when its Bearer token's ``cnf.x5t#S256`` is
    the thumbprint of that certificate."""

    def __init__(self, ias: IASEmulator) -> None:
        ca = _pki.make_ca("downstream CA")
        server = _pki.issue(ca, "localhost", server=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_files(ias, server))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(ias.ca_file)
        self.ca_pem = ca.certificate_pem
        self.seen: list[str | None] = []
        self._server = TLSServer(context, self._handle)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self._server.port}/orders"

    def _handle(self, request: Request) -> Response:
        presented = thumbprint(request.client_certificate) if request.client_certificate else None
        self.seen.append(presented)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or presented is None:
            return Response(401)
        bound = jwt.get_unverified_claims(token).get("cnf", {}).get("x5t#S256")
        return Response(200 if bound == presented else 403)

    def close(self) -> None:
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)


def _files(ias: IASEmulator, issued: _pki.Issued) -> tuple[str, str]:
    # Next to the emulator's own files, which it removes when it stops.
    folder = ias.ca_file.rpartition("/")[0]
    certificate, key = f"{folder}/downstream.pem", f"{folder}/downstream-key.pem"
    with open(certificate, "w") as handle:
        handle.write(issued.certificate_pem)
    with open(key, "w") as handle:
        handle.write(issued.key_pem)
    return certificate, key


@pytest.fixture
def bound_ias() -> Iterator[IASEmulator]:
    with IASEmulator(certificate_bound_tokens=True) as ias:
        yield ias


@pytest.fixture
def route(bound_ias: IASEmulator) -> Iterator[CertificateRoute]:
    service = CertificateRoute(bound_ias)
    yield service
    service.close()


def downstream_app(ias: IASEmulator, route_url: str, ca_file: str) -> Flask:
    app = Flask("downstream_host")
    app.config.update(emulator_config(ias))
    extension = IASPKCE()

    @app.get("/call/<mode>")
    def call(mode: str) -> dict[str, Any]:
        mtls = {"on": True, "off": False, "auto": None}[mode]
        try:
            answer = extension.session(mtls=mtls).get(route_url, verify=ca_file, timeout=5)
        except requests.exceptions.SSLError:
            return {"status": "handshake refused"}
        return {"status": answer.status_code}

    extension.init_app(app)
    return app


@pytest.fixture
def ca_file(route: CertificateRoute, tmp_path: Any) -> str:
    path = tmp_path / "downstream-ca.pem"
    path.write_text(route.ca_pem)
    return str(path)


def test_mtls_session_presents_the_certificate_the_token_is_bound_to(
    bound_ias: IASEmulator, route: CertificateRoute, ca_file: str
) -> None:
    client = downstream_app(bound_ias, route.url, ca_file).test_client()

    answer = client.get("/call/on", headers=bearer(bound_ias.issue_public_token()))

    assert answer.json == {"status": 200}
    assert route.seen == [bound_ias.client_certificate_thumbprint]


def test_the_emulator_binds_exchanged_tokens_to_the_client_certificate(
    bound_ias: IASEmulator, route: CertificateRoute, ca_file: str
) -> None:
    app = downstream_app(bound_ias, route.url, ca_file)
    seen: dict[str, Any] = {}

    @app.get("/claims")
    def claims() -> dict[str, Any]:
        from flask_ias_pkce import current_token

        seen.update(current_token.claims)
        return {}

    app.test_client().get("/claims", headers=bearer(bound_ias.issue_public_token()))
    assert seen["cnf"] == {"x5t#S256": bound_ias.client_certificate_thumbprint}


def test_a_call_without_the_certificate_is_refused(
    bound_ias: IASEmulator, route: CertificateRoute, ca_file: str
) -> None:
    client = downstream_app(bound_ias, route.url, ca_file).test_client()

    answer = client.get("/call/off", headers=bearer(bound_ias.issue_public_token()))

    assert answer.json == {"status": "handshake refused"}
    assert route.seen == []


def test_plain_session_presents_it_for_a_bound_token(
    bound_ias: IASEmulator, route: CertificateRoute, ca_file: str
) -> None:
    client = downstream_app(bound_ias, route.url, ca_file).test_client()

    answer = client.get("/call/auto", headers=bearer(bound_ias.issue_public_token()))

    assert answer.json == {"status": 200}


def test_plain_session_presents_nothing_for_an_unbound_token(ca_file: str) -> None:
    with IASEmulator() as unbound:
        route = CertificateRoute(unbound)
        try:
            app = downstream_app(unbound, route.url, ca_file)
            # This route trusts the first emulator's CA only, so the CA file is rebuilt.
            with open(ca_file, "w") as handle:
                handle.write(route.ca_pem)
            client = app.test_client()
            auto = client.get("/call/auto", headers=bearer(unbound.issue_public_token()))
            forced = client.get("/call/on", headers=bearer(unbound.issue_public_token()))
        finally:
            route.close()

    assert auto.json == {"status": "handshake refused"}
    # Presented, but the token is not bound to it: the service refuses it.
    assert forced.json == {"status": 403}
    assert route.seen == [unbound.client_certificate_thumbprint]


def test_mtls_session_without_a_certificate_binding_is_an_error(ca_file: str) -> None:
    with IASEmulator(credential_type="SECRET") as ias:
        app = Flask("secret_host")
        app.config.update(emulator_config(ias))
        extension = IASPKCE()

        @app.get("/call")
        def call() -> str:
            with pytest.raises(RuntimeError, match="no client certificate"):
                extension.session(mtls=True).get("https://localhost:1/", verify=ca_file)
            return "ok"

        extension.init_app(app)
        answer = app.test_client().get("/call", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 200
