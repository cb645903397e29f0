"""The public client in a browser: a page that signs in with PKCE and calls the API.

The blueprint serves a plain HTML and JavaScript page (no build step) under ``/app/``. The
page runs the authorization-code flow with PKCE S256 itself (Web Crypto), trades the code
at the IAS token endpoint across origins (IAS answers CORS for trusted domains), and calls
``/api/me`` with the public token; it shows the public token's ``aud`` next to the
exchanged token's, whether the API exchanged or served from its cache, and a tampered
token refused.

``python -m example_app --browser`` runs it against a local IAS emulator until Ctrl-C.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, send_from_directory

from flask_ias_pkce.testing import IASEmulator

from . import downstream
from .views import ias

_FILES = Path(__file__).parent / "public_client"

#: The page and its files; never asks for a token (the page is how one gets a token).
public_client = Blueprint("public_client", __name__, url_prefix="/app")
ias.exempt(public_client)


@public_client.get("/")
def page() -> Response:
    """The public client's page. Its scripts come from here only and talk to this API
    and to the IAS tenant only (``Content-Security-Policy``)."""
    answer = send_from_directory(_FILES, "index.html", max_age=0)
    issuer = current_app.config.get("EXAMPLE_IAS_URL", "")
    answer.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' {issuer}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    answer.headers["Referrer-Policy"] = "no-referrer"  # the code must not leak onwards
    return answer


@public_client.get("/<any('client.js', 'style.css'):name>")
def asset(name: str) -> Response:
    """The page's script and style sheet."""
    return send_from_directory(_FILES, name, max_age=0)


@public_client.get("/config.json")
def config() -> tuple[dict[str, Any], int]:
    """Where the page signs in: the IAS tenant and the public client's id."""
    issuer = current_app.config.get("EXAMPLE_IAS_URL")
    client_id = current_app.config.get("EXAMPLE_PUBLIC_CLIENT_ID")
    if not issuer or not client_id:
        description = "EXAMPLE_IAS_URL and EXAMPLE_PUBLIC_CLIENT_ID must be set"
        return {"error": "not_configured", "error_description": description}, 503
    return {
        "client_id": client_id,
        "authorization_endpoint": f"{issuer}/oauth2/authorize",
        "token_endpoint": f"{issuer}/oauth2/token",
        "api": "/api/me",
    }, 200


@dataclass(frozen=True)
class BrowserDemo:
    """A running browser demo: the page's URL and the emulator behind it."""

    page_url: str
    emulator: IASEmulator

    @property
    def spki_hash(self) -> str:
        """Base64 SHA-256 of the emulator's server key, for Chromium's
        ``--ignore-certificate-errors-spki-list`` (trust this one certificate only)."""
        certificate_file = Path(self.emulator.ca_file).with_name("server.pem")
        certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
        key = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(key).digest()).decode("ascii")


@contextlib.contextmanager
def browser_demo() -> Iterator[BrowserDemo]:
    """The emulator, the downstream service and the example app on free loopback ports,
    the app's origin allowed at the emulator; stopped on exit."""
    from .demo import _werkzeug, demo_environment

    with IASEmulator() as emulator:
        server = downstream.serve(downstream.for_emulator(emulator))
        try:
            environment = demo_environment(emulator, f"http://127.0.0.1:{server.server_port}")
            with _werkzeug(environment) as (api_url, _):
                port = urlsplit(api_url).port
                for origin in (api_url, f"http://localhost:{port}"):
                    emulator.allow_origin(origin)
                    # The page signs in with itself as the redirect URI.
                    emulator.allow_redirect_uri(f"{origin}/app/")
                yield BrowserDemo(f"{api_url}/app/", emulator)
        finally:
            server.shutdown()
            server.server_close()


def _print(line: str) -> None:
    print(line, flush=True)  # at once, also into a pipe: someone waits for the URL


def run_browser_demo(out: Callable[[str], None] = _print) -> int:
    """``python -m example_app --browser``: print the page's URL and serve until Ctrl-C."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.signal(number, _stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        with browser_demo() as demo:
            emulator = demo.emulator
            out("flask-ias-pkce browser demo: a public client signs in with PKCE in your browser")
            out(f"  open           {demo.page_url}")
            out(f"  IAS (emulated) {emulator.url}  users: {', '.join(emulator.users)}")
            out(f"  its CA file    {emulator.ca_file}")
            out("  The emulator's certificate is its own: accept it once at the IAS URL, or")
            out(f"  start Chromium with --ignore-certificate-errors-spki-list={demo.spki_hash}")
            out("  and a fresh --user-data-dir. Ctrl-C stops the demo.")
            while not stop.wait(0.5):
                pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    out("browser demo stopped")
    return 0
