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
import logging
import math
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
    JWKS_MAX_TTL_SECONDS,
    JWKS_MIN_TTL_SECONDS,
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
#: Fetches of the keys of issuers that have not yet verified a token (discovery and JWKS,
#: whatever the issuer), at most this many a minute in all: an unsigned token can name any
#: tenant under a trusted domain, so this is all that forged tokens can cost IAS.
UNPROVEN_FETCHES_PER_MINUTE = 10
#: Issuers kept that have not yet verified a token (their failures are remembered here).
_MAX_UNPROVEN_ISSUERS = 64
#: Issuers kept whose keys have verified a token; only another such issuer evicts one.
_MAX_PROVEN_ISSUERS = 1024
#: Tenant and client key sets kept; each is made only for a token whose signature passed.
_MAX_TENANT_SETS = 4096
#: RSA moduli under this many bits are ignored (RFC 7518 section 3.3).
MIN_RSA_BITS = 2048
#: A modulus or exponent longer than this is no real key: refused before it is decoded.
MAX_RSA_BITS = 8192

#: Keys are refreshed in the background once this share of their lifetime has passed.
_REFRESH_AHEAD = 0.75


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
        value = http.loads_json(_b64decode(segment))
    except (ValueError, binascii.Error):
        value = None
    if not isinstance(value, dict):
        raise InvalidToken("The token is not a well-formed JWT", reason="malformed_jwt")
    return value


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS without any check; only for tokens verified earlier."""
    return _json_object(token.split(".")[1])


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, parsed by our rules (depth, no NaN), unchecked.

    :raises ~flask_ias_pkce.errors.InvalidToken: not three segments of JSON objects.
    """
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken("The token is not a well-formed JWT", reason="malformed_jwt")
    return _json_object(segments[0])


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


class FetchedKeys(dict[str, Key]):
    """Signing keys by ``kid`` as a source served them, with the ``max-age`` of its
    ``Cache-Control`` when it sent one."""

    max_age: float | None = None


def cache_max_age(headers: Mapping[str, str]) -> float | None:
    """The ``max-age`` (seconds) of a ``Cache-Control`` header, or ``None``.

    Only ``max-age`` says how long keys stay good. ``no-store`` and ``no-cache`` are not
    read as "ask on every request": servers send them on every JSON answer (token answers
    must carry them, RFC 6749 5.1), and keys fetched for every request would put IAS on
    the hot path."""
    value = headers.get("Cache-Control", "")
    for directive in value.lower().split(","):
        name, _, argument = directive.strip().partition("=")
        if name == "max-age" and argument.strip().isdigit():
            return float(argument.strip())
    return None


