"""The public client's side, as a mobile or single-page app does it: sign in with the
authorization-code flow and PKCE (S256), no client secret.

In a real app the authorize step runs in a browser; here the emulator signs the user in
at once and redirects with the code, so the flow runs unattended.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

REDIRECT_URI = "http://localhost/callback"


class SignInError(RuntimeError):
    """A step of the sign-in failed; the message names the step and the status."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_login(
    issuer: str,
    client_id: str,
    *,
    verify: bool | str,
    redirect_uri: str = REDIRECT_URI,
    login_hint: str | None = None,
) -> dict[str, Any]:
    """Sign in at ``issuer`` as the public client ``client_id`` and return the token answer.

    The verifier stays here; IAS only ever sees its SHA-256 (the challenge) until the code
    is redeemed, so a stolen code is useless to whoever lacks the verifier.
    """
    verifier = secrets.token_urlsafe(48)
    challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    state = secrets.token_urlsafe(16)
    with requests.Session() as session:
        discovery = session.get(
            f"{issuer}/.well-known/openid-configuration", timeout=10, verify=verify
        )
        if discovery.status_code != 200:
            raise SignInError(f"discovery answered {discovery.status_code}")
        endpoints = discovery.json()
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": state,
            "scope": "openid email",
        }
        if login_hint:
            query["login_hint"] = login_hint
        authorize = session.get(
            endpoints["authorization_endpoint"],
            params=query,
            allow_redirects=False,
            timeout=10,
            verify=verify,
        )
        redirect = dict(parse_qsl(urlsplit(authorize.headers.get("Location", "")).query))
        if authorize.status_code != 302 or "code" not in redirect:
            raise SignInError(f"authorize answered {authorize.status_code}")
        if redirect.get("state") != state:
            raise SignInError("authorize answered with another state")
        answer = session.post(
            endpoints["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "client_id": client_id,
                "code": redirect["code"],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
            timeout=10,
            verify=verify,
        )
    if answer.status_code != 200:
        raise SignInError(f"the token endpoint answered {answer.status_code}")
    tokens: dict[str, Any] = answer.json()
    return tokens


def tampered(token: str, **claims: Any) -> str:
    """``token`` with ``claims`` changed and its original signature: what an attacker who
    edits a token gets. Every verifier must refuse it."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded.update(claims)
    new_payload = _b64url(json.dumps(decoded, separators=(",", ":")).encode())
    return f"{header}.{new_payload}.{signature}"
