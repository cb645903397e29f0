"""Signing keys: where they come from, how long they are kept, which ones are usable.

The keys of each trusted IAS issuer are found through OIDC discovery and kept per issuer
and, once a token of theirs was signed, per tenant and client (:class:`JWKSCache`); XSUAA's
token keys per zone. Every source is a :class:`KeySet`, with lifetimes and limits from
:class:`KeyLimits`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from jose import jwk
from jose.backends.base import Key
from jose.exceptions import JOSEError

from . import transport
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

#: What a ``kid`` (and a tenant id we forward in a header) may look like.
KID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")
#: RSA moduli under this many bits are ignored (RFC 7518 section 3.3).
MIN_RSA_BITS = 2048
#: A modulus or exponent longer than this is no real key: refused before it is decoded.
MAX_RSA_BITS = 8192

#: Keys are refreshed in the background once this share of their lifetime has passed.
_REFRESH_AHEAD = 0.75


def b64url_decode(segment: str) -> bytes:
    """Base64url without padding (JWS segments, JWK numbers) to bytes."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


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


@dataclass(frozen=True)
class KeyLimits:
    """How long signing keys are kept and how often their sources are asked: passed to
    :class:`KeySet` and :class:`JWKSCache` (``IASPKCE(key_limits=...)``), so that tests set
    their own instead of patching module constants. The defaults are production's."""

    #: Keys kept this long when the source sends no ``Cache-Control: max-age``.
    ttl: float = JWKS_TTL_SECONDS
    #: A source's ``max-age`` is honoured within these bounds.
    min_ttl: float = JWKS_MIN_TTL_SECONDS
    max_ttl: float = JWKS_MAX_TTL_SECONDS
    #: An unknown ``kid`` (or a failed refresh) asks the source again at most this often.
    refetch_interval: float = JWKS_REFETCH_INTERVAL_SECONDS
    #: While a source has never served keys, its failure is answered again for this long.
    failure_backoff: float = JWKS_FAILURE_BACKOFF_SECONDS
    #: Fetches of the keys of issuers that have not yet verified a token (discovery and
    #: JWKS, whatever the issuer), at most this many a minute in all: an unsigned token can
    #: name any tenant under a trusted domain, so this is all that forged tokens can cost IAS.
    unproven_fetches_per_minute: int = 10
    #: Issuers kept that have not yet verified a token (their failures are remembered).
    max_unproven_issuers: int = 64
    #: Issuers kept whose keys have verified a token; only another such issuer evicts one.
    max_proven_issuers: int = 1024
    #: Tenant and client key sets kept; each is made only for a token whose signature passed.
    max_tenant_sets: int = 4096
    #: XSUAA key sets kept, one per zone (XSUAA serves each zone's keys apart).
    max_xsuaa_zones: int = 64


