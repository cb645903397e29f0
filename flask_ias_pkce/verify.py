"""Local verification of IAS and XSUAA tokens: the form of the JWS, issuer trust, time,
audience, and an RS256 signature by a key chosen by ``kid`` (from :mod:`.keys`).

Every check that needs no network runs first, on the token's unverified contents, so a
token that could never be valid costs no call to IAS. The signature check comes last and
decides: nothing read from the token is trusted before it passed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jose import jws
from jose.backends import RSAKey
from jose.backends.base import Key
from jose.exceptions import JOSEError

from . import transport
from .constants import (
    ALGORITHM,
)
from .errors import InvalidToken
from .keys import KID_PATTERN, JWKSCache, b64url_decode

logger = logging.getLogger("flask_ias_pkce")

_LABEL = re.compile(r"[a-z0-9-]{1,63}")
#: Header parameters whose meaning we would have to understand (RFC 7515 4.1.11).
_REFUSED_HEADERS = frozenset({"crit"})


def _canonical(segment: str) -> bool:
    # The last character of a base64url segment can carry unused bits: without this, one
    # token could be written several ways, each a separate cache key and exchange.
    try:
        decoded = b64url_decode(segment)
    except (ValueError, binascii.Error):
        return False
    return base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() == segment


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = transport.loads_json(b64url_decode(segment))
    except (ValueError, binascii.Error):
        value = None
    if not isinstance(value, dict):
        raise InvalidToken("The token is not a well-formed JWT", reason="malformed_jwt")
    return value


@dataclass(frozen=True, slots=True)
class SignedToken:
    """A compact JWS whose form passed every check that needs no key. Nothing in it is
    trusted until :func:`check_signature` passed with the key of :attr:`kid`."""

    kid: str
    claims: dict[str, Any]


def read_jws(token: str) -> SignedToken:
    """Read a compact JWS (three parts, as the bearer shape check and the answers' token
    checks guarantee) for verification, the same way for IAS and XSUAA tokens.

    Refused with :class:`~flask_ias_pkce.errors.InvalidToken`: a segment that is not
    canonical base64url; a header or payload that is no JSON object (hostile nesting,
    ``NaN`` and ``Infinity`` included); an ``alg`` other than RS256; a ``crit`` header
    (RFC 7515 4.1.11: we understand no extension); a missing or malformed ``kid``.
    """
    segments = token.split(".")
    if not all(map(_canonical, segments)):
        raise InvalidToken("The token is not a well-formed JWT", reason="not_canonical")
    header_segment, payload_segment, _ = segments
    header = _json_object(header_segment)
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("The token's algorithm is not allowed", reason="alg_not_allowed")
    if _REFUSED_HEADERS & header.keys():
        raise InvalidToken("The token has critical extensions", reason="crit_header")
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise InvalidToken("The token's key id is missing or malformed", reason="kid_bad")
    return SignedToken(kid, _json_object(payload_segment))


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS without any check; only for tokens verified earlier."""
    return _json_object(token.split(".")[1])


def issuer_origin(
    issuer: object, domains: Collection[str], ports: Collection[int | None] = (None, 443)
) -> str:
    """Return ``https://host[:port]`` of a trusted issuer, or raise ``InvalidToken``.

    Trusted: https, no user info, query or fragment, no path but ``/``, a host equal to one
    of the binding's ``domains`` or exactly one label below it (the tenant), and no port
    but one of ``ports`` (the default, 443, and the binding URL's own): the host decides
    trust, and a port of the token's choosing must not point our calls anywhere else.
    """
    if not isinstance(issuer, str) or len(issuer) > 512:
        raise InvalidToken("The token's issuer is not trusted", reason="issuer_untrusted")
    try:
        parts = urlsplit(issuer)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        raise InvalidToken("The token's issuer is not trusted", reason="issuer_untrusted") from None
    if (
        parts.scheme != "https"
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or parts.path not in ("", "/")
        or port not in ports
        or not _host_trusted(host, domains)
    ):
        raise InvalidToken("The token's issuer is not trusted", reason="issuer_untrusted")
    return f"https://{host}" + (f":{port}" if port not in (None, 443) else "")


