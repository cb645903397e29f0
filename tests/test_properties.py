"""Whatever a client puts in ``Authorization``, the answer is a 400 or a 401, fast, never a
500, and never echoes the token; the Bearer parser fails only with our own errors."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_ias_pkce.bearer import parse_bearer
from flask_ias_pkce.errors import InvalidRequest, InvalidToken, MissingToken
from flask_ias_pkce.testing import IASEmulator

from helpers import build_app

#: The werkzeug test client refuses CR and LF in a header value; anything else goes.
HEADER_TEXT = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=300
)
LATIN_1_TEXT = st.text(
    st.characters(max_codepoint=0xFF, blacklist_characters="\r\n"), min_size=1, max_size=300
)
B64URL_SEGMENT = st.from_regex(r"[A-Za-z0-9_\-]{0,80}", fullmatch=True)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def b64url(value: Any) -> str:
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jws_like(ias: IASEmulator) -> st.SearchStrategy[str]:
    """Three-part tokens with JSON header and payload near ours: right or wrong ``alg``,
    known or made-up ``kid``, our issuer and audience or anything else, any time claims."""
    header = st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["RS256", "none", "HS256", "RS512", "rs256"]) | JSON_VALUE,
            "kid": st.just(ias.current_kid) | JSON_VALUE,
            "typ": st.just("JWT"),
            "crit": JSON_VALUE,
            "jku": st.text(max_size=30),
        },
    )
    payload = st.fixed_dictionaries(
        {},
        optional={
            "iss": st.sampled_from([ias.issuer, "https://localhost", "https://evil.example"])
            | JSON_VALUE,
            "ias_iss": JSON_VALUE,
            "aud": st.just(ias.public_client_id) | st.just([ias.xsuaa_client_id]) | JSON_VALUE,
            "exp": st.just(int(time.time()) + 600) | JSON_VALUE,
            "nbf": JSON_VALUE,
            "iat": JSON_VALUE,
            "sub": JSON_VALUE,
        },
    )
    return st.builds(
        lambda h, p, signature: f"{b64url(h)}.{b64url(p)}.{signature}",
        header,
        payload,
        B64URL_SEGMENT,
    )


def tampered(ias: IASEmulator) -> st.SearchStrategy[str]:
    """A real token of ours with one claim changed and its signature kept: it passes
    every check up to the signature, keys fetched from IAS included."""
    header_segment, payload_segment, signature = ias.issue_public_token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload_segment + "=="))

    def forge(name: str, value: Any) -> str:
        return f"{header_segment}.{b64url({**claims, name: value})}.{signature}"

    return st.builds(forge, st.sampled_from(sorted(claims)), JSON_VALUE | st.text())


def test_any_authorization_header_is_answered_400_or_401() -> None:
    with IASEmulator() as ias:
        client = build_app(ias).test_client()

        @PROPERTY_SETTINGS
        @given(value=HEADER_TEXT | LATIN_1_TEXT.map(lambda text: "Bearer " + text))
        def check(value: str) -> None:
            answer = client.get("/api/me", headers={"Authorization": value})

            assert answer.status_code in (400, 401)
            assert answer.json is not None
            assert answer.json["error"] in ("invalid_request", "invalid_token", "unauthorized")
            assert answer.headers["WWW-Authenticate"].startswith("Bearer ")

        check()
        assert ias.exchanges == []


def test_any_token_bytes_are_answered_400_or_401_without_echo() -> None:
    with IASEmulator() as ias:
        client = build_app(ias).test_client()

        @PROPERTY_SETTINGS
        @given(
            token=st.binary(min_size=1, max_size=400).map(lambda raw: raw.decode("latin-1"))
            | st.from_regex(r"[A-Za-z0-9\-._~+/]{1,200}=*", fullmatch=True)
            | jws_like(ias)
            | tampered(ias)
        )
        def check(token: str) -> None:
            # A header cannot carry CR or LF; anything else the client may send.
            value = "Bearer " + token.replace("\r", "").replace("\n", "")
            answer = client.get("/api/me", headers={"Authorization": value})

            assert answer.status_code in (400, 401)
            if len(token) >= 20:
                assert token not in answer.get_data(as_text=True)
                assert token not in answer.headers["WWW-Authenticate"]

        check()
        # None of them was good enough to be sent to IAS for an exchange.
        assert ias.exchanges == []


@settings(max_examples=300, deadline=2000)
@given(
    value=st.none() | st.text() | st.text().map(lambda text: "Bearer " + text),
    max_bytes=st.integers(min_value=256, max_value=65536),
    token_in_query=st.booleans(),
)
def test_bearer_parser_fails_only_with_our_errors(
    value: str | None, max_bytes: int, token_in_query: bool
) -> None:
    try:
        token = parse_bearer(value, max_bytes=max_bytes, token_in_query=token_in_query)
    except (MissingToken, InvalidRequest, InvalidToken):
        return
    # What it lets through is a compact JWS taken from the header, and within the limit.
    assert value is not None
    assert token in value
    assert _COMPACT_JWS.fullmatch(token)
    assert len(token) <= max_bytes
    assert not token_in_query
