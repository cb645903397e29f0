"""The Flask extension: configuration at ``init_app``, the policy of which endpoints need a
token, and the ``before_request`` hook. The only module that knows Flask's hooks."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, overload

import requests
from flask import Blueprint, Flask, Request, current_app, g, has_request_context, request
from flask_caching import Cache

from . import cache_backends, signals, transport
from .authenticator import Authenticator, Route
from .authorization import GROUP, SCOPE, Requirement
from .bearer import bearer_credentials
from .bindings import load_bindings
from .config import (
    ConfigError,
    Settings,
    foreign_audiences_warning,
    is_enabled,
    load_settings,
    warn_unknown_keys,
)
from .constants import (
    BINDING_POLL_SECONDS,
    EXTENSION_NAME,
    G_ATTRIBUTE,
    INCOMING_CORRELATION_HEADERS,
)
from .context import TokenContext, current_token, resolve_g
from .core import build_core
from .credentials import (
    BindingWatcher,
    ClientIdentity,
    CredentialReloader,
    Credentials,
)
from .errors import IASPKCEError, InsufficientScope, MissingToken
from .keys import DEFAULT_KEY_LIMITS, JWKSCache, KeyLimits
from .xsuaa import XsuaaHop

logger = logging.getLogger("flask_ias_pkce")

F = TypeVar("F", bound=Callable[..., Any])

# What an endpoint needs.
SKIP: Final = "skip"
REQUIRED: Final = "required"
OPTIONAL: Final = "optional"
#: The ``Authorization`` header's scheme as clients send it (the scheme is
#: case-insensitive; other spellings take the full path).
_BEARER: Final = "Bearer "


@dataclass(eq=False)  # compared and hashed by identity: one per app
class AppState:
    """What ``app.extensions["ias_pkce"]`` holds for one app."""

    settings: Settings
    authenticator: Authenticator
    keys: JWKSCache
    policy: transport.HttpPolicy
    reloader: CredentialReloader | None = None
    watcher: BindingWatcher | None = None
    modes: dict[str, str] = field(default_factory=dict)
    #: The second hop, when the xsuaa binding allows it (scope rules need it).
    xsuaa: XsuaaHop | None = None
    #: Per endpoint that takes a token (required or optional), the authorization rules
    #: resolved at its first request (with scope names qualified by the xsappname); what
    #: the hook's fast path looks up. Emptied whenever a mark or rule is added.
    rules: dict[str, tuple[Requirement, ...]] = field(default_factory=dict)
    #: Counts :meth:`forget_endpoints` calls: what a request resolved under an older
    #: generation is never written back (a rule added meanwhile would be lost).
    generation: int = 0
    _endpoints_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def forget_endpoints(self) -> None:
        """Forget what was resolved per endpoint: a mark or rule added later takes effect."""
        with self._endpoints_lock:
            self.generation += 1
            self.rules.clear()
            self.modes.clear()

    def remember_endpoint(
        self, endpoint: str, generation: int, mode: str, rules: tuple[Requirement, ...] | None
    ) -> None:
        """Keep what a request resolved for ``endpoint`` (its ``mode``, and its ``rules``
        when it takes a token), unless marks or rules changed since it began
        (``generation``)."""
        with self._endpoints_lock:
            if generation != self.generation:
                return
            self.modes[endpoint] = mode
            if rules is not None:
                self.rules[endpoint] = rules


class IASPKCE:
    """Lets public (PKCE) clients of SAP Identity Authentication call a Flask app.

    Each protected request's ``Authorization: Bearer`` token is verified, exchanged at IAS
    for a token whose audience holds the XSUAA client id (once per token: the result is
    cached), and offered to the view as :data:`~flask_ias_pkce.current_token`.

    :param app: the app, or ``None`` to call :meth:`init_app` later.
    :param clock: seconds since the epoch; tests pass a fake one.
    :param key_limits: how long signing keys are kept and how often they are fetched
        (:class:`~flask_ias_pkce.KeyLimits`); the defaults are production's.

    The extension object keeps no app: several apps can share one instance, and each
    app's state lives in ``app.extensions["ias_pkce"]``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        clock: Callable[[], float] = time.time,
        key_limits: KeyLimits = DEFAULT_KEY_LIMITS,
    ) -> None:
        self._clock = clock
        self._key_limits = key_limits
        self._view_marks: dict[Callable[..., Any], str] = {}
        self._blueprint_marks: dict[object, str] = {}
        self._view_rules: dict[Callable[..., Any], tuple[Requirement, ...]] = {}
        self._blueprint_rules: dict[object, tuple[Requirement, ...]] = {}
        # The states of the apps initialised so far, so that a rule added later is checked
        # against them at once and reaches their per-endpoint caches. Weak: the app owns them.
        self._states: weakref.WeakSet[AppState] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    # -- set-up -------------------------------------------------------------------------

    def init_app(self, app: Flask, cache: Cache | None = None) -> None:
        """Read the configuration and service bindings, build the IAS client and the
        token cache, and register the ``before_request`` hook.

        :param cache: a :class:`flask_caching.Cache` of the host app to keep exchanged
            tokens in; by default the extension makes its own from ``IAS_PKCE_CACHE_*``.
        :raises ~flask_ias_pkce.bindings.BindingError: no usable IAS binding was found.
        :raises ~flask_ias_pkce.config.ConfigError: a configuration value is wrong.
        :raises RuntimeError: flask-ias-pkce is already initialised on ``app``.
        """
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                "flask-ias-pkce is already initialised on this app: call init_app once per app"
            )
        warn_unknown_keys(app.config)
        if not is_enabled(app.config):
            # Off means off: no binding is looked up, no hook runs, current_token stays
            # empty. Host apps' tests that do not care about tokens need no IAS at all.
            logger.info("flask-ias-pkce is disabled (IAS_PKCE_ENABLED = False)")
            return
        bindings = load_bindings(app.config, os.environ)
        settings = load_settings(app.config, bindings)
        audience_warning = foreign_audiences_warning(settings)
        if audience_warning is not None:
            logger.warning("%s", audience_warning)
        backend = (
            cache_backends.host_backend(app, cache)
            if cache is not None
            else cache_backends.own_backend(app, settings.cache, bindings)
        )
        core = build_core(
            settings,
            backend,
            clock=self._clock,
            correlation_id=correlation_id,
            key_limits=self._key_limits,
        )
        routes, xsuaa_hop = core.routes, core.xsuaa
        state = AppState(settings, core.authenticator, routes[0].keys, core.policy, xsuaa=xsuaa_hop)
        _check_scopes_possible(state, self._rules())
        app.extensions[EXTENSION_NAME] = state
        self._states.add(state)
        self._watch_credentials(app, state, routes, xsuaa_hop)
        app.before_request(self._hook(state))
        logger.info(
            "flask-ias-pkce ready: binding%s from %s, cache %s, XSUAA hop %s",
            "s" if len(routes) > 1 else "",
            "; ".join(
                f"{identity.source} ({'mTLS' if identity.uses_certificate else 'client secret'})"
                for identity in bindings.identities
            ),
            type(backend).__name__,
            "off" if xsuaa_hop is None else "mTLS" if xsuaa_hop.uses_certificate else "secret",
        )

    def _watch_credentials(
        self, app: Flask, state: AppState, routes: Sequence[Route], xsuaa_hop: XsuaaHop | None
    ) -> None:
        # The app only by weak reference: neither the reloader nor the watcher thread may
        # keep an app alive (Flask's extension rules).
        app_ref = weakref.ref(app)
        config = app.config

        def announce(credentials: Credentials, expiry: float) -> None:
            sender = app_ref()
            if sender is not None and signals.credentials_expiring.receivers:
                signals.credentials_expiring.send(
                    sender,
                    binding=credentials.name,
                    expires_at=expiry,
                    remaining=expiry - self._clock(),
                )

        reloader = CredentialReloader(
            lambda: load_bindings(config, os.environ),
            [route.exchanger.credentials for route in routes],
            xsuaa_hop.credentials if xsuaa_hop is not None else None,
            clock=self._clock,
            announce=announce,
        )
        for route in routes:
            route.exchanger.reread = reloader.reread
        if xsuaa_hop is not None:
            xsuaa_hop.reread = reloader.reread
        state.reloader = reloader
        reloader.check_expiry()
        root = os.environ.get("SERVICE_BINDING_ROOT")
        if root and os.path.isdir(root):
            state_ref = weakref.ref(state)
            state.watcher = BindingWatcher(
                root,
                reloader.reload,
                alive=lambda: app_ref() is not None and state_ref() is not None,
                interval=BINDING_POLL_SECONDS,
            ).start()

    def reload_credentials(self, app: Flask | None = None) -> bool:
        """Read the app's bindings again from where they were found (``app.config``,
        ``VCAP_SERVICES``, ``$SERVICE_BINDING_ROOT``) and use their certificate and key (or
        secret) for the next call to IAS and XSUAA.

        For apps that get new credentials some other way than files the extension watches.
        Credentials that cannot be used (a binding that does not read, a certificate and
        key that do not belong together, an expired certificate) change nothing.

        :param app: the app; the current app when ``None``.
        :returns: whether other credentials are in use now (never, when the extension is
            disabled: it holds no credentials then).
        """
        target = app if app is not None else _app()
        state: AppState | None = target.extensions.get(EXTENSION_NAME)
        if state is None or state.reloader is None:
            return False
        return state.reloader.reload()

    # -- policy -------------------------------------------------------------------------

    @overload
    def exempt(self, view_or_blueprint: Blueprint) -> Blueprint: ...

    @overload
    def exempt(self, view_or_blueprint: F) -> F: ...

    def exempt(self, view_or_blueprint: Any) -> Any:
        """Never ask for a token on this view, or on every view of this blueprint (and
        its nested blueprints). Usable as a decorator."""
        self._mark(view_or_blueprint, SKIP)
        return view_or_blueprint

    def protect(
        self,
        blueprint: Blueprint,
        *,
        groups: str | Iterable[str] = (),
        scopes: str | Iterable[str] = (),
        all: bool = False,
    ) -> Blueprint:
        """Require a token on every view of ``blueprint`` (for ``IAS_PKCE_PROTECT =
        "marked"``), and, when given, one of ``groups`` and one of ``scopes`` (all of
        them with ``all=True``), as :meth:`require_groups` and :meth:`require_scopes` do.

        The innermost marked blueprint decides: a nested blueprint's own ``protect`` or
        ``exempt`` replaces its parent's rules. A view's own rules add to its blueprint's;
        both must hold.

        :raises ~flask_ias_pkce.config.ConfigError: ``scopes`` without a usable xsuaa
            binding (also raised by a later ``init_app``).
        """
        if not isinstance(blueprint, Blueprint):
            raise TypeError("protect() takes a Blueprint; use @required for a view")
        # One name may come as a string: it is that name, never its letters.
        listed = [
            (kind, (names,) if isinstance(names, str) else tuple(names))
            for kind, names in ((GROUP, groups), (SCOPE, scopes))
        ]
        rules = tuple(Requirement.of(kind, names, all) for kind, names in listed if names)
        self._check_new_rules(rules)
        self._mark(blueprint, REQUIRED)
        self._blueprint_rules[blueprint] = rules
        self._rules_changed()
        return blueprint

    def require_groups(self, *groups: str, all: bool = False) -> Callable[[F], F]:
        """Decorator: the view needs a token whose ``groups`` claim (of the exchanged IAS
        token) holds one of ``groups``, or all of them with ``all=True``; else 403
        ``insufficient_scope``. IAS sends one group as a string and several as a list;
        any other value counts as no groups. The check reads the cached claims: a cache
        hit costs no call to IAS.

        The view needs a token whatever the mode; rules of its blueprint hold as well.

        :raises ~flask_ias_pkce.config.ConfigError: the view is ``exempt`` or ``optional``.
        """
        return self._view_rule(Requirement.of(GROUP, groups, all))

    def require_scopes(self, *scopes: str, all: bool = False) -> Callable[[F], F]:
        """Decorator: the view needs a token whose XSUAA token (the second hop) holds one
        of ``scopes``, or all of them with ``all=True``; else 403 ``insufficient_scope``.

        Write local scopes, without the ``<xsappname>.`` prefix (``"Read"``, as SAP's
        ``checkLocalScope`` takes them); they are compared with the prefix of the xsuaa
        binding's ``xsappname``. The XSUAA token is obtained once per IAS token and cached.

        :raises ~flask_ias_pkce.config.ConfigError: the view is ``exempt`` or ``optional``,
            or an app of this extension has no usable xsuaa binding (with ``xsappname``);
            if ``init_app`` comes later, it raises instead.
        """
        return self._view_rule(Requirement.of(SCOPE, scopes, all))

    def _view_rule(self, rule: Requirement) -> Callable[[F], F]:
        self._check_new_rules((rule,))

        def mark(view: F) -> F:
            if not callable(view) or isinstance(view, Blueprint):
                raise TypeError("require_groups() and require_scopes() decorate a view function")
            mode = self._view_marks.get(view)
            if mode in (SKIP, OPTIONAL):
                raise ConfigError(_contradiction(view, mode))
            self._view_marks[view] = REQUIRED
            self._view_rules[view] = (*self._view_rules.get(view, ()), rule)
            self._rules_changed()
            return view

        return mark

    def _rules(self) -> Iterable[Requirement]:
        for rules in (*self._view_rules.values(), *self._blueprint_rules.values()):
            yield from rules

    def _check_new_rules(self, rules: tuple[Requirement, ...]) -> None:
        for state in self._states:
            _check_scopes_possible(state, rules)

    def _rules_changed(self) -> None:
        # Rules resolve per endpoint once; a rule added after the first requests must
        # still take effect, so every app forgets what it resolved (and the modes, since
        # a rule makes its view need a token).
        for state in self._states:
            state.forget_endpoints()

    def required(self, view: F) -> F:
        """Decorator: this view needs a valid token, whatever the blueprint or mode says."""
        self._mark(view, REQUIRED)
        return view

    def optional(self, view: F) -> F:
        """Decorator: a token is used when sent (and must then be valid); without one the
        view runs with a falsy ``current_token``."""
        self._mark(view, OPTIONAL)
        return view

    def _mark(self, target: Any, mode: str) -> None:
        if isinstance(target, Blueprint):
            self._blueprint_marks[target] = mode
            if self._blueprint_rules.pop(target, None):
                self._rules_changed()
        elif callable(target):
            if mode != REQUIRED and target in self._view_rules:
                raise ConfigError(_contradiction(target, mode))
            self._view_marks[target] = mode
        else:
            raise TypeError("expected a view function or a Blueprint")
        # A mark made after an endpoint's first request takes effect at its next one.
        for state in list(self._states):
            state.forget_endpoints()

    def _resolve(self, app: Flask, state: AppState, endpoint: str) -> str:
        mark = self._view_marks.get(app.view_functions.get(endpoint))  # type: ignore[arg-type]
        if mark is not None:
            return mark
        if _serves_static_files(app, endpoint):
            return SKIP
        # Innermost blueprint first: a nested blueprint's own mark beats its parent's.
        for name in request.blueprints:
            blueprint = app.blueprints.get(name)
            mark = self._blueprint_marks.get(blueprint) if blueprint is not None else None
            if mark is not None:
                return mark
        return REQUIRED if state.settings.protect == "all" else SKIP

    def _resolve_rules(self, state: AppState, current: Request) -> tuple[Requirement, ...]:
        """The endpoint's rules: its innermost marked blueprint's, then the view's own."""
        app = _app()
        inherited: tuple[Requirement, ...] = ()
        for name in current.blueprints:
            blueprint = app.blueprints.get(name)
            if blueprint in self._blueprint_marks:
                inherited = self._blueprint_rules.get(blueprint, ())
                break
        view = app.view_functions.get(current.endpoint)  # type: ignore[arg-type]
        # Group rules first: a refusal for want of a group then costs no call to XSUAA.
        rules = sorted(
            (*inherited, *self._view_rules.get(view, ())),  # type: ignore[arg-type]
            key=lambda rule: rule.kind != GROUP,
        )
        # Checked when each rule was added; the xsuaa hop is there when a scope rule is.
        prefix = state.xsuaa.scope_prefix if state.xsuaa is not None else None
        return tuple(rule.qualified(prefix or "") if rule.kind == SCOPE else rule for rule in rules)

    # -- the hook -----------------------------------------------------------------------

    def _hook(self, state: AppState) -> Callable[[], None]:
        """The ``before_request`` function of one app, bound to its state: no lookup of
        the app on the hot path. A plain function rather than a ``functools.partial``:
        Flask asks :mod:`inspect` on every request whether each hook is a coroutine
        function, and a partial of a method takes inspect's slow path (about 1 µs).

        It serves the common request, a well-formed ``Bearer`` header whose token the
        in-process tier holds, to an endpoint already seen, in a few steps; anything else
        takes the full path (:meth:`_authenticate_request`). Both give the same answer: a
        hit is only possible for a string that passed every check of the full path, and
        every condition the full path treats apart (``OPTIONS``, a token in the query, a
        listener of ``cache_hit``, an endpoint not resolved yet) leaves the fast path.
        """
        cache = state.authenticator.cache
        fast, in_process = cache.has_in_process_tier, cache.in_process
        longest = state.settings.max_token_bytes + len(_BEARER)
        rules_of, xsuaa = state.rules, state.xsuaa
        current_request = request._get_current_object  # type: ignore[attr-defined]
        cache_hit = signals.cache_hit

        def authenticate_request() -> None:
            current = current_request()
            authorization = current.environ.get("HTTP_AUTHORIZATION")
            if (
                fast
                and authorization is not None
                and authorization.startswith(_BEARER)
                and len(authorization) <= longest
                and not cache_hit.receivers
                and current.method != "OPTIONS"
                and not _may_hold_token(current.query_string)
            ):
                rule = current.url_rule  # None: not routed (404, 405, redirect)
                rules = rules_of.get(rule.endpoint) if rule is not None else None
                if rules is not None:
                    token = authorization[len(_BEARER) :]
                    entry = in_process(token)
                    if entry is not None:
                        context = TokenContext(entry, token, True, xsuaa)
                        setattr(resolve_g(), G_ATTRIBUTE, context)
                        if rules:
                            self._check_rules(state, rules, context, time.perf_counter())
                        return
            self._authenticate_request(state)

        return authenticate_request

    def _authenticate_request(self, state: AppState) -> None:
        settings = state.settings
        # Whatever an earlier request left in g (an app context pushed around several
        # requests, as tests do, is shared by them) is not this request's token.
        resolve_g().pop(G_ATTRIBUTE, None)
        # One proxy lookup instead of one per attribute: this runs on every request.
        current = request._get_current_object()  # type: ignore[attr-defined]
        if current.method == "OPTIONS" and _is_automatic_options(current):
            return
        endpoint = current.endpoint
        if endpoint is None or current.routing_exception is not None:
            return  # 404 and 405 answer without a challenge
        generation = state.generation
        mode = state.modes.get(endpoint)
        rules = state.rules.get(endpoint)
        if mode is None or (mode != SKIP and rules is None):
            mode = self._resolve(_app(), state, endpoint)
            rules = self._resolve_rules(state, current) if mode != SKIP else None
            state.remember_endpoint(endpoint, generation, mode, rules)
        if mode == SKIP or rules is None:
            return
        # What ``headers.get("Authorization")`` returns, without its key normalisation.
        authorization = current.environ.get("HTTP_AUTHORIZATION")
        token_in_query = _token_in_query(current)
        # An optional view under a blueprint with rules still needs a token: an anonymous
        # caller holds no group and no scope.
        if mode == OPTIONAL and not rules and authorization is None and not token_in_query:
            setattr(g, G_ATTRIBUTE, None)
            return
        started = time.perf_counter()
        try:
            token = bearer_credentials(
                authorization,
                max_bytes=settings.max_token_bytes,
                token_in_query=token_in_query,
            )
            context = state.authenticator.authenticate(token)
        except IASPKCEError as error:
            error.realm = settings.realm
            _report_refusal(error, time.perf_counter() - started)
            raise
        setattr(resolve_g(), G_ATTRIBUTE, context)
        if not context.from_cache:
            _report_exchange(context, time.perf_counter() - started)
        elif signals.cache_hit.receivers:
            # The hot path: no log line, and no arguments built unless someone listens.
            signals.cache_hit.send(
                _app(),
                subject=context.claims.get("sub"),
                passthrough=context.passthrough,
                duration=time.perf_counter() - started,
            )
        # Authentication first (a bad token is a 401 whatever the rules), then the rules.
        if rules:
            self._check_rules(state, rules, context, started)

    def _check_rules(
        self,
        state: AppState,
        rules: tuple[Requirement, ...],
        context: TokenContext,
        started: float,
    ) -> None:
        try:
            _authorize(rules, context)
        except IASPKCEError as error:
            # The view does not run: nothing of the token stays in g.
            delattr(resolve_g(), G_ATTRIBUTE)
            error.realm = state.settings.realm
            _report_refusal(error, time.perf_counter() - started)
            raise

    # -- outbound -----------------------------------------------------------------------

    def session(self, *, mtls: bool | None = None) -> requests.Session:
        """A :class:`requests.Session` that sends the request's exchanged token as Bearer.

        Use it for calls to XSUAA-aware services inside a request. The token is read at
        send time, per request; so is the client certificate.

        :param mtls: ``True``: every HTTPS call also presents the binding's client
            certificate (mTLS), as services on certificate routes that check a token's
            ``cnf`` claim need; the key stays in memory, as for calls to IAS. ``None``
            (the default): the certificate goes along when the request's exchanged token
            is bound to it (carries ``cnf.x5t#S256``). ``False``: never.

        TLS verification is ``requests``' default (``verify=`` per request overrides it).
        """
        session = requests.Session()
        session.auth = _CurrentTokenAuth()
        if mtls is not False:
            session.mount("https://", _DownstreamAdapter(always=mtls is True))
        return session


