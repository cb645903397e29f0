"""The protocol core, built from settings without Flask.

:func:`build_core` makes what turns a public token into the token the app uses: per IAS
binding a route (session, key sets, verifier, IAS client), the token cache over a
Flask-Caching backend, the optional second hop to XSUAA, and the authenticator that ties
them together. ``init_app`` builds the core with it; so can a test, with no app at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask_caching.backends.base import BaseCache

from . import transport
from .authenticator import Authenticator, Route
from .bindings import Bindings, IdentityBinding
from .cache import TokenCache
from .cache_backends import sealer
from .config import Settings
from .credentials import identity_credentials
from .errors import InvalidToken
from .exchange import ExchangeClient
from .keys import DEFAULT_KEY_LIMITS, JWKSCache, KeyLimits
from .verify import TokenVerifier, issuer_origin
from .xsuaa import XsuaaHop, hop_possible


@dataclass(frozen=True)
class Core:
    """The parts of the protocol core for one app."""

    policy: transport.HttpPolicy
    #: One per IAS binding, in routing order.
    routes: tuple[Route, ...]
    cache: TokenCache
    #: The second hop, when the xsuaa binding allows it.
    xsuaa: XsuaaHop | None
    authenticator: Authenticator


def build_core(
    settings: Settings,
    backend: BaseCache,
    *,
    clock: Callable[[], float] = time.time,
    correlation_id: Callable[[], str] = transport.new_correlation_id,
    key_limits: KeyLimits = DEFAULT_KEY_LIMITS,
) -> Core:
    """Build the protocol core from checked ``settings``.

    :param backend: the Flask-Caching backend of the token cache (an allowed one: see
        :mod:`flask_ias_pkce.cache_backends`).
    :param clock: seconds since the epoch, for every expiry and key lifetime.
    :param correlation_id: the correlation id of the work at hand, sent with every call.
    :param key_limits: how long signing keys are kept and how often they are fetched.
    :raises ~flask_ias_pkce.config.ConfigError: the cache secret does not suit ``backend``.
    """
    bindings = settings.bindings
    policy = transport.HttpPolicy(
        verify=settings.verify,
        timeout=settings.timeout,
        retries=settings.retries,
        correlation_id=correlation_id,
    )
    routes = tuple(
        _route(identity, settings, policy, clock, key_limits) for identity in bindings.identities
    )
    token_cache = TokenCache(
        backend,
        sealer(settings.cache.secret, backend),
        l1_size=settings.l1_size,
        clock=clock,
        # A miss may take discovery, the issuer's JWKS, the JWKS of the public and of the
        # exchanged token's tenant and client, the token endpoint's discovery and the
        # exchange: each up to the worst case.
        wait_timeout=6 * policy.worst_case_seconds(),
        scope=settings.cache_scope(),
    )
    xsuaa_hop = (
        XsuaaHop(
            bindings.xsuaa,
            policy=policy,
            cache=token_cache,
            leeway=settings.leeway,
            min_remaining=settings.min_remaining,
            clock=clock,
            key_limits=key_limits,
            # The x-zid for a token without app_tid: its binding's, when all agree.
            app_tid=_common_app_tid(bindings),
        )
        if bindings.xsuaa is not None and hop_possible(bindings.xsuaa)
        else None
    )
    authenticator = Authenticator(
        settings, routes=routes, cache=token_cache, clock=clock, xsuaa=xsuaa_hop
    )
    return Core(policy, routes, token_cache, xsuaa_hop, authenticator)


def _route(
    identity: IdentityBinding,
    settings: Settings,
    policy: transport.HttpPolicy,
    clock: Callable[[], float],
    key_limits: KeyLimits,
) -> Route:
    """What serves one IAS binding alone: its own session (client certificate), key sets,
    verifier and accepted audiences."""
    exchanger = ExchangeClient(
        identity,
        policy=policy,
        use_token=settings.use_token,
        resources=settings.resources,
        clock=clock,
        credentials=identity_credentials(identity),
    )
    url = urlsplit(identity.url)
    # An issuer may name no port, 443, or the binding URL's own port; no other.
    ports = (None, 443, url.port)
    keys = JWKSCache(
        exchanger.session,
        policy=policy,
        client_id=identity.client_id,
        clock=clock,
        home_issuer=_home_issuer(identity, ports),
        limits=key_limits,
    )
    verifier = TokenVerifier(
        keys, domains=identity.domains, leeway=settings.leeway, clock=clock, ports=ports
    )
    # With one binding the accepted audiences are the settings'; with several, each
    # binding's own client id (config refuses IAS_PKCE_ACCEPTED_AUDIENCES then).
    audiences = (
        settings.accepted_audiences
        if len(settings.bindings.identities) == 1
        else frozenset((identity.client_id,))
    )
    port = f":{url.port}" if url.port not in (None, 443) else ""
    home_issuer = f"https://{(url.hostname or '').lower()}{port}"
    return Route(identity, keys, verifier, exchanger, audiences, home_issuer)


def _common_app_tid(bindings: Bindings) -> str | None:
    tenants = {identity.app_tid for identity in bindings.identities}
    return tenants.pop() if len(tenants) == 1 else None


def _home_issuer(identity: IdentityBinding, ports: tuple[int | None, ...]) -> str | None:
    """The origin of the binding's own tenant, whose keys are trusted to be real from the
    start (None when the binding URL is outside its own domains)."""
    try:
        domains = [domain.lower() for domain in identity.domains]
        return issuer_origin(identity.url, domains, ports)
    except InvalidToken:
        return None
