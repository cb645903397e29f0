"""From a public token to a :class:`~flask_ias_pkce.TokenContext`: cache, verify,
passthrough or exchange, check, store. Knows nothing of Flask's request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .bearer import check_token_shape
from .bindings import IdentityBinding
from .cache import Cached, Denial, Entry, TokenCache, not_after
from .config import Settings
from .context import TokenContext
from .errors import IASRefused, InvalidToken
from .exchange import ExchangeClient
from .keys import KID_PATTERN, JWKSCache
from .verify import TokenVerifier, audiences, issuer_origin, unverified_claims
from .xsuaa import XsuaaHop

logger = logging.getLogger("flask_ias_pkce")


@dataclass(frozen=True)
class Route:
    """One IAS binding and what serves it alone: its key sets, its verifier, its IAS
    client (its own session and client certificate) and the audiences it accepts."""

    binding: IdentityBinding
    keys: JWKSCache
    verifier: TokenVerifier
    exchanger: ExchangeClient
    audiences: frozenset[str]
    #: ``https://host[:port]`` of the binding's own tenant, as verified issuers are written.
    home_issuer: str


class Authenticator:
    """Turns a public token into the token the app uses, at most one exchange per token.

    With several IAS bindings (``routes``), a token goes to the first binding whose client
    id is in its ``aud``, the only one IAS exchanges it for; that is decided on a cache
    miss only, since the cache scope names every binding and so a token's entry is always
    its own binding's.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        routes: Sequence[Route],
        cache: TokenCache,
        clock: Callable[[], float],
        xsuaa: XsuaaHop | None = None,
    ) -> None:
        self.settings = settings
        self.routes = tuple(routes)
        # The first binding's, for callers that know only one.
        self.verifier = self.routes[0].verifier
        self.exchanger = self.routes[0].exchanger
        self.cache = cache
        self._clock = clock
        self._xsuaa = xsuaa  # the second hop, when an xsuaa binding allows it
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
            entry, computed = self.cache.get_or_compute(key, lambda: self._obtain(public_token))
            from_cache = not computed
        if isinstance(entry, Denial):
            raise InvalidToken(
                "The identity service does not accept this token", reason="ias_invalid_grant"
            )
        return TokenContext(
            entry, public_token=public_token, from_cache=from_cache, xsuaa=self._xsuaa
        )

    def route(self, claims: Mapping[str, Any]) -> Route:
        """The binding for a token with (unverified) ``claims``: the first whose client id
        is in ``aud``; with one binding, that one (its verifier checks the audience)."""
        if len(self.routes) == 1:
            return self.routes[0]
        token_audiences = audiences(claims)
        for route in self.routes:
            if route.binding.client_id in token_audiences:
                return route
        raise InvalidToken("The token is not meant for this application", reason="audience")

    def _tenant(self, route: Route, claims: Mapping[str, Any]) -> str | None:
        """The ``app_tid`` to exchange a token with ``claims`` for, or raise.

        Checked before anything is fetched: a token of a tenant outside
        ``IAS_PKCE_TENANTS`` costs no call to IAS. A token of a tenant other than the
        binding's own (a subscriber's) must name its ``app_tid``, as SAP's Java library
        demands (``SapIdJwtSignatureValidator``), and the binding's ``app_tid`` is used
        only for the binding's own tenant's tokens: the provider's tenant id sent with a
        subscriber's token would ask IAS for a token of the wrong tenant.
        """
        binding = route.binding
        issuer = issuer_origin(
            claims.get("ias_iss", claims.get("iss")),
            binding.domains,
            route.verifier.ports,
        )
        app_tid = claims.get("app_tid")
        if app_tid is not None and not (
            isinstance(app_tid, str) and KID_PATTERN.fullmatch(app_tid)
        ):
            # IAS writes a tenant id (a UUID). Anything else could be sent to IAS neither
            # as a header nor as a parameter, so the tenant's keys would never be asked for.
            raise InvalidToken("The token's app_tid is malformed", reason="app_tid_malformed")
        if app_tid is None:
            if issuer != route.home_issuer:
                raise InvalidToken(
                    "The token of a subscriber tenant names no tenant", reason="app_tid_missing"
                )
            app_tid = binding.app_tid
        tenants = self.settings.tenants
        if tenants is not None and app_tid not in tenants:
            raise InvalidToken(
                "The token's tenant may not use this application", reason="tenant_not_allowed"
            )
        return app_tid

    def _obtain(self, public_token: str) -> Cached:
        """Verify ``public_token`` and pass it through or exchange it: what the cache
        should remember of it (it stores the result)."""
        settings = self.settings
        unverified = unverified_claims(public_token)
        route = self.route(unverified)
        app_tid = self._tenant(route, unverified)
        public = route.verifier.verify(public_token, audience=route.audiences)
        if settings.passthrough and settings.xsuaa_client_id in audiences(public.claims):
            return Entry(public_token, self._not_after(public.expires_at), passthrough=True)
        try:
            exchanged_token = route.exchanger.exchange(
                public_token, issuer=public.issuer, app_tid=app_tid
            )
        except InvalidToken:
            # IAS refused the assertion: remember that briefly, so that a replayed bad
            # token is refused here instead of being sent to IAS again.
            # Not capped at the token's expiry: the entry only ever refuses, and an expired
            # token that IAS refused must not be sent to IAS again on every request.
            # The refusal itself is logged once, by whoever answers the request.
            logger.debug("IAS refused the assertion; remembered for %d s", settings.negative_ttl)
            return Denial(self._clock() + settings.negative_ttl)
        try:
            exchanged = route.verifier.verify(
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
        return Entry(exchanged_token, self._not_after(public.expires_at, exchanged.expires_at))

    def _not_after(self, *expiries: float) -> float:
        return not_after(*expiries, margin=self.settings.min_remaining, now=self._clock())


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
    """Whether the exchanged token is of the public token's tenant.

    A public token that names its tenant (``app_tid``) needs an exchanged token of that
    same tenant: one that names none cannot show it is. A public token without
    ``app_tid`` (older IAS tenants) needs only that the exchanged token names no other
    tenant than the one the exchange ``sent``."""
    tenant = exchanged.get("app_tid")
    expected = public.get("app_tid")
    if isinstance(expected, str):
        return tenant == expected
    return tenant is None or sent is None or tenant == sent
