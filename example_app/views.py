"""The example app's views: a public blueprint and a protected API.

``ias`` is made once, at import, and bound to each app by :func:`example_app.create_app`;
the blueprints are marked here, where they are defined, as a user of the library would.
"""

from __future__ import annotations

from typing import Any

import requests
from flask import Blueprint, current_app
from jose import jwt

from flask_ias_pkce import IASPKCE, current_token

ias = IASPKCE()

#: Never asks for a token.
public = Blueprint("public", __name__)
ias.exempt(public)

#: Every view needs a valid token (the extension's default, ``IAS_PKCE_PROTECT = "all"``).
api = Blueprint("api", __name__, url_prefix="/api")


@public.get("/health")
def health() -> dict[str, str]:
    """Liveness for the platform's health check: no token, no call to IAS."""
    return {"status": "ok"}


def _audiences(claims: Any) -> list[str]:
    value = claims.get("aud")
    return [value] if isinstance(value, str) else sorted(value or [])


@api.get("/me")
def me() -> dict[str, Any]:
    """Who is calling, the audience of the token the app now holds, and how it got it."""
    claims = current_token.claims
    if current_token.passthrough:
        served_by = "passthrough"
    else:
        served_by = "cache" if current_token.from_cache else "exchange"
    return {
        "sub": claims.get("sub"),
        "email": claims.get("email"),
        "aud": _audiences(claims),
        "served_by": served_by,
    }


@api.get("/admin")
@ias.require_groups("Admins")
def admin() -> dict[str, Any]:
    """Only for members of the IAS group ``Admins``; anyone else with a valid token gets
    403 ``insufficient_scope``. The check reads the cached token: no call to IAS."""
    return {"email": current_token.claims.get("email"), "groups": sorted(current_token.groups)}


@api.get("/orders")
def orders() -> tuple[dict[str, Any], int]:
    """Call the XSUAA-aware downstream service on the user's behalf with ``ias.session()``,
    which sends the exchanged token (the one whose ``aud`` holds the XSUAA client id)."""
    base_url = current_app.config.get("EXAMPLE_DOWNSTREAM_URL")
    if not base_url:
        return {"error": "no_downstream", "error_description": "EXAMPLE_DOWNSTREAM_URL unset"}, 503
    try:
        with ias.session() as session:
            answer = session.get(
                f"{base_url}/orders",
                timeout=(2.0, 5.0),
                verify=current_app.config.get("EXAMPLE_DOWNSTREAM_VERIFY", True),
            )
    except requests.RequestException:
        return {"error": "downstream_unreachable", "error_description": "no answer"}, 502
    if answer.status_code != 200:
        description = f"the downstream service answered {answer.status_code}"
        return {"error": "downstream_refused", "error_description": description}, 502
    body: dict[str, Any] = answer.json()
    return body, 200


@api.get("/xsuaa-me")
def xsuaa_me() -> dict[str, Any]:
    """The second hop: the user as XSUAA sees them, from the XSUAA token the library
    obtained (once per IAS token) and verified."""
    claims = jwt.get_unverified_claims(current_token.xsuaa_token())
    return {
        "user_name": claims.get("user_name"),
        "zid": claims.get("zid"),
        "aud": _audiences(claims),
        "scope": claims.get("scope"),
    }
