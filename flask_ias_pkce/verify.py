"""Local verification of IAS tokens: issuer trust, time, audience, and an RS256 signature
by a key chosen by ``kid`` from the issuer's JWKS.

Every check that needs no network runs first, on the token's unverified contents, so a
token that could never be valid costs no call to IAS. The signature check comes last and
decides: nothing read from the token is trusted before it passed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from jose import jwk, jws
from jose.backends import RSAKey
from jose.backends.base import Key
from jose.exceptions import JOSEError

from . import http
from .constants import (
    ALGORITHM,
    JWKS_FAILURE_BACKOFF_SECONDS,
    JWKS_REFETCH_INTERVAL_SECONDS,
    JWKS_TTL_SECONDS,
)
from .errors import IASPKCEError, IASRefused, IASUnavailable, InvalidToken

logger = logging.getLogger("flask_ias_pkce")

_LABEL = re.compile(r"[a-z0-9-]{1,63}")
#: What a ``kid`` (and a tenant id we forward in a header) may look like.
KID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")
#: Header parameters whose meaning we would have to understand (RFC 7515 4.1.11).
_REFUSED_HEADERS = frozenset({"crit"})
#: At most this many key sets (issuer, tenant, client) are kept in memory.
_MAX_KEY_SETS = 256
#: New key sets made per issuer and minute, at most (each costs calls to IAS).
NEW_KEY_SETS_PER_MINUTE = 30


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _canonical(segment: str) -> bool:
    # The last character of a base64url segment can carry unused bits: without this, one
    # token could be written several ways, each a separate cache key and exchange.
    try:
        decoded = _b64decode(segment)
    except (ValueError, binascii.Error):
        return False
    return base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() == segment


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise InvalidToken("The token is not a well-formed JWT", reason="malformed_jwt")
    return value


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
    # bool is an int in Python; a JSON true is no timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("The token's time claims are malformed", reason=f"{name}_malformed")
    return float(value)


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


class KeySet:
    """The signing keys of one source (an issuer's JWKS, XSUAA's token_keys), by ``kid``.

    Keys are kept for :data:`~flask_ias_pkce.constants.JWKS_TTL_SECONDS`; an unknown
    ``kid`` fetches them again, at most once per
    :data:`~flask_ias_pkce.constants.JWKS_REFETCH_INTERVAL_SECONDS`, so that a key rotation
    is picked up at once while a flood of made-up ``kid`` values is not forwarded to the
    source. When a refresh fails, the keys we had go on serving; while the source has never
    served keys, a failure is answered again for
    :data:`~flask_ias_pkce.constants.JWKS_FAILURE_BACKOFF_SECONDS` without a call.
    """

    __slots__ = ("_failure", "_fetched_at", "_keys", "_last_refetch", "_lock", "_name")

    def __init__(self, name: str) -> None:
        self._name = name  # for logs
        self._keys: dict[str, Key] = {}
        self._fetched_at = float("-inf")
        self._last_refetch = float("-inf")
        self._failure: tuple[float, IASPKCEError] | None = None
        self._lock = threading.Lock()

    def key(self, kid: str, fetch: Callable[[], dict[str, Key]], now: float) -> Key | None:
        """The key ``kid``, fetching the set with ``fetch`` when it is stale or lacks it."""
        key = self._keys.get(kid)
        if key is not None and now - self._fetched_at < JWKS_TTL_SECONDS:
            return key
        with self._lock:
            key = self._keys.get(kid)
            stale = now - self._fetched_at >= JWKS_TTL_SECONDS
            if key is not None and not stale:
                return key
            # A stale set is always refreshed; an unknown kid in a fresh set refreshes it at
            # most once per interval, so made-up kids cannot make us hammer the source.
            if stale or now - self._last_refetch >= JWKS_REFETCH_INTERVAL_SECONDS:
                if not stale:
                    self._last_refetch = now
                self._refresh(fetch, now)
            return self._keys.get(kid)

    def _refresh(self, fetch: Callable[[], dict[str, Key]], now: float) -> None:
        if not self._keys and self._failure is not None:
            failed_at, error = self._failure
            if now - failed_at < JWKS_FAILURE_BACKOFF_SECONDS:
                # The source has never given us keys and failed a moment ago: answer with
                # that failure instead of calling it again for every request.
                raise copy.copy(error)
        try:
            self._keys = fetch()
            self._fetched_at = now
            self._failure = None
        except Exception as error:
            if not self._keys:
                if isinstance(error, IASPKCEError):
                    self._failure = (now, error)
                raise
            # Serve the known keys and try again after one interval, not on every request
            # while the source is down.
            self._fetched_at = now - JWKS_TTL_SECONDS + JWKS_REFETCH_INTERVAL_SECONDS
            logger.warning("Key refresh of %s failed; keeping the known keys", self._name)


def rsa_signing_keys(entries: list[Any], source: str) -> dict[str, Key]:
    """The usable RS256 signing keys among JWK ``entries``, by ``kid``; others are skipped.

    An entry may carry the key as JWK numbers (``n``, ``e``) or, as XSUAA's do, as a PEM
    ``value``.
    """
    keys: dict[str, Key] = {}
    for entry in entries:
        if (
            isinstance(entry, dict)
            and entry.get("kty") == "RSA"
            and entry.get("use", "sig") == "sig"
            and entry.get("alg", ALGORITHM) == ALGORITHM
            and isinstance(entry.get("kid"), str)
        ):
            material = entry if "n" in entry and "e" in entry else entry.get("value")
            try:
                keys[entry["kid"]] = jwk.construct(material, ALGORITHM)
            except (JOSEError, ValueError, TypeError):
                logger.warning("The keys of %s hold an unusable key; skipped", source)
    return keys


class JWKSCache:
    """The signing keys of each trusted issuer, found through OIDC discovery.

    IAS answers its JWKS per tenant and client (``x-app_tid``, ``x-azp``) and refuses one
    that the client may not see, so there is one :class:`KeySet` per issuer, tenant and
    ``azp``: a key set fetched for one tenant never vouches for another's token, and a
    fetch that fails for one never holds up the others. The sets are kept least recently
    used first out; new ones are made at most :data:`NEW_KEY_SETS_PER_MINUTE` times a
    minute per issuer, since an unsigned token can name any tenant.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        policy: http.HttpPolicy,
        client_id: str,
        clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._policy = policy
        self._client_id = client_id
        self._clock = clock
        self._key_sets: OrderedDict[tuple[str, str | None, str | None], KeySet] = OrderedDict()
        self._created: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, issuer: str, kid: str, claims: Mapping[str, Any]) -> Key | None:
        """The key ``kid`` of ``issuer`` (an origin that passed the trust check) for a token
        with ``claims``, or None."""
        headers = self.headers(claims)
        scope = (issuer, headers.get("x-app_tid"), headers.get("x-azp"))
        return self._key_set(scope).key(kid, lambda: self._fetch(issuer, headers), self._clock())

    def _key_set(self, scope: tuple[str, str | None, str | None]) -> KeySet:
        with self._lock:
            key_set = self._key_sets.get(scope)
            if key_set is not None:
                self._key_sets.move_to_end(scope)
                return key_set
            self._count_new(scope[0])
            if len(self._key_sets) >= _MAX_KEY_SETS:
                self._key_sets.popitem(last=False)
            key_set = self._key_sets[scope] = KeySet(scope[0])
            return key_set

    def _count_new(self, issuer: str) -> None:
        now = self._clock()
        created = self._created.get(issuer)
        if created is None:
            if len(self._created) >= _MAX_KEY_SETS:
                self._created.popitem(last=False)
            created = self._created[issuer] = deque(maxlen=NEW_KEY_SETS_PER_MINUTE)
        if len(created) == NEW_KEY_SETS_PER_MINUTE and now - created[0] < 60:
            logger.warning("Too many new tenants or clients for %s; refused for now", issuer)
            raise IASUnavailable(
                "Too many new tenants at once; try again shortly",
                reason="jwks_new_key_sets_limited",
                retry_after=int(60 - (now - created[0])) + 1,
            )
        created.append(now)

    def _fetch(self, issuer: str, headers: Mapping[str, str]) -> dict[str, Key]:
        return self.fetch_keys(issuer, self.discover(issuer, headers), headers)

    def headers(self, claims: Mapping[str, Any]) -> dict[str, str]:
        """The headers of discovery and JWKS calls for a token with ``claims``.

        IAS answers the JWKS per client and tenant: it wants to know who asks.
        """
        headers = {"x-client_id": self._client_id}
        for header, claim in (("x-app_tid", "app_tid"), ("x-azp", "azp")):
            value = claims.get(claim)
            if isinstance(value, str) and KID_PATTERN.fullmatch(value):
                headers[header] = value
        return headers

    def discover(self, issuer: str, headers: Mapping[str, str]) -> str:
        """The ``jwks_uri`` of ``issuer``'s discovery document (no caching; used by the
        key cache and by ``flask ias-pkce check``)."""
        discovery = http.call(
            self._session,
            "GET",
            f"{issuer}/.well-known/openid-configuration",
            policy=self._policy,
            what="discovery",
            headers=headers,
        )
        document = discovery.json() if discovery.status == 200 else None
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(issuer + "/"):
            # The keys must come from the issuer we trust, nowhere else.
            raise IASRefused(
                "The identity service's discovery document is unusable", reason="discovery_bad"
            )
        return jwks_uri

    def fetch_keys(self, issuer: str, jwks_uri: str, headers: Mapping[str, str]) -> dict[str, Key]:
        """The usable RS256 signing keys at ``jwks_uri``, by ``kid`` (no caching)."""
        answer = http.call(
            self._session, "GET", jwks_uri, policy=self._policy, what="jwks", headers=headers
        )
        document = answer.json() if answer.status == 200 else None
        if answer.status == 400:
            # IAS says this client may not see the tenant's keys: the token is not for us.
            raise InvalidToken("The token is not meant for this application", reason="jwks_400")
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise IASRefused("The identity service's JWKS is unusable", reason="jwks_bad")
        keys = rsa_signing_keys(entries, issuer)
        if not keys:
            raise IASRefused("The identity service's JWKS has no usable key", reason="jwks_empty")
        logger.info("Fetched %d signing keys of %s", len(keys), issuer)
        return keys


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
        header_segment, payload_segment, signature_segment = token.split(".")
        if not all(map(_canonical, (header_segment, payload_segment, signature_segment))):
            raise InvalidToken("The token is not a well-formed JWT", reason="not_canonical")
        header = _json_object(header_segment)
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("The token's algorithm is not allowed", reason="alg_not_allowed")
        if _REFUSED_HEADERS & header.keys():
            raise InvalidToken("The token has critical extensions", reason="crit_header")
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise InvalidToken("The token's key id is missing or malformed", reason="kid_bad")
        claims = _json_object(payload_segment)
        origin = issuer_origin(claims.get("ias_iss", claims.get("iss")), self._domains, self._ports)
        if issuer is not None and origin != issuer:
            raise InvalidToken("The token's issuer is not trusted", reason="issuer_mismatch")
        expires = check_times(claims, now=self._clock(), leeway=self._leeway)
        if not audiences(claims) & set(audience):
            raise InvalidToken("The token is not meant for this application", reason="audience")
        key = self._keys.key(origin, kid, claims)
        if key is None:
            raise InvalidToken("The token's signing key is unknown", reason="kid_unknown")
        try:
            jws.verify(token, key, algorithms=[ALGORITHM])
        except JOSEError:
            raise InvalidToken("The token's signature is invalid", reason="signature") from None
        return VerifiedToken(claims, origin, expires)
