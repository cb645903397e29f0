"""From a public token to a :class:`~flask_ias_pkce.TokenContext`: cache, verify,
passthrough or exchange, check, store. Knows nothing of Flask's request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .bearer import check_token_shape
from .cache import Entry, TokenCache
from .config import Settings
from .context import TokenContext
from .errors import IASRefused, InvalidToken
from .exchange import ExchangeClient
from .verify import TokenVerifier, audiences
from .xsuaa import XsuaaHop

logger = logging.getLogger("flask_ias_pkce")


class Authenticator:
    """Turns a public token into the token the app uses, at most one exchange per token."""

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: TokenVerifier,
        exchanger: ExchangeClient,
        cache: TokenCache,
        clock: Callable[[], float],
        xsuaa: XsuaaHop | None = None,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.exchanger = exchanger
        self.cache = cache
        self._clock = clock
        self._xsuaa = xsuaa  # the second hop, when an xsuaa binding allows it
        self._audiences = settings.accepted_audiences
        self._xsuaa_audience = (settings.xsuaa_client_id,)

    def authenticate(self, public_token: str) -> TokenContext:
        """Return the context for ``public_token`` (Bearer credentials as sent) or raise an
        :class:`~flask_ias_pkce.errors.IASPKCEError`."""
        key = self.cache.key(public_token)
        entry = self.cache.get(key)
        from_cache = entry is not None
        if entry is None:
            # Only an entry made for exactly this string can be a hit, so the shape is
            # checked on a miss, before anything else looks at the token.
            check_token_shape(public_token)
            entry, computed = self.cache.get_or_compute(
                key, lambda: self._obtain(key, public_token)
            )
            from_cache = not computed
        if entry.denied:
            raise InvalidToken(
                "The identity service does not accept this token", reason="ias_invalid_grant"
            )
        return TokenContext(
            entry, public_token=public_token, from_cache=from_cache, xsuaa=self._xsuaa
        )

    def _obtain(self, key: str, public_token: str) -> Entry:
        settings = self.settings
        public = self.verifier.verify(public_token, audience=self._audiences)
        if settings.passthrough and settings.xsuaa_client_id in audiences(public.claims):
            entry = Entry(public_token, self._not_after(public.expires_at), passthrough=True)
            self.cache.put(key, entry)
            return entry
        app_tid = public.claims.get("app_tid")
        if not isinstance(app_tid, str):
            app_tid = settings.bindings.identity.app_tid
        try:
            exchanged_token = self.exchanger.exchange(
                public_token, issuer=public.issuer, app_tid=app_tid
            )
        except InvalidToken:
            # IAS refused the assertion: remember that briefly, so that a replayed bad
            # token is refused here instead of being sent to IAS again.
            # Not capped at the token's expiry: the entry only ever refuses, and an expired
            # token that IAS refused must not be sent to IAS again on every request.
            self.cache.put(key, Entry("", self._clock() + settings.negative_ttl, denied=True))
            # The refusal itself is logged once, by whoever answers the request.
            logger.debug("IAS refused the assertion; remembered for %d s", settings.negative_ttl)
            raise
        try:
            exchanged = self.verifier.verify(
                exchanged_token, audience=self._xsuaa_audience, issuer=public.issuer
            )
        except InvalidToken as error:
            raise IASRefused(
                "The identity service returned an unusable token",
                reason=f"exchanged_{error.reason}",
            ) from None
        if not same_user(public.claims, exchanged.claims):
            raise IASRefused(
                "The identity service returned an unusable token", reason="exchanged_subject"
            )
        if not _same_tenant(public.claims, exchanged.claims, sent=app_tid):
            # The same user of another tenant is another user: the app's data is per tenant.
            raise IASRefused(
                "The identity service returned an unusable token", reason="exchanged_tenant"
            )
        entry = Entry(exchanged_token, self._not_after(public.expires_at, exchanged.expires_at))
        self.cache.put(key, entry)
        return entry

    def _not_after(self, *expiries: float) -> float:
        """Until when an entry is served: the earliest expiry less the leeway. A token
        already within the leeway of its expiry is kept until that expiry itself (never
        after it) rather than exchanged again on every request of its last minute."""
        earliest = min(expiries)
        with_margin = earliest - self.settings.leeway
        return with_margin if with_margin > self._clock() else earliest


def same_user(public: Mapping[str, Any], exchanged: Mapping[str, Any]) -> bool:
    """Whether the exchanged token is for the user of the public one.

    IAS finds the user of a jwt-bearer assertion by ``user_uuid`` when it has one, else by
    ``sub`` (SAP's documentation of the grant, "Configure the Client to Call Identity
    Authentication JWT Bearer Token"), and writes ``sub`` as the application's subject name
    identifier says: where both tokens carry a ``user_uuid``, that decides; else ``sub``.
    """
    public_uuid, exchanged_uuid = public.get("user_uuid"), exchanged.get("user_uuid")
    if isinstance(public_uuid, str) and isinstance(exchanged_uuid, str):
        return public_uuid == exchanged_uuid
    subject = public.get("sub")
    return isinstance(subject, str) and subject == exchanged.get("sub")


def _same_tenant(
    public: Mapping[str, Any], exchanged: Mapping[str, Any], *, sent: str | None
) -> bool:
    """Whether the exchanged token names no other tenant than the public one: its
    ``app_tid``, or, when the public token names none, the one the exchange ``sent``."""
    tenant = exchanged.get("app_tid")
    expected = public.get("app_tid")
    if not isinstance(expected, str):
        expected = sent
    return tenant is None or expected is None or tenant == expected