class _DownstreamAdapter(transport.ClientCertificateAdapter):
    """Presents the current app's client certificate when asked to, or when the request's
    token is bound to a certificate."""

    def __init__(self, *, always: bool) -> None:
        self._always = always
        super().__init__(self._chosen_identity, pool_connections=10, pool_maxsize=10)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:
        if self.identity() is None:
            # No certificate to present: TLS exactly as requests does it.
            return requests.adapters.HTTPAdapter.build_connection_pool_key_attributes(
                self, request, verify, cert
            )
        return super().build_connection_pool_key_attributes(request, verify, cert)

    def _chosen_identity(self) -> ClientIdentity | None:
        if not self._always and not _certificate_bound(current_token):
            return None
        state: AppState = _app().extensions[EXTENSION_NAME]
        identity = _route_of(state, current_token).exchanger.credentials.identity
        if identity is None:
            raise RuntimeError("ias.session(mtls=True): the IAS binding has no client certificate")
        return identity


def _route_of(state: AppState, token: Any) -> Route:
    """The binding that obtained ``token``: the first whose client id is in its ``aud``
    (as the request was routed), else the first binding."""
    routes = state.authenticator.routes
    audience = token.claims.get("aud") if token else None
    held = {audience} if isinstance(audience, str) else set(audience or ())
    return next((route for route in routes if route.binding.client_id in held), routes[0])