#: The limits of production.
DEFAULT_KEY_LIMITS = KeyLimits()


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
        "_limits",
        "_lock",
        "_name",
        "_next_background",
        "_refreshing",
        "_ttl",
    )

    def __init__(self, name: str, limits: KeyLimits = DEFAULT_KEY_LIMITS) -> None:
        self._name = name  # for logs
        self._limits = limits
        self._keys: dict[str, Key] = {}
        self._fetched_at = float("-inf")
        self._ttl = float(limits.ttl)
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
            if stale or now - self._last_refetch >= self._limits.refetch_interval:
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
                self._next_background = now + self._limits.refetch_interval
                self._refreshing = False
            return
        with self._lock:
            self._store(keys, now)
            self._refreshing = False

    def _store(self, keys: dict[str, Key], now: float) -> None:
        max_age = keys.max_age if isinstance(keys, FetchedKeys) else None
        limits = self._limits
        self._ttl = (
            float(limits.ttl)
            if max_age is None
            else min(limits.max_ttl, max(limits.min_ttl, max_age))
        )
        self._keys = keys
        self._fetched_at = now
        self._failure = None

    def _refresh(self, fetch: Callable[[], dict[str, Key]], now: float) -> None:
        if not self._keys and self._failure is not None:
            failed_at, error = self._failure
            if now - failed_at < self._limits.failure_backoff:
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
            self._fetched_at = now - self._ttl * 2 + self._limits.refetch_interval
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
        modulus = b64url_decode(key.to_dict()["n"])
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
       without client headers (neither this client's id nor the token's ``app_tid`` or
       ``azp``): a forged token names any tenant and client it likes, but not a
       signature, and fails here;
    2. only then (:meth:`tenant_key`), the JWKS call that IAS answers per tenant and
       client (``x-app_tid``, ``x-azp``) and refuses for a tenant this client may not
       accept; the token must verify with the key of that answer too, so that one
       tenant's keys never vouch for another's token (CVE-2023-50422). These sets exist
       only for tokens that were signed by IAS.

    An issuer whose keys have never verified a token (a made-up tenant, say) is fetched
    at most :attr:`KeyLimits.unproven_fetches_per_minute` times a minute in all, whatever the
    issuer, and its failures are remembered; such issuers never evict one whose keys have
    verified a token. The binding's own issuer (``home_issuer``) counts as proven from the
    start.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        policy: transport.HttpPolicy,
        client_id: str,
        clock: Callable[[], float],
        home_issuer: str | None = None,
        limits: KeyLimits = DEFAULT_KEY_LIMITS,
    ) -> None:
        self._session = session
        self._limits = limits
        self._policy = policy
        self._client_id = client_id
        self._clock = clock
        self._proven: OrderedDict[str, _IssuerKeys] = OrderedDict()
        self._unproven: OrderedDict[str, _IssuerKeys] = OrderedDict()
        self._tenant_sets: OrderedDict[tuple[str, str | None, str | None], KeySet] = OrderedDict()
        self._unproven_fetches: deque[float] = deque(maxlen=limits.unproven_fetches_per_minute)
        self._lock = threading.Lock()
        if home_issuer is not None:
            self._proven[home_issuer] = _IssuerKeys(KeySet(home_issuer, limits), proven=True)

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
            if len(self._proven) >= self._limits.max_proven_issuers:
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
            if len(self._unproven) >= self._limits.max_unproven_issuers:
                self._unproven.popitem(last=False)
            keys = self._unproven[issuer] = _IssuerKeys(KeySet(issuer, self._limits))
            return keys

    def _fetch_issuer(self, keys: _IssuerKeys, issuer: str) -> dict[str, Key]:
        if not keys.proven:
            self._spend_unproven_budget(issuer)
        # No client headers: the issuer's keys, as IAS gives them to anyone (see headers()).
        keys.jwks_uri = self.discover(issuer, {})
        return self.fetch_keys(issuer, keys.jwks_uri, {})

    def _spend_unproven_budget(self, issuer: str) -> None:
        now = self._clock()
        with self._lock:
            fetches = self._unproven_fetches
            if len(fetches) == self._limits.unproven_fetches_per_minute and now - fetches[0] < 60:
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
        if not headers:
            return self.issuer_key(issuer, kid)  # the same call as step 1
        scope = (issuer, headers.get("x-app_tid"), headers.get("x-azp"))
        with self._lock:
            key_set = self._tenant_sets.get(scope)
            if key_set is None:
                if len(self._tenant_sets) >= self._limits.max_tenant_sets:
                    self._tenant_sets.popitem(last=False)
                key_set = self._tenant_sets[scope] = KeySet(issuer, self._limits)
            else:
                self._tenant_sets.move_to_end(scope)
        return key_set.key(kid, lambda: self._fetch_tenant(issuer, headers), self._clock())

    def _fetch_tenant(self, issuer: str, headers: Mapping[str, str]) -> dict[str, Key]:
        keys = self._issuer(issuer)
        jwks_uri = keys.jwks_uri or self.discover(issuer, headers)
        return self.fetch_keys(issuer, jwks_uri, headers)

    def headers(self, claims: Mapping[str, Any]) -> dict[str, str]:
        """The headers of discovery and JWKS calls for a token with ``claims``.

        IAS answers the JWKS per client and tenant: ``x-client_id`` (this binding) and
        ``x-app_tid`` (the token's tenant), with ``x-azp`` (the token's client) beside
        them. The first two go together or not at all, as @sap/xssec sends them since
        3.3.3 ("send either both x-app_tid & x-client_id headers or none of them to IAS
        /certs endpoint to prevent bad request") and SAP's Spring token client does
        (``SpringOAuth2TokenKeyService``): a token that names no tenant gets none, and its
        keys are the issuer's (step 1).
        """
        app_tid = claims.get("app_tid")
        if not isinstance(app_tid, str) or not KID_PATTERN.fullmatch(app_tid):
            return {}
        headers = {"x-client_id": self._client_id, "x-app_tid": app_tid}
        azp = claims.get("azp")
        if isinstance(azp, str) and KID_PATTERN.fullmatch(azp):
            headers["x-azp"] = azp
        return headers

    def discover(self, issuer: str, headers: Mapping[str, str]) -> str:
        """The ``jwks_uri`` of ``issuer``'s discovery document (no caching; used by the
        key cache and by ``flask ias-pkce check``)."""
        discovery = transport.call(
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
        answer = transport.call(
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
