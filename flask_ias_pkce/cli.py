"""``flask ias-pkce``: check the IAS binding of a deployed app, exchange a token by hand.

Registered for every Flask app through the ``flask.commands`` entry point (as Flask-Migrate
registers ``flask db``), so it needs no code in the host app::

    flask --app myapp ias-pkce check
    flask --app myapp ias-pkce exchange < public-token.txt

Both commands use the objects the extension built at ``init_app`` (the same session, TLS
settings, timeouts and cache), so what passes here passes for requests. Neither prints a
token, a secret or a key.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import sys
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from .bearer import parse_bearer
from .bindings import BindingError
from .cache import shared_backend
from .config import ConfigError, foreign_audiences_warning, is_enabled
from .constants import EXTENSION_NAME
from .credentials import EXPIRY_WARNING_SECONDS, expiry_date
from .errors import IASPKCEError
from .extension import _State
from .service import Route

__all__ = ["ias_pkce"]


def _b64(document: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


#: A JWS-shaped assertion that no IAS can accept (no key id, a made-up signature). A token
#: endpoint that authenticates the client before it looks at the assertion answers it with
#: ``invalid_grant``: proof that our credentials work, without a real user's token.
CHECK_ASSERTION = (
    f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}."
    f"{_b64({'iss': 'flask-ias-pkce-check', 'sub': 'not-a-user'})}."
    f"{_b64({'signature': 'none'})}"
)

#: The ``flask ias-pkce`` command group (``check``, ``exchange``); tests invoke it with
#: ``app.test_cli_runner().invoke(ias_pkce, ["check"])``.
ias_pkce = AppGroup("ias-pkce", help="flask-ias-pkce: check the IAS binding, exchange a token.")


class _Steps:
    """Prints one PASS, FAIL, SKIP or WARN line per step and counts the outcomes."""

    def __init__(self) -> None:
        self.counts = {"passed": 0, "failed": 0, "skipped": 0, "warned": 0}

    def passed(self, step: str, detail: str) -> None:
        self._line("PASS", "passed", step, detail)

    def failed(self, step: str, detail: str) -> None:
        self._line("FAIL", "failed", step, detail)

    def skipped(self, step: str, detail: str) -> None:
        self._line("SKIP", "skipped", step, detail)

    def warned(self, step: str, detail: str) -> None:
        self._line("WARN", "warned", step, detail)

    def detail(self, text: str) -> None:
        click.echo(f"      {'':<12} {text}")

    def _line(self, word: str, count: str, step: str, detail: str) -> None:
        self.counts[count] += 1
        click.echo(f"{word}  {step:<12} {detail}")

    def summary(self) -> str:
        outcome = "FAILED" if self.counts["failed"] else "OK"
        counted = ", ".join(f"{n} {name}" for name, n in self.counts.items() if n)
        return f"result: {outcome} ({counted})"


def _state() -> _State:
    state = current_app.extensions.get(EXTENSION_NAME)
    if state is None and not is_enabled(current_app.config):
        click.echo(
            "FAIL  extension    flask-ias-pkce is disabled on this app (IAS_PKCE_ENABLED = "
            "False): no binding was read"
        )
        sys.exit(1)
    if state is None:
        click.echo(
            "FAIL  extension    flask-ias-pkce is not initialised on this app "
            "(call IASPKCE(app) or ias.init_app(app) in the app factory)"
        )
        sys.exit(1)
    return state  # type: ignore[no-any-return]


def _milliseconds(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f} ms"


def _failure(error: IASPKCEError) -> str:
    return f"{error.code} {error.error}, reason {error.reason}: {error.description}"


def _load_app() -> Flask:
    """The app of the ``flask`` command, loaded here rather than by ``with_appcontext``: a
    missing or broken binding makes ``init_app`` raise, and that is the check's first
    finding, not a traceback."""
    info = click.get_current_context().ensure_object(ScriptInfo)
    try:
        return info.load_app()
    except (BindingError, ConfigError) as error:
        step = "binding" if isinstance(error, BindingError) else "config"
        click.echo(f"FAIL  {step:<12} {error}")
        click.echo("result: FAILED (1 failed)")
        sys.exit(1)


@ias_pkce.command("check", with_appcontext=False)
def check() -> None:
    """Check the binding, TLS, discovery, JWKS and client authentication at IAS.

    Prints one PASS, FAIL, SKIP or WARN line per step and exits with status 1 when a step
    failed; a warning alone does not fail the check, and a missing binding is a
    ``FAIL binding`` line that says where it was looked for. Client authentication is
    tested with an assertion no IAS accepts: ``invalid_grant`` is the expected answer,
    ``invalid_client`` means that the binding's credentials are wrong.
    """
    with _load_app().app_context():
        _check()


def _check() -> None:
    state = _state()
    steps = _Steps()
    click.echo(f"flask-ias-pkce check of app {current_app.name!r}")
    routes = state.authenticator.routes
    for number, route in enumerate(routes, start=1):
        if len(routes) > 1:
            identity = route.binding
            click.echo(
                f"-- IAS binding {number} of {len(routes)}: {identity.name or identity.source}"
            )
        _check_binding(steps, state, route)

    click.echo(steps.summary())
    if steps.counts["failed"]:
        sys.exit(1)


def _check_binding(steps: _Steps, state: _State, route: Route) -> None:
    """The steps of ``flask ias-pkce check`` for one IAS binding, with its own keys and
    client."""
    settings = state.settings
    bindings = settings.bindings
    identity = route.binding
    method = "mTLS (certificate and key)" if identity.uses_certificate else "client secret"
    origin = route.home_issuer

    # What was found and where; reprs of bindings mask secrets and keys.
    steps.passed("binding", f"identity from {identity.source}, authenticates by {method}")
    steps.detail(repr(identity))
    steps.detail(
        f"XSUAA client id {settings.xsuaa_client_id!r} from "
        + (bindings.xsuaa.source if bindings.xsuaa is not None else "app.config")
    )
    steps.detail(f"accepted audiences {sorted(route.audiences)}")
    _check_certificate_expiry(steps, state)
    audience_warning = (
        foreign_audiences_warning(settings) if len(bindings.identities) == 1 else None
    )
    if audience_warning is not None:
        steps.warned("audience", audience_warning)
    trust = "the system CA bundle" if settings.verify is True else str(settings.verify)
    steps.detail(f"TLS: IAS certificate verified against {trust}")
    _check_cache(steps, state)

    # The calls the key cache makes for the binding's own tenant, step by step.
    keys = route.keys
    headers = keys.headers({"app_tid": identity.app_tid} if identity.app_tid else {})
    connected = True
    jwks_uri: str | None = None
    started = time.perf_counter()
    try:
        jwks_uri = keys.discover(origin, headers)
    except IASPKCEError as error:
        if error.reason in ("discovery_tls_error", "discovery_unreachable"):
            connected = False
            steps.failed(
                "tls", f"no TLS connection to {urlsplit(origin).netloc}: {_failure(error)}"
            )
            if error.reason == "discovery_tls_error":
                steps.detail(_tls_diagnosis(origin, settings.verify, settings.timeout[0], trust))
        else:
            steps.passed("tls", f"connected to {urlsplit(origin).netloc}")
            steps.failed("discovery", _failure(error))
    else:
        steps.passed("tls", f"connected to {urlsplit(origin).netloc}, certificate verified")
        steps.passed("discovery", f"jwks_uri {jwks_uri} ({_milliseconds(started)})")
    if not connected:
        steps.skipped("discovery", "needs a TLS connection")
    if jwks_uri is None:
        steps.skipped("jwks", "needs discovery")
    else:
        started = time.perf_counter()
        try:
            found = keys.fetch_keys(origin, jwks_uri, headers)
        except IASPKCEError as error:
            steps.failed("jwks", _failure(error))
        else:
            kids = ", ".join(sorted(found))
            steps.passed("jwks", f"{len(found)} signing key(s): {kids} ({_milliseconds(started)})")

    if connected:
        _check_client_authentication(steps, route, origin, method)
    else:
        steps.skipped("client auth", "needs a TLS connection")


def _check_certificate_expiry(steps: _Steps, state: _State) -> None:
    credentials = state.authenticator.exchanger.credentials
    expiry = credentials.expiry()
    if expiry is None:
        return
    remaining = expiry - time.time()
    line = f"client certificate expires on {expiry_date(expiry)} (in {remaining / 86400:.1f} days)"
    if remaining <= EXPIRY_WARNING_SECONDS:
        steps.warned("certificate", f"{line}: renew the binding")
    else:
        steps.passed("certificate", line)


def _check_cache(steps: _Steps, state: _State) -> None:
    """Which cache is in use; for a shared one (Redis, its Cluster, Sentinel) one PING."""
    backend = state.authenticator.cache.backend
    shared = shared_backend(backend)
    if shared is None:
        steps.detail(f"cache: in-process ({type(backend).__name__}), not shared between processes")
        return
    started = time.perf_counter()
    problem = shared.check()
    if problem is None:
        steps.passed("cache", f"{shared.mode} at {shared.where}: PING ({_milliseconds(started)})")
    else:
        steps.failed("cache", f"{shared.mode} at {shared.where} did not answer PING: {problem}")
        steps.detail(
            "requests are still served, but processes do not share exchanged tokens: "
            "each exchanges on its own"
        )


def _tls_diagnosis(origin: str, verify: bool | str, timeout: float, trust: str) -> str:
    """Say which side of a failed handshake is wrong: a handshake without our client
    certificate succeeds when IAS's certificate is trusted (a server that insists on a
    client certificate refuses only after it)."""
    bundle = DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
    parts = urlsplit(origin)
    host = parts.hostname or ""
    try:
        if os.path.isdir(bundle):
            context = ssl.create_default_context(capath=bundle)
        else:
            context = ssl.create_default_context(cafile=bundle)
        with (
            socket.create_connection((host, parts.port or 443), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            pass
    except ssl.SSLCertVerificationError:
        return f"IAS's certificate is not signed by a CA in {trust} (IAS_PKCE_VERIFY)"
    except OSError:
        return "the TLS handshake fails even without a client certificate"
    return "IAS's certificate is trusted, but IAS refused our client certificate"


def _check_client_authentication(steps: _Steps, route: Route, origin: str, method: str) -> None:
    identity = route.binding
    exchanger = route.exchanger
    started = time.perf_counter()
    try:
        exchanger.exchange(CHECK_ASSERTION, issuer=origin, app_tid=identity.app_tid)
    except IASPKCEError as error:
        if error.reason == "ias_invalid_grant":
            steps.passed(
                "client auth",
                f"IAS accepted our {method} and refused the test assertion with "
                f"invalid_grant, as it should ({_milliseconds(started)})",
            )
            return
        steps.failed("client auth", _failure(error))
        if error.reason == "exchange_refused_invalid_client":
            steps.detail(f"IAS does not accept our {method}: check the binding's credentials")
    else:
        steps.failed("client auth", "IAS accepted an assertion that no IAS should accept")


@ias_pkce.command("exchange")
def exchange() -> None:
    """Read a public token from standard input and print the exchanged token's claims.

    The token runs through the same checks as a request's (bearer grammar, size, local
    verification, passthrough or the exchange at IAS, the exchanged token's checks) and
    lands in the extension's cache like a request's would. Standard output gets the
    claims as JSON, never the token; how it was obtained goes to standard error. Exits
    with status 1 when the token is refused, 2 when standard input holds no token.
    """
    state = _state()
    text = sys.stdin.read().strip()
    scheme, _, rest = text.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else text
    if not token:
        raise click.UsageError("no token on standard input")
    started = time.perf_counter()
    try:
        parsed = parse_bearer(
            f"Bearer {token}", max_bytes=state.settings.max_token_bytes, token_in_query=False
        )
        context = state.authenticator.authenticate(parsed)
    except IASPKCEError as error:
        click.echo(f"refused: {_failure(error)}", err=True)
        sys.exit(1)
    how = (
        "passed through (already carries the XSUAA audience)"
        if context.passthrough
        else "from the cache"
        if context.from_cache
        else "exchanged at IAS"
    )
    expires = datetime.fromtimestamp(context.expires_at, UTC).isoformat(timespec="seconds")
    click.echo(json.dumps(dict(context.claims), indent=2, sort_keys=True))
    click.echo(f"{how} in {_milliseconds(started)}; expires {expires}", err=True)
