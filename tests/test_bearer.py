"""Bearer parsing on its own (RFC 6750 section 2.1): no Flask, no emulator, one table."""

from __future__ import annotations

import pytest

from flask_ias_pkce.bearer import bearer_credentials, check_token_shape, parse_bearer
from flask_ias_pkce.errors import IASPKCEError, InvalidRequest, InvalidToken, MissingToken

JWS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
MAX = 256

#: (Authorization value, the token in the URI too?, the token, or the error and its reason)
CASES: list[tuple[str | None, bool, str | tuple[type[IASPKCEError], str]]] = [
    (f"Bearer {JWS}", False, JWS),
    (f"bearer {JWS}", False, JWS),
    (f"BEARER {JWS}", False, JWS),
    (f"  Bearer   {JWS}  ", False, JWS),
    ("Bearer a.b.", False, "a.b."),  # an empty signature is refused by the verifier
    (None, False, (MissingToken, "missing_token")),
    ("", False, (MissingToken, "missing_token")),
    ("   ", False, (MissingToken, "missing_token")),
    (None, True, (InvalidRequest, "token_in_query")),
    (f"Bearer {JWS}", True, (InvalidRequest, "several_tokens")),
    (f"Basic {JWS}", False, (MissingToken, "other_scheme")),
    ("Bearer", False, (InvalidRequest, "empty_token")),
    ("Bearer    ", False, (InvalidRequest, "empty_token")),
    ("Bearer " + "a" * (MAX + 1), False, (InvalidRequest, "token_too_long")),
    (f"Bearer {JWS},{JWS}", False, (InvalidRequest, "malformed_token")),
    (f"Bearer {JWS} {JWS}", False, (InvalidRequest, "malformed_token")),
    ("Bearer a.b.c\x00", False, (InvalidRequest, "malformed_token")),
    ("Bearer é.b.c", False, (InvalidRequest, "malformed_token")),
    ("Bearer abc", False, (InvalidToken, "not_a_jws")),
    ("Bearer a.b.c.d.e", False, (InvalidToken, "not_a_jws")),  # a JWE
    ("Bearer a+b.c.d", False, (InvalidToken, "not_a_jws")),  # base64, not base64url
    ("Bearer abc==", False, (InvalidToken, "not_a_jws")),
]


@pytest.mark.parametrize(("authorization", "in_query", "expected"), CASES)
def test_parse_bearer(
    authorization: str | None,
    in_query: bool,
    expected: str | tuple[type[IASPKCEError], str],
) -> None:
    if isinstance(expected, str):
        assert parse_bearer(authorization, max_bytes=MAX, token_in_query=in_query) == expected
        return
    error, reason = expected
    with pytest.raises(error) as raised:
        parse_bearer(authorization, max_bytes=MAX, token_in_query=in_query)
    assert type(raised.value) is error
    assert raised.value.reason == reason
    # No part of what was sent is echoed back.
    assert JWS not in str(raised.value)
    assert "a" * 20 not in str(raised.value)


@pytest.mark.parametrize("value", ["abc", "a.b.c.d.e", "a..", "%%%"])
def test_shape_is_checked_apart_from_the_header(value: str) -> None:
    # The hook looks the credentials up first and checks the shape on a miss only.
    assert bearer_credentials(f"Bearer {value}", max_bytes=MAX) == value
    with pytest.raises((InvalidRequest, InvalidToken)):
        check_token_shape(value)