def _host_trusted(host: str, domains: Collection[str]) -> bool:
    for domain in domains:
        if host == domain:
            return True
        label, dot, rest = host.partition(".")
        if dot and rest == domain and _LABEL.fullmatch(label):
            return True
    return False


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python; a JSON true is no timestamp. A number too large for a float
    # (a 400-digit integer, 1e999) or not finite is no timestamp either.
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise InvalidToken("The token's time claims are malformed", reason=f"{name}_malformed")


def check_times(claims: Mapping[str, Any], *, now: float, leeway: float) -> float:
    """Check ``exp`` (required), ``nbf`` and ``iat`` with ``leeway``; return ``exp``."""
    expires = _number(claims, "exp")
    if expires is None:
        raise InvalidToken("The token has no expiry", reason="exp_missing")
    if expires + leeway <= now:
        raise InvalidToken("The token has expired", reason="expired")
    not_before = _number(claims, "nbf")
    if not_before is not None and not_before - leeway > now:
        raise InvalidToken("The token is not valid yet", reason="not_yet_valid")
    issued = _number(claims, "iat")
    if issued is not None and issued - leeway > now:
        raise InvalidToken("The token was issued in the future", reason="iat_in_future")
    return expires


def audiences(claims: Mapping[str, Any]) -> frozenset[str]:
    """``aud`` as a set (RFC 7519 allows a string or a list of strings)."""
    value = claims.get("aud")
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return frozenset()


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature and claims passed every check."""

    claims: dict[str, Any]
    issuer: str  #: ``https://host[:port]`` of the trusted issuer
    expires_at: float


class TokenVerifier:
    """Verifies IAS tokens: issuer, times, audience, then the RS256 signature."""

    def __init__(
        self,
        keys: JWKSCache,
        *,
        domains: Collection[str],
        leeway: float,
        clock: Callable[[], float],
        ports: Collection[int | None] = (None, 443),
    ) -> None:
        if RSAKey.__module__ != "jose.backends.cryptography_backend":
            # python-jose's pure-Python RSA fallback has had timing side channels.
            raise RuntimeError("python-jose must use the cryptography backend")
        self._keys = keys
        self._domains = tuple(domain.lower() for domain in domains)
        self._ports = frozenset(ports)
        #: The ports an issuer may name (the default, 443, the binding URL's own).
        self.ports = self._ports
        self._leeway = leeway
        self._clock = clock

    def verify(
        self, token: str, *, audience: Collection[str], issuer: str | None = None
    ) -> VerifiedToken:
        """Verify ``token`` and return its claims.

        ``audience``: ``aud`` must hold at least one of these. ``issuer``: when given,
        the token must come from exactly this origin (for the exchanged token).
        Raises :class:`~flask_ias_pkce.errors.InvalidToken` for any failed check.
        """
        signed = read_jws(token)
        claims = signed.claims
        origin = issuer_origin(claims.get("ias_iss", claims.get("iss")), self._domains, self._ports)
        if issuer is not None and origin != issuer:
            raise InvalidToken("The token's issuer is not trusted", reason="issuer_mismatch")
        expires = check_times(claims, now=self._clock(), leeway=self._leeway)
        if not audiences(claims) & set(audience):
            raise InvalidToken("The token is not meant for this application", reason="audience")
        check_signature(token, self._keys.issuer_key(origin, signed.kid))
        self._keys.proven(origin)
        # Signed by the issuer: now, and only now, ask IAS whether this client may accept
        # the token's tenant, and let the keys it gives for that tenant decide.
        check_signature(token, self._keys.tenant_key(origin, signed.kid, claims))
        return VerifiedToken(claims, origin, expires)


def check_signature(token: str, key: Key | None) -> None:
    """Raise :class:`~flask_ias_pkce.errors.InvalidToken` unless ``key`` (found by the
    token's ``kid``; ``None``: there is none) made the token's RS256 signature."""
    if key is None:
        raise InvalidToken("The token's signing key is unknown", reason="kid_unknown")
    try:
        jws.verify(token, key, algorithms=[ALGORITHM])
    except JOSEError:
        raise InvalidToken("The token's signature is invalid", reason="signature") from None