def _certificate_bound(token: Any) -> bool:
    """Whether ``token`` (a TokenContext or nothing) carries ``cnf.x5t#S256`` (RFC 8705)."""
    if not token:
        return False
    confirmation = token.claims.get("cnf")
    return isinstance(confirmation, Mapping) and isinstance(confirmation.get("x5t#S256"), str)


def _token_in_query(current: Request) -> bool:
    """Whether the query has a parameter named exactly ``access_token`` (RFC 6750 2.3)."""
    # Parsed only when it may hold one.
    return _may_hold_token(current.query_string) and "access_token" in current.args


def _may_hold_token(query: bytes) -> bool:
    """Whether a query string may name ``access_token``: the name itself, or a
    percent-encoded name."""
    return b"access_token" in query or b"%" in query


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


_CORRELATION_ATTRIBUTE: Final = "_ias_pkce_correlation_id"


def correlation_id() -> str:
    """The correlation id of the current request: its ``X-Correlation-ID`` or
    ``X-Vcap-Request-Id`` when that is a short token of safe characters, else a new one
    (the same for the whole request). Outside a request, a new one per call.

    Worked out only when a call to IAS or XSUAA is made or a line is logged: a cache hit
    never needs it.
    """
    if not has_request_context():
        return transport.new_correlation_id()
    known: str | None = g.get(_CORRELATION_ATTRIBUTE)
    if known is None:
        headers = request.headers
        for name in INCOMING_CORRELATION_HEADERS:
            known = transport.checked_correlation_id(headers.get(name))
            if known is not None:
                break
        else:
            known = transport.new_correlation_id()
        setattr(g, _CORRELATION_ATTRIBUTE, known)
    return known