class KeySet:
    """The signing keys of one source (an issuer's JWKS, XSUAA's token_keys), by ``kid``.

    Keys are kept for the ``max-age`` the source sends, within
    :data:`~flask_ias_pkce.constants.JWKS_MIN_TTL_SECONDS` and
    :data:`~flask_ias_pkce.constants.JWKS_MAX_TTL_SECONDS` (without one,
    :data:`~flask_ias_pkce.constants.JWKS_TTL_SECONDS`). No request waits for a refresh
    of keys it has: in the last quarter of that time, and past it for as long again, the
    first request that looks starts one refresh in a background thread and goes on with
    the known keys. Only keys never fetched, keys far past their time, and an unknown
    ``kid`` are fetched while the request waits; an unknown ``kid`` fetches at most once
    per :data:`~flask_ias_pkce.constants.JWKS_REFETCH_INTERVAL_SECONDS`, so that a key
    rotation is picked up at once while a flood of made-up ``kid`` values is not forwarded
    to the source. When a refresh fails, the keys we had go on serving (and the next try
    is an interval later); while the source has never served keys, a failure is answered
    again for :data:`~flask_ias_pkce.constants.JWKS_FAILURE_BACKOFF_SECONDS` without a call.
    """

    __slots__ = (
        "_failure",
        "_fetched_at",
        "_keys",
        "_last_refetch",
        "_lock",
        "_name",
        "_next_background",
        "_refreshing",
        "_ttl",
    )

    def __init__(self, name: str) -> None:
        self._name = name  # for logs
        self._keys: dict[str, Key] = {}
        self._fetched_at = float("-inf")
        self._ttl = float(JWKS_TTL_SECONDS)
        self._last_refetch = float("-inf")
        self._next_background = float("-inf")
        self._refreshing = False
        self._failure: tuple[float, IASPKCEError] | None = None
        self._lock = threading.Lock()

    def key(self, kid: str, fetch: Callable[[], dict[str, Key]], now: float) -> Key | None:
        """The key ``kid``, fetching the set with ``fetch`` when it is stale or lacks it."""
        key = self._keys.get(kid)
        if key is not None:
            age = now - self._fetched_at
            if age < self._ttl * _REFRESH_AHEAD:
                return key
            if age < self._ttl * 2:
                # Due (or a little overdue): refreshed behind the request's back.
                self._refresh_in_background(fetch, now)
                return key
        with self._lock:
            key = self._keys.get(kid)
            stale = now - self._fetched_at >= self._ttl * 2
            if key is not None and not stale:
                return key
            # A stale set is always refreshed; an unknown kid in a fresh set refreshes it at
            # most once per interval, so made-up kids cannot make us hammer the source.
            if stale or now - self._last_refetch >= JWKS_REFETCH_INTERVAL_SECONDS:
                if not stale:
                    self._last_refetch = now
                self._refresh(fetch, now)
            return self._keys.get(kid)

    def _refresh_in_background(self, fetch: Callable[[], dict[str, Key]], now: float) -> None:
        with self._lock:
            if self._refreshing or now < self._next_background:
                return
            self._refreshing = True
        threading.Thread(
            target=self._background, args=(fetch, now), name="ias-pkce-keys-refresh", daemon=True
        ).start()

    def _background(self, fetch: Callable[[], dict[str, Key]], now: float) -> None:
        try:
            keys = fetch()
        except Exception:
            # The known keys go on serving; the next attempt is an interval later.
            logger.warning("Key refresh of %s failed; keeping the known keys", self._name)
            with self._lock:
                self._next_background = now + JWKS_REFETCH_INTERVAL_SECONDS
                self._refreshing = False
            return
        with self._lock:
            self._store(keys, now)
            self._refreshing = False

    def _store(self, keys: dict[str, Key], now: float) -> None:
        max_age = keys.max_age if isinstance(keys, FetchedKeys) else None
        self._ttl = (
            float(JWKS_TTL_SECONDS)
            if max_age is None
            else min(JWKS_MAX_TTL_SECONDS, max(JWKS_MIN_TTL_SECONDS, max_age))
        )
        self._keys = keys
        self._fetched_at = now
        self._failure = None

    def _refresh(self, fetch: Callable[[], dict[str, Key]], now: float) -> None:
        if not self._keys and self._failure is not None:
            failed_at, error = self._failure
            if now - failed_at < JWKS_FAILURE_BACKOFF_SECONDS:
                # The source has never given us keys and failed a moment ago: answer with
                # that failure instead of calling it again for every request.
                raise copy.copy(error)
        try:
            self._store(fetch(), now)
        except Exception as error:
            if not self._keys:
                if isinstance(error, IASPKCEError):
                    self._failure = (now, error)
                raise
            # Serve the known keys and try again after one interval, not on every request
            # while the source is down.
            self._fetched_at = now - self._ttl * 2 + JWKS_REFETCH_INTERVAL_SECONDS
            logger.warning("Key refresh of %s failed; keeping the known keys", self._name)


