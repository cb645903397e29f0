"""A tiny XSUAA-aware service for the demo: it serves orders only to tokens whose ``aud``
holds the XSUAA client id, signed by a key of a trusted issuer.

This is what a service built on SAP's security libraries checks. A token straight from
the public client fails here (its ``aud`` is the public client); the token the example
app obtained by the exchange passes. That is the whole point of the exchange.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import requests
from flask import Flask, request
from jose import jwt
from jose.exceptions import JOSEError
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from flask_ias_pkce.testing import IASEmulator

_ORDERS = [
    {"id": "4711", "item": "Espresso machine", "status": "shipped"},
    {"id": "4712", "item": "Milk frother", "status": "open"},
]


class _KeySets:
    """The signing keys of each trusted issuer, fetched when a kid is unknown."""

    def __init__(self, jwks_urls: Mapping[str, str], verify: bool | str) -> None:
        self._jwks_urls = dict(jwks_urls)
        self._verify = verify
        self._keys: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def key(self, issuer: str, kid: str) -> dict[str, Any] | None:
        with self._lock:
            keys = self._keys.get(issuer, {})
            if kid not in keys:
                answer = requests.get(self._jwks_urls[issuer], timeout=5, verify=self._verify)
                answer.raise_for_status()
                keys = {key["kid"]: key for key in answer.json()["keys"] if "kid" in key}
                self._keys[issuer] = keys
            return keys.get(kid)


def create_downstream(
    *, audience: str, jwks_urls: Mapping[str, str], verify: bool | str, leeway: int = 60
) -> Flask:
    """The downstream app.

    :param audience: the XSUAA client id that every accepted token must carry in ``aud``.
    :param jwks_urls: trusted issuers (exact ``iss`` values) and where their keys are.
    :param verify: TLS verification of the key fetches (the emulator's CA file).
    """
    app = Flask("downstream")
    key_sets = _KeySets(jwks_urls, verify)

    def refuse(description: str) -> tuple[dict[str, str], int, dict[str, str]]:
        challenge = (
            f'Bearer realm="downstream", error="invalid_token", error_description="{description}"'
        )
        body = {"error": "invalid_token", "error_description": description}
        return body, 401, {"WWW-Authenticate": challenge}

    @app.get("/orders")
    def orders() -> Any:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return refuse("a Bearer token is required")
        try:
            issuer = jwt.get_unverified_claims(token).get("iss")
            kid = jwt.get_unverified_header(token).get("kid")
            if issuer not in jwks_urls or not isinstance(kid, str):
                return refuse("untrusted issuer")
            key = key_sets.key(issuer, kid)
            if key is None:
                return refuse("unknown signing key")
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=audience,
                issuer=issuer,
                options={"leeway": leeway, "verify_at_hash": False},
            )
        except JOSEError:
            # The audience check fails here for a token without the XSUAA client id.
            return refuse(f"token rejected: aud must hold {audience}")
        return {
            "orders": _ORDERS,
            "for": claims.get("email") or claims.get("user_name"),
            "accepted_aud": audience,
        }

    return app


def for_emulator(emulator: IASEmulator) -> Flask:
    """The downstream app trusting ``emulator``'s IAS and XSUAA keys."""
    return create_downstream(
        audience=emulator.xsuaa_client_id,
        jwks_urls={
            emulator.issuer: emulator.url + "/oauth2/certs",
            emulator.xsuaa_issuer: f"https://{emulator.xsuaa_binding['uaadomain']}/token_keys",
        },
        verify=emulator.ca_file,
    )


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without its access log, which would clutter the demo's account."""

    def log(self, type: str, message: str, *args: Any) -> None:
        """Log nothing."""


def serve(app: Flask) -> BaseWSGIServer:
    """Serve ``app`` on a free loopback port in a daemon thread; ``shutdown()`` stops it."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    threading.Thread(target=server.serve_forever, name="downstream", daemon=True).start()
    return server