def _authorize(rules: tuple[Requirement, ...], context: TokenContext) -> None:
    """Raise :class:`~flask_ias_pkce.InsufficientScope` for the first rule not met.

    Groups come from the cached claims, scopes from the cached XSUAA token: a cache hit
    costs no call to IAS or XSUAA.
    """
    for rule in rules:
        held = context.groups if rule.kind == GROUP else context.xsuaa_scopes()
        if not rule.met_by(held):
            description = (
                "The token lacks a group this resource needs"
                if rule.kind == GROUP
                else "The token lacks a scope this resource needs"
            )
            raise InsufficientScope(description, reason=rule.reason, needed=rule.challenge_names())


def _check_scopes_possible(state: AppState, rules: Iterable[Requirement]) -> None:
    """Scope rules need the second hop and the xsappname: refuse them at registration."""
    if not any(rule.kind == SCOPE for rule in rules):
        return
    if state.xsuaa is None:
        raise ConfigError(
            "require_scopes() and protect(scopes=...) need the XSUAA token of the second "
            "hop, but there is no usable xsuaa binding (url and a secret or certificate)"
        )
    if state.xsuaa.scope_prefix is None:
        raise ConfigError(
            "require_scopes() and protect(scopes=...) compare scopes with the xsuaa "
            "binding's xsappname, but the binding has none"
        )