def rsa_signing_keys(entries: list[Any], source: str) -> dict[str, Key]:
    """The usable RS256 signing keys among JWK ``entries``, by ``kid``; others are skipped.

    An entry may carry the key as JWK numbers (``n``, ``e``) or, as XSUAA's do, as a PEM
    ``value``. Keys under :data:`MIN_RSA_BITS` are skipped (RFC 7518 section 3.3), and so
    is a modulus or exponent over :data:`MAX_RSA_BITS`, before it is decoded.
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
            key = _rsa_key(entry)
            if key is None:
                logger.warning("The keys of %s hold an unusable or weak key; skipped", source)
            else:
                keys[entry["kid"]] = key
    return keys


# Base64url characters (6 bits each) and PEM text that a MAX_RSA_BITS key never exceeds.
_MAX_NUMBER_CHARS = -(-MAX_RSA_BITS // 6)
_MAX_PEM_CHARS = 2 * MAX_RSA_BITS // 6 + 512


def _rsa_key(entry: Mapping[str, Any]) -> Key | None:
    if "n" in entry and "e" in entry:
        material: Any = entry
        numbers = (entry["n"], entry["e"])
        if not all(isinstance(number, str) for number in numbers) or any(
            len(number) > _MAX_NUMBER_CHARS for number in numbers
        ):
            return None
    else:
        material = entry.get("value")
        if not isinstance(material, str) or len(material) > _MAX_PEM_CHARS:
            return None
    try:
        key = jwk.construct(material, ALGORITHM)
        modulus = _b64decode(key.to_dict()["n"])
    except (JOSEError, ValueError, TypeError, KeyError, binascii.Error):
        return None
    if int.from_bytes(modulus, "big").bit_length() < MIN_RSA_BITS:
        return None
    return key


@dataclass(slots=True)
class _IssuerKeys:
    """The keys of one issuer, fetched without tenant or client, and where it serves them."""

    key_set: KeySet
    jwks_uri: str | None = None
    proven: bool = False  #: a token's signature has passed with one of these keys


class JWKSCache:
    """The signing keys of each trusted issuer, found through OIDC discovery, and IAS's
    word on whether this client may accept a tenant's tokens.

    A token is checked in two steps, so that one made up costs real users nothing:

    1. its signature, against the keys of its issuer (:meth:`issuer_key`), fetched
       without the token's ``app_tid`` or ``azp``: a forged token names any tenant and
       client it likes, but not a signature, and fails here;
    2. only then (:meth:`tenant_key`), the JWKS call that IAS answers per tenant and
       client (``x-app_tid``, ``x-azp``) and refuses for a tenant this client may not
       accept; the token must verify with the key of that answer too, so that one
       tenant's keys never vouch for another's token (CVE-2023-50422). These sets exist
       only for tokens that were signed by IAS.

    An issuer whose keys have never verified a token (a made-up tenant, say) is fetched
    at most :data:`UNPROVEN_FETCHES_PER_MINUTE` times a minute in all, whatever the
    issuer, and its failures are remembered; such issuers never evict one whose keys have
    verified a token. The binding's own issuer (``home_issuer``) counts as proven from the
    start.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        policy: http.HttpPolicy,
        client_id: str,
        clock: Callable[[], float],
        home_issuer: str | None = None,
    ) -> None:
        self._session = session
        self._policy = policy
        self._client_id = client_id
        self._clock = clock
        self._proven: OrderedDict[str, _IssuerKeys] = OrderedDict()
        self._unproven: OrderedDict[str, _IssuerKeys] = OrderedDict()
        self._tenant_sets: OrderedDict[tuple[str, str | None, str | None], KeySet] = OrderedDict()
        self._unproven_fetches: deque[float] = deque(maxlen=UNPROVEN_FETCHES_PER_MINUTE)
        self._lock = threading.Lock()
        if home_issuer is not None:
            self._proven[home_issuer] = _IssuerKeys(KeySet(home_issuer), proven=True)

    # -- step 1: the issuer's keys ---------------------------------------------------------

    def issuer_key(self, issuer: str, kid: str) -> Key | None:
        """The key ``kid`` of ``issuer`` (an origin that passed the trust check), or None."""
        keys = self._issuer(issuer)
        return keys.key_set.key(kid, lambda: self._fetch_issuer(keys, issuer), self._clock())

    def proven(self, issuer: str) -> None:
        """Record that a token's signature passed with a key of ``issuer``."""
        with self._lock:
            keys = self._unproven.pop(issuer, None)
            if keys is None:
                keys = self._proven.get(issuer)
                if keys is not None:
                    self._proven.move_to_end(issuer)
                return
            keys.proven = True
            if len(self._proven) >= _MAX_PROVEN_ISSUERS:
                self._proven.popitem(last=False)
            self._proven[issuer] = keys

    def _issuer(self, issuer: str) -> _IssuerKeys:
        with self._lock:
            keys = self._proven.get(issuer)
            if keys is not None:
                return keys
            keys = self._unproven.get(issuer)
            if keys is not None:
                self._unproven.move_to_end(issuer)
                return keys
            if len(self._unproven) >= _MAX_UNPROVEN_ISSUERS:
                self._unproven.popitem(last=False)
            keys = self._unproven[issuer] = _IssuerKeys(KeySet(issuer))
            return keys

    def _fetch_issuer(self, keys: _IssuerKeys, issuer: str) -> dict[str, Key]:
        if not keys.proven:
            self._spend_unproven_budget(issuer)
        headers = {"x-client_id": self._client_id}
        keys.jwks_uri = self.discover(issuer, headers)
        return self.fetch_keys(issuer, keys.jwks_uri, headers)

    def _spend_unproven_budget(self, issuer: str) -> None:
        now = self._clock()
        with self._lock:
            fetches = self._unproven_fetches
            if len(fetches) == UNPROVEN_FETCHES_PER_MINUTE and now - fetches[0] < 60:
                retry_after = int(60 - (now - fetches[0])) + 1
            else:
                fetches.append(now)
                return
        logger.warning("Too many issuers without a verified token; %s refused for now", issuer)
        raise IASUnavailable(
            "Too many unknown issuers at once; try again shortly",
            reason="jwks_unknown_issuers_limited",
            retry_after=retry_after,
        )

    # -- step 2: the tenant's and client's keys --------------------------------------------

    def tenant_key(self, issuer: str, kid: str, claims: Mapping[str, Any]) -> Key | None:
        """The key ``kid`` as IAS gives it to this client for the tenant and client of
        ``claims``, or None; call only for a token whose signature passed with
        :meth:`issuer_key`. Raises :class:`~flask_ias_pkce.errors.InvalidToken` when IAS
        refuses this client the tenant's keys."""
        headers = self.headers(claims)
        scope = (issuer, headers.get("x-app_tid"), headers.get("x-azp"))
        if scope[1:] == (None, None):
            return self.issuer_key(issuer, kid)  # the same call as step 1
        with self._lock:
            key_set = self._tenant_sets.get(scope)
            if key_set is None:
                if len(self._tenant_sets) >= _MAX_TENANT_SETS:
                    self._tenant_sets.popitem(last=False)
                key_set = self._tenant_sets[scope] = KeySet(issuer)
            else:
                self._tenant_sets.move_to_end(scope)
        return key_set.key(kid, lambda: self._fetch_tenant(issuer, headers), self._clock())

    def _fetch_tenant(self, issuer: str, headers: Mapping[str, str]) -> dict[str, Key]:
        keys = self._issuer(issuer)
        jwks_uri = keys.jwks_uri or self.discover(issuer, headers)
        return self.fetch_keys(issuer, jwks_uri, headers)

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
        if not isinstance(document, dict):
            document = {}
        jwks_uri = document.get("jwks_uri")
        # The document must be the issuer's own (OpenID Connect Discovery 4.3), and the keys
        # must come from the issuer we trust, nowhere else.
        if (
            not _same_issuer(document.get("issuer"), issuer)
            or not isinstance(jwks_uri, str)
            or not jwks_uri.startswith(issuer + "/")
        ):
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
        keys = FetchedKeys(rsa_signing_keys(entries, issuer))
        if not keys:
            raise IASRefused("The identity service's JWKS has no usable key", reason="jwks_empty")
        keys.max_age = cache_max_age(answer.headers)
        logger.info("Fetched %d signing keys of %s", len(keys), issuer)
        return keys


def _same_issuer(claimed: object, issuer: str) -> bool:
    # ``issuer`` is the origin as issuer_origin() writes it: lower-case host, no :443.
    if not isinstance(claimed, str) or len(claimed) > 512:
        return False
    try:
        parts = urlsplit(claimed.removesuffix("/"))
        port = parts.port
    except ValueError:
        return False
    default = port in (None, 443)
    written = f"{parts.scheme}://{parts.hostname}" + ("" if default else f":{port}")
    return not (parts.path or parts.query or parts.fragment) and written == issuer


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
        _check_signature(token, self._keys.issuer_key(origin, kid))
        self._keys.proven(origin)
        # Signed by the issuer: now, and only now, ask IAS whether this client may accept
        # the token's tenant, and let the keys it gives for that tenant decide.
        _check_signature(token, self._keys.tenant_key(origin, kid, claims))
        return VerifiedToken(claims, origin, expires)


def _check_signature(token: str, key: Key | None) -> None:
    if key is None:
        raise InvalidToken("The token's signing key is unknown", reason="kid_unknown")
    try:
        jws.verify(token, key, algorithms=[ALGORITHM])
    except JOSEError:
        raise InvalidToken("The token's signature is invalid", reason="signature") from None
