"""The optional second hop: the app's IAS token in, an XSUAA token out.

Some downstream services accept only XSUAA tokens. XSUAA gives one for an IAS token whose
``aud`` holds the XSUAA client id (what the first hop obtained) through the jwt-bearer
grant at ``<xsuaa url>/oauth/token``, authenticated with the xsuaa binding: a client
secret at ``url``, or the binding's certificate and key over mTLS at ``certurl``. The
XSUAA token is verified against XSUAA's ``/token_keys`` and cached in the request's token
cache under its own purpose, so it is obtained once per IAS token.

Both calls follow SAP's own libraries:

- The token request goes to the binding's own host (``certurl`` with a certificate, else
  ``url``) and names the user's zone with the header ``x-zid: <app_tid of the IAS
  token>``; the host is not rewritten for the zone. SAP/cloud-security-services-
  integration-library, ``token-client/.../DefaultXsuaaTokenExtension.java`` (endpoint from
  ``XsuaaDefaultEndpoints``: ``certurl`` for X.509 credentials, else ``url``; ``zid`` from
  the IAS token's ``app_tid``; ``token_format=jwt``) and ``AbstractOAuth2TokenService.java``
  (``retrieveAccessTokenViaJwtBearerTokenGrant(..., zoneId)`` adds ``X-zid``); @sap/xssec 4
  does the same (``src/util/iasXsuaaTokenExchange.js`` passes ``zid: appTid`` to
  ``XsuaaService#fetchJwtBearerToken``; CHANGELOG 4.1.3 and 4.2.4: the ``zid`` option is
  sent as ``x-zid``).
- The keys come from ``https://<uaadomain>/token_keys?zid=<zid of the XSUAA token>``,
  never from the token's ``jku`` header, with ``x-zid`` and ``client_id`` as well, and are
  kept per zone: ``java-security/.../XsuaaJwtSignatureValidator.java`` (``UAA_DOMAIN +
  "/token_keys" + "?zid=..."``, header ``X_ZID``; its newer test expects
  ``?zid=<zid>&client_id=<cid>``; SAP/cloud-security-services-integration-library#1354
  dropped the ``jku`` header), sap-xssec 4 (SAP/cloud-pysec,
  ``sap/xssec/security_context_xsuaa.py``, ``_get_jku``: ``https://{uaadomain or
  url}/token_keys?zid={zid}``, keys cached by that URL) and @sap/xssec 4
  (``src/service/XsuaaService.js`` imports ``ZID_QUERY_PARAMETER`` and ``ZID_HEADER``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import requests
from jose.backends.base import Key

from . import transport
from .bindings import XsuaaBinding
from .cache import Entry, TokenCache, not_after
from .constants import (
    JWT_BEARER_GRANT,
)
from .credentials import ClientIdentity, Credentials, xsuaa_credentials
from .errors import IASPKCEError, IASRefused, InvalidToken
from .keys import DEFAULT_KEY_LIMITS, KeyLimits, KeySet, rsa_signing_keys
from .verify import audiences, check_signature, check_times, read_jws

if TYPE_CHECKING:
    from .context import TokenContext

logger = logging.getLogger("flask_ias_pkce")

#: The cache key purpose of XSUAA tokens, apart from the first hop's entries.
CACHE_PURPOSE = "xsuaa"

_ZONE = re.compile(r"[A-Za-z0-9-]{1,64}")


def hop_possible(binding: XsuaaBinding | None) -> bool:
    """Whether ``binding`` has what the second hop needs: a ``url`` and credentials."""
    if binding is None or binding.url is None:
        return False
    return binding.client_secret is not None or (
        binding.certificate is not None and binding.key is not None
    )


class _Refused(Exception):
    """Why an XSUAA answer is unusable; becomes an :class:`IASRefused` with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class XsuaaHop:
    """Exchanges the request's IAS token for an XSUAA token, at most once per IAS token.

    An instance is the ``xsuaa`` callable of :class:`~flask_ias_pkce.TokenContext`: call it
    with the context and get the XSUAA token (a JWT) back.

    :param binding: the xsuaa binding; see :func:`hop_possible`.
    :param policy: TLS trust, timeouts and retries, the same as towards IAS.
    :param cache: the extension's token cache (entries under purpose ``"xsuaa"``).
    :param leeway: seconds of clock skew allowed.
    :param min_remaining: seconds an XSUAA token must still be valid to be served from
        the cache (default: ``leeway``).
    :param clock: seconds since the epoch.
    :param app_tid: the tenant of the IAS binding, sent as ``x-zid`` when the token has none.
    :param session: the keep-alive session; by default one made for the binding.
    :param key_limits: how long XSUAA's signing keys are kept and how often fetched.
    """

    def __init__(
        self,
        binding: XsuaaBinding,
        *,
        policy: transport.HttpPolicy,
        cache: TokenCache,
        leeway: float,
        clock: Callable[[], float],
        min_remaining: float | None = None,
        app_tid: str | None = None,
        session: requests.Session | None = None,
        key_limits: KeyLimits = DEFAULT_KEY_LIMITS,
    ) -> None:
        if not hop_possible(binding):
            raise ValueError("the xsuaa binding has no url, or neither secret nor certificate")
        assert binding.url is not None
        self._binding = binding
        # A certificate wins over a secret, as in SAP's libraries: the certificate host
        # (certurl) is the only one that accepts it.
        self.uses_certificate = binding.certificate is not None and binding.key is not None
        base = (binding.certurl or binding.url) if self.uses_certificate else binding.url
        self._token_url = base.rstrip("/") + "/oauth/token"
        # sap-xssec's fallback when a binding names no uaadomain: its url.
        domain = (binding.uaadomain or "").removeprefix("https://").rstrip("/")
        self._keys_url = (f"https://{domain}" if domain else binding.url.rstrip("/")) + (
            "/token_keys"
        )
        self._trusted_host = urlsplit(binding.url).hostname or ""
        self._uaadomain = (urlsplit(f"https://{domain}").hostname or "") if domain else ""
        self._policy = policy
        self._cache = cache
        self._leeway = leeway
        self._min_remaining = leeway if min_remaining is None else min_remaining
        self._clock = clock
        self._key_limits = key_limits
        self._app_tid = app_tid
        #: The certificate or secret in use; replaced when the binding's files rotate.
        self.credentials: Credentials = xsuaa_credentials(binding)
        self.session = session or transport.new_session(
            identity=self._identity, reread=self._reread
        )
        #: Reads the binding again (set by the extension), as for the exchange at IAS.
        self.reread: Callable[[], object] | None = None
        self._key_sets: OrderedDict[str | None, KeySet] = OrderedDict()
        self._key_sets_lock = threading.Lock()
        #: What XSUAA puts before an app's own (local) scopes: ``"<xsappname>."``, or
        #: ``None`` when the binding names no ``xsappname``.
        self.scope_prefix = f"{binding.xsappname}." if binding.xsappname else None

    def _identity(self) -> ClientIdentity | None:
        return self.credentials.identity

    def _reread(self) -> None:
        if self.reread is not None:
            self.reread()

    def __call__(self, context: TokenContext) -> str:
        """The XSUAA token for ``context.token``, from the cache or from XSUAA.

        :raises ~flask_ias_pkce.errors.IASRefused: XSUAA refused, or its answer is unusable.
        :raises ~flask_ias_pkce.errors.IASUnavailable: XSUAA cannot be reached.
        :raises ~flask_ias_pkce.errors.IASTimeout: XSUAA did not answer in time.
        """
        return self.entry(context).token

    def entry(self, context: TokenContext) -> Entry:
        """The cache entry of the XSUAA token for ``context.token`` (its token, and its
        claims and scopes decoded once per entry); raises as :meth:`__call__` does."""
        key = self._cache.key(context.token, purpose=CACHE_PURPOSE)
        cached = self._cache.get(key)
        if cached is None:
            cached, _ = self._cache.get_or_compute(key, lambda: self._obtain(context))
        # Only this hop writes under its purpose, and it never stores a denial.
        return cast(Entry, cached)

    def _obtain(self, context: TokenContext) -> Entry:
        zone = context.claims.get("app_tid")
        if not isinstance(zone, str):
            zone = self._app_tid
        headers = {"Accept": "application/json"}
        if zone and _ZONE.fullmatch(zone):
            # XSUAA serves many zones (subaccounts); this names the user's.
            headers["x-zid"] = zone
        form = {
            "grant_type": JWT_BEARER_GRANT,
            "client_id": self._binding.client_id,
            "assertion": context.token,
            "token_format": "jwt",
        }

        def send() -> transport.Answer:
            sent = dict(headers)
            credentials = self.credentials
            if credentials.identity is None:
                sent["Authorization"] = transport.basic_authorization(
                    self._binding.client_id, credentials.secret or ""
                )
            return transport.call(
                self.session,
                "POST",
                self._token_url,
                policy=self._policy,
                what="xsuaa_exchange",
                data=form,
                headers=sent,
            )

        answer = transport.call_rereading(self.credentials, self.reread, send, _refuses_client)
        try:
            token = _token_of(answer)
            expires_at = self._verify(token)
        except _Refused as refused:
            logger.error("XSUAA exchange failed: %s", refused.reason)
            raise IASRefused(
                "The XSUAA service refused the token or answered unusably",
                reason=refused.reason,
            ) from None
        entry = Entry(
            token,
            not_after(
                expires_at, context.expires_at, margin=self._min_remaining, now=self._clock()
            ),
        )
        logger.info("Token exchanged at XSUAA")
        return entry

    # -- verification ------------------------------------------------------------------

    def _verify(self, token: str) -> float:
        """Check the XSUAA token's signature, issuer, times and audience; return ``exp``.

        The token is read as IAS tokens are (:func:`~flask_ias_pkce.verify.read_jws`:
        canonical base64url, no hostile JSON, RS256, no ``crit``, a plain ``kid``)."""
        try:
            signed = read_jws(token)
            claims = signed.claims
            zone = _zone_of(claims)
            check_signature(
                token,
                self._key_set(zone).key(signed.kid, lambda: self._fetch_keys(zone), self._clock()),
            )
        except InvalidToken as error:
            raise _Refused(f"xsuaa_{error.reason}") from None
        if not self._issuer_trusted(claims.get("iss")):
            raise _Refused("xsuaa_issuer_untrusted")
        try:
            expires_at = check_times(claims, now=self._clock(), leeway=self._leeway)
        except IASPKCEError as error:
            raise _Refused(f"xsuaa_{error.reason}") from None
        if self._binding.client_id not in audiences(claims):
            raise _Refused("xsuaa_audience")
        return expires_at

    def _issuer_trusted(self, issuer: object) -> bool:
        # XSUAA names a subscriber's subdomain in iss, so the host may be the binding's or
        # any host of its uaadomain.
        if not isinstance(issuer, str):
            return False
        parts = urlsplit(issuer)
        host = parts.hostname or ""
        uaadomain = self._uaadomain
        return parts.scheme == "https" and (
            host == self._trusted_host or bool(uaadomain and host.endswith("." + uaadomain))
        )

    def _key_set(self, zone: str | None) -> KeySet:
        # One set per zone, as the keys URL names the zone: one zone's keys never vouch
        # for another's token. The zones are XSUAA's answers to our own requests.
        with self._key_sets_lock:
            key_set = self._key_sets.get(zone)
            if key_set is None:
                if len(self._key_sets) >= self._key_limits.max_xsuaa_zones:
                    self._key_sets.popitem(last=False)
                key_set = self._key_sets[zone] = KeySet("XSUAA", self._key_limits)
            self._key_sets.move_to_end(zone)
            return key_set

    def _fetch_keys(self, zone: str | None) -> dict[str, Key]:
        params = {"client_id": self._binding.client_id}
        headers = {"Accept": "application/json"}
        if zone is not None:
            params = {"zid": zone, **params}
            headers["x-zid"] = zone
        answer = transport.call(
            self.session,
            "GET",
            self._keys_url,
            policy=self._policy,
            what="xsuaa_keys",
            params=params,
            headers=headers,
        )
        document = answer.json() if answer.status == 200 else None
        entries = document.get("keys") if isinstance(document, Mapping) else None
        keys = rsa_signing_keys(entries, "XSUAA") if isinstance(entries, list) else {}
        if not keys:
            logger.error("XSUAA token_keys answered %d without a usable key", answer.status)
            raise IASRefused("The XSUAA service's token keys are unusable", reason="xsuaa_keys_bad")
        return keys


def _refuses_client(answer: transport.Answer) -> bool:
    # XSUAA answers a client it does not know with 401 (error "unauthorized" or
    # "invalid_client").
    return answer.status == 401


def _token_of(answer: transport.Answer) -> str:
    if answer.status != 200:
        code = transport.error_code(answer) or f"status_{answer.status}"
        raise _Refused(f"xsuaa_refused_{code}")
    token = transport.answer_token(answer, "access_token")
    if token is None:
        raise _Refused("xsuaa_no_token")
    return token


def _zone_of(claims: Mapping[str, Any]) -> str | None:
    """The ``zid`` claim of an XSUAA token not yet verified, when it is a plain zone id:
    it only names which zone's keys to fetch, as in SAP's libraries."""
    zone = claims.get("zid")
    return zone if isinstance(zone, str) and _ZONE.fullmatch(zone) else None