def _contradiction(view: Callable[..., Any], mode: str | None) -> str:
    name = getattr(view, "__qualname__", repr(view))
    how = "exempt" if mode == SKIP else "optional"
    return (
        f"The view {name} is {how} and has a group or scope requirement: a requirement "
        "needs a token, so remove one of the two"
    )


def _report_exchange(context: TokenContext, duration: float) -> None:
    """One log line and :data:`~flask_ias_pkce.signals.token_exchanged` per exchange."""
    claims = context.claims
    issuer = claims.get("ias_iss", claims.get("iss"))
    # The endpoint, not the path: paths can hold user data (and, decoded, line breaks).
    logger.info(
        "Token %s for %s %s (issuer %s, %.0f ms, correlation %s)",
        "passed through, it carries the XSUAA audience," if context.passthrough else "exchanged",
        request.method,
        request.endpoint,
        issuer,
        duration * 1000,
        correlation_id(),
    )
    if signals.token_exchanged.receivers:
        signals.token_exchanged.send(
            _app(),
            subject=claims.get("sub"),
            issuer=issuer,
            passthrough=context.passthrough,
            duration=duration,
        )


def _report_refusal(error: IASPKCEError, duration: float) -> None:
    """One log line and a signal per refused request.

    Refusals of what the client sent are the client's business: INFO, and DEBUG for a
    request that sent no credentials at all (crawlers, health probes, browsers). IAS
    failing us is the operator's: WARNING for outages that mend themselves (503, 504),
    ERROR for a refusal of our client or an unusable answer (502), which needs a fix.
    """
    code = error.code or 500
    if code >= 500:
        level = logging.ERROR if code == 502 else logging.WARNING
        signal = signals.exchange_failed
    else:
        level = logging.DEBUG if isinstance(error, MissingToken) else logging.INFO
        signal = signals.token_rejected
    logger.log(
        level,
        "Refused %s %s (correlation %s): %d %s, reason %s",
        request.method,
        request.endpoint,
        correlation_id(),
        code,
        error.error,
        error.reason,
    )
    if signal.receivers:
        signal.send(_app(), reason=error.reason, error=error.error, status=code, duration=duration)


