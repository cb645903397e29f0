"""Taking the Bearer token out of a request (RFC 6750 section 2.1).

Only the ``Authorization`` header is read. RFC 6750 also allows a form field or a query
parameter, but a token in a URL ends up in access logs and browser history, so a request
that tries it is refused rather than silently ignored.
"""

from __future__ import annotations

import re

from .errors import InvalidRequest, InvalidToken, MissingToken

# RFC 6750: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# A JWS in compact serialization: three base64url parts, the signature possibly empty (which
# the signature check refuses later; here we only tell shapes apart).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def parse_bearer(authorization: str | None, *, max_bytes: int, token_in_query: bool = False) -> str:
    """Return the Bearer token of an ``Authorization`` header value, its shape checked.

    Raises :class:`~flask_ias_pkce.errors.MissingToken` when there are no Bearer
    credentials, :class:`~flask_ias_pkce.errors.InvalidRequest` when the header is
    malformed, and :class:`~flask_ias_pkce.errors.InvalidToken` when the value is
    grammatical but cannot be a signed JWT (a JWE, say). Several ``Authorization``
    headers reach a WSGI app joined by commas, which the grammar refuses.
    """
    value = bearer_credentials(authorization, max_bytes=max_bytes, token_in_query=token_in_query)
    check_token_shape(value)
    return value


def bearer_credentials(
    authorization: str | None, *, max_bytes: int, token_in_query: bool = False
) -> str:
    """The credentials of a Bearer ``Authorization`` header, not yet checked for shape.

    The request hook looks a token up in the cache with this and checks its shape
    (:func:`check_token_shape`) only on a miss: a cached entry was made for exactly this
    string, which passed every check then.
    """
    if authorization is None or not authorization.strip():
        if token_in_query:
            raise InvalidRequest(
                "Send the token in the Authorization header, not in the URI",
                reason="token_in_query",
            )
        raise MissingToken("Bearer token required", reason="missing_token")
    # Refuse oversize input before any parsing: the cost of a request stays bounded.
    if len(authorization) > max_bytes + len("Bearer "):
        raise InvalidRequest("The Authorization header is too long", reason="token_too_long")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("Bearer token required", reason="other_scheme")
    value = value.strip(" ")
    if not value:
        raise InvalidRequest("The Bearer token is empty", reason="empty_token")
    if token_in_query:
        raise InvalidRequest(
            "Send the token in one place only (RFC 6750 section 2)", reason="several_tokens"
        )
    return value


def check_token_shape(value: str) -> None:
    """Raise unless ``value`` is a compact JWS: 400 outside RFC 6750's ``b64token``
    grammar, 401 for a grammatical value that is no signed JWT."""
    # The usual case first: one pass of one pattern. A compact JWS is also a b64token.
    if _COMPACT_JWS.fullmatch(value):
        return
    if not _B64TOKEN.fullmatch(value):
        raise InvalidRequest(
            "The Bearer credentials are malformed (RFC 6750 b64token)",
            reason="malformed_token",
        )
    raise InvalidToken("The token is not a signed JWT", reason="not_a_jws")