def _is_automatic_options(current: Request) -> bool:
    """Whether Flask answers this OPTIONS itself, running no view (a CORS preflight to an
    ordinary view included). A view that declares OPTIONS is protected like any method,
    preflight or not: its author handles CORS there, and the view runs."""
    return bool(getattr(current.url_rule, "provide_automatic_options", False))


def _serves_static_files(app: Flask, endpoint: str) -> bool:
    """Whether ``endpoint`` is Flask's own route to the app's or a blueprint's static
    folder. Decided by the view function, not by the name: a view of the user's that is
    merely called ``static`` is protected like any other."""
    view = app.view_functions.get(endpoint)
    if view is None:
        return False
    # A blueprint's static route is its bound ``send_static_file``, under "<name>.static".
    owner = getattr(view, "__self__", None)
    if isinstance(owner, Blueprint | Flask):
        return (
            owner.has_static_folder
            and endpoint.rpartition(".")[2] == "static"
            and view == owner.send_static_file
        )
    # The app's static route is a lambda of Flask's own calling ``send_static_file`` (it
    # holds the app by weak reference): endpoint "static", defined in Flask's module.
    return (
        endpoint == "static"
        and app.has_static_folder
        and getattr(view, "__module__", None) == Flask.__module__
    )


class _CurrentTokenAuth(requests.auth.AuthBase):
    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        if not current_token:
            raise RuntimeError("No token in this request: the endpoint is exempt or optional")
        prepared.headers["Authorization"] = f"Bearer {current_token.token}"
        return prepared
