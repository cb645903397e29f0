"""``IASEmulator``: a local SAP Identity Authentication over real HTTPS and mTLS.

It speaks the IAS endpoints flask-ias-pkce uses (discovery, ``/oauth2/certs``,
``/oauth2/authorize`` and ``/oauth2/token`` for the PKCE authorization-code grant of a
public client and the jwt-bearer grant of the application), so apps are tested against the
real protocol, TLS and client certificates included, without SAP. It also plays the
XSUAA service under ``/xsuaa`` (``/oauth/token`` for the jwt-bearer grant that turns an
IAS token into an XSUAA token), with its ``/token_keys`` on its ``uaadomain``, this server.
This module is the harness (lifecycle, certificates, bindings, call record, faults); the
protocol itself lives in :mod:`._tenant`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, parse_qsl, urlsplit

import requests

from flask_ias_pkce.testing import _pki
from flask_ias_pkce.testing._server import Request, Response, TLSServer
from flask_ias_pkce.testing._tenant import (
    AUTHORIZE_PATH,
    JWT_BEARER,
    TOKEN_PATH,
    XSUAA_PREFIX,
    XSUAA_TOKEN_PATH,
    Tenant,
    basic_credentials,
    s256,
    usable_redirect_uri,
)

DEFAULT_APP_TID = "0f3c6d2e-6a1b-4c55-9d0e-7b8a2f4c1e90"
#: The redirect URI registered for the public client unless told otherwise: the one
#: :meth:`IASEmulator.pkce_login` uses, and the example app's ``ias-instance.json``.
DEFAULT_REDIRECT_URIS: tuple[str, ...] = ("http://localhost/callback",)
DEFAULT_USERS: Mapping[str, Mapping[str, Any]] = {
    "alice@example.com": {
        "given_name": "Alice",
        "family_name": "Example",
        "groups": ["Employees", "Admins"],
        "user_uuid": "6f1a3c1e-2b4d-4e8f-9a0b-1c2d3e4f5a6b",
    },
    "bob@example.com": {
        "given_name": "Bob",
        "family_name": "Example",
        "groups": ["Employees"],
        "user_uuid": "0b9d7c2a-5e3f-4a1b-8c6d-2e4f6a8b0c1d",
    },
}
#: Stands in for secrets in the call record, which ends up in assertion messages.
_REDACTED = "<redacted>"
#: A subscriber's name: one DNS label, the first of its host ``<name>.localhost``.
_SUBSCRIBER = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _checked_redirect_uri(uri: str) -> str:
    if not usable_redirect_uri(uri):
        raise ValueError(f"a redirect URI is absolute and has no fragment, got {uri!r}")
    return uri


def _setting_name(name: str) -> str:
    """``protect`` is short for ``IAS_PKCE_PROTECT``; other names stay as they are."""
    return f"IAS_PKCE_{name.upper()}" if name.islower() else name


def _environment_text(value: Any) -> str:
    """``value`` as an environment variable that ``from_prefixed_env`` reads back: text as
    it is (a path stays readable), unless JSON would read it as something else."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


@dataclass(frozen=True)
class Call:
    """One request the emulator answered, dropped or faulted.

    ``params`` are the form fields of a POST or the query of a GET (``client_secret``
    redacted); ``headers`` have lower-cased names (``authorization`` redacted but its
    scheme), so a JWKS call shows the ``x-client_id``, ``x-app_tid`` and ``x-azp`` it sent.
    ``client_cn`` is the CN of a client certificate that passed TLS verification;
    ``auth_method`` is how the client presented itself (``tls_client_auth``,
    ``client_secret_basic``, ``client_secret_post`` or ``None``), whether or not that
    succeeded. ``status`` is ``None`` for a dropped connection. ``connection_id`` numbers
    the TCP connections: calls that share one came over keep-alive. ``param_lists`` holds
    every value of each parameter (``resource`` may be repeated), secrets redacted too.
    """

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    client_cn: str | None
    auth_method: str | None
    status: int | None
    connection_id: int
    #: The host the request named (``localhost`` or a subscriber's ``<name>.localhost``).
    host: str | None = None
    #: The client the request presented itself as: the certificate's CN, the user of HTTP
    #: Basic, or the ``client_id`` posted with a secret (whether or not it succeeded).
    client_id: str | None = None
    param_lists: dict[str, list[str]] = field(default_factory=dict)
    #: ``x5t#S256`` of the client certificate the connection presented, if any.
    client_thumbprint: str | None = None

    @property
    def correlation_id(self) -> str | None:
        """The ``X-Correlation-ID`` the client sent, if any."""
        return self.headers.get("x-correlation-id")


def _certificate_thumbprint(der: bytes | None) -> str | None:
    if not der:
        return None
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass
class _Fault:
    status: int | None
    body: bytes | None
    headers: dict[str, str]
    delay: float
    drop: bool
    remaining: int
    header_interval: float = 0.0


class IASEmulator:
    """A local IAS tenant at ``https://localhost:<port>`` with its own CA.

    Use it as a context manager (``with IASEmulator() as ias:``) or call :meth:`start` and
    :meth:`stop`. Clients must trust :attr:`ca_file` (pass ``verify=ias.ca_file`` per
    request: ``REQUESTS_CA_BUNDLE`` would override a session-wide setting). The application
    authenticates with :attr:`binding` (a client certificate by default, a secret with
    ``credential_type="SECRET"``); the public client gets tokens from :meth:`pkce_login` or
    :meth:`issue_public_token`. Every request is recorded in :attr:`calls`, and
    :meth:`inject` makes the next answers of an endpoint fail.

    By default the public (PKCE) client and the app are one IAS application, as SAP's
    reference sample sets them up (one ``identity`` instance with ``public-client: true``
    and both grant types): public tokens carry :attr:`client_id` in ``aud`` and the app can
    exchange them. ``public_client_id="..."`` registers the public client as an application
    of its own; IAS then refuses to exchange its tokens for the app (``invalid_grant``), and
    so does the emulator.

    ``app_tid`` is the tenant id of the binding and of the tokens; ``extra_app_tids`` are
    further application tenants this IAS tenant hosts (its JWKS and exchange accept them;
    tokens name them with ``issue_public_token(app_tid=...)``). Any other ``x-app_tid`` or
    ``app_tid`` is refused, as IAS refuses a tenant it does not know.

    ``certificate_bound_tokens=True`` puts ``cnf.x5t#S256`` (RFC 8705) of the client
    certificate into the tokens it exchanges over mTLS, as SAP's libraries expect tokens of
    X.509 clients can carry (whether IAS always does so is unconfirmed).
    :meth:`rotate_client_certificate` renews the binding's certificate as a re-binding does.

    ``clock`` drives token times and code expiry; certificates follow the wall clock.
    ``users`` maps a ``login_hint`` (the ``email``) to extra claims; the first is the default.
    A browser at ``/oauth2/authorize`` gets a login page to pick one; other clients are
    signed in at once. ``allowed_origins`` (and :meth:`allow_origin`) are the origins whose
    browser apps may call the token endpoint across origins (CORS). ``redirect_uris`` (and
    :meth:`allow_redirect_uri`) are the public client's registered redirect URIs, as the
    identity instance's ``oauth2-configuration.redirect-uris`` registers them: the authorize
    endpoint refuses any other with 400, as IAS does, and redirects nowhere. ``port`` fixes
    the HTTPS port (default: a free one).
    A user's ``"scopes"`` (local names, such as ``["Read", "Admin"]``) is not a claim: it is
    what the emulated XSUAA grants that user, each prefixed with the ``xsappname`` as XSUAA
    writes scopes, after ``openid``; a user without it gets ``openid`` and
    ``<xsappname>.Read``. Real XSUAA grants scopes through role collections assigned to the
    user; the emulator takes them as given. The default users are Alice (groups
    ``Employees`` and ``Admins``) and Bob (group ``Employees``).

    ``extra_applications`` are client ids of further IAS applications of the tenant (each
    a public client of its own, as a second ``identity`` instance is, with its own
    certificate or secret: :meth:`binding_for`); each exchanges only tokens whose ``aud``
    holds its own id. ``subscribers`` are subscriber tenants of the (multitenant)
    application, a list of names or a mapping of name to ``app_tid``: each is served on the
    same port as ``https://<name>.localhost:<port>`` with its own keys and ``app_tid``,
    and its JWKS and exchanges answer for that tenant only, the provider's credentials
    accepted, as SAP IAS does for a subscribed application. ``*.localhost`` resolves to
    the loopback address on many systems but not all; wrap the test in
    :func:`~flask_ias_pkce.testing.resolve_tenant_hosts` (or use the
    ``ias_tenant_hosts`` fixture) so that it does in this process.

    The XSUAA service of :attr:`xsuaa_binding` answers on the same server; its binding holds
    a client secret (``xsuaa_credential_type="binding-secret"``) or a client certificate of
    the emulator's CA with the XSUAA client id as CN (``"x509"``), as XSUAA bindings do.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        token_lifetime: int = 3600,
        exchanged_token_lifetime: int = 3600,
        credential_type: str = "X509_GENERATED",
        client_id: str = "backend-app-client-id",
        public_client_id: str | None = None,
        xsuaa_client_id: str = "sb-backend!t4711",
        xsuaa_credential_type: str = "binding-secret",
        xsuaa_token_lifetime: int = 3600,
        app_tid: str = DEFAULT_APP_TID,
        extra_app_tids: Iterable[str] = (),
        users: Mapping[str, Mapping[str, Any]] | None = None,
        extra_applications: Iterable[str] = (),
        subscribers: Iterable[str] | Mapping[str, str] = (),
        allowed_origins: Iterable[str] = (),
        redirect_uris: Iterable[str] = DEFAULT_REDIRECT_URIS,
        port: int = 0,
        certificate_bound_tokens: bool = False,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError("port must be from 0 (a free one) to 65535")
        if credential_type not in ("X509_GENERATED", "SECRET"):
            raise ValueError("credential_type must be 'X509_GENERATED' or 'SECRET'")
        if xsuaa_credential_type not in ("binding-secret", "x509"):
            raise ValueError("xsuaa_credential_type must be 'binding-secret' or 'x509'")
        if users is not None and not users:
            raise ValueError("users must name at least one user")
        if not isinstance(subscribers, Mapping):
            subscribers = {name: str(uuid.uuid4()) for name in subscribers}
        for name in subscribers:
            if not _SUBSCRIBER.fullmatch(name):
                raise ValueError(f"subscriber {name!r} is not a lower-case DNS label")
        extra_clients = {extra: secrets.token_urlsafe(32) for extra in extra_applications}
        # One application, one list: its subscriber tenants share it.
        registered_uris = {_checked_redirect_uri(uri) for uri in redirect_uris}
        if client_id in extra_clients:
            raise ValueError("extra_applications must not repeat client_id")

        def tenant(tid: str, extra_tids: frozenset[str]) -> Tenant:
            return Tenant(
                clock=clock,
                token_lifetime=token_lifetime,
                exchanged_token_lifetime=exchanged_token_lifetime,
                credential_type=credential_type,
                client_id=client_id,
                client_secret=client_secret,
                public_client_id=client_id if public_client_id is None else public_client_id,
                xsuaa_client_id=xsuaa_client_id,
                xsuaa_client_secret=xsuaa_client_secret,
                xsuaa_token_lifetime=xsuaa_token_lifetime,
                app_tid=tid,
                extra_app_tids=extra_tids,
                users=DEFAULT_USERS if users is None else users,
                extra_clients=extra_clients,
                allowed_origins=allowed_origins,
                redirect_uris=registered_uris,
            )

        client_secret = secrets.token_urlsafe(32)
        xsuaa_client_secret = secrets.token_urlsafe(32)
        self._tenant = tenant(app_tid, frozenset(extra_app_tids))
        self._subscribers = {name: tenant(tid, frozenset()) for name, tid in subscribers.items()}
        self._port = port
        self._tenant.certificate_bound_tokens = certificate_bound_tokens
        self._xsuaa_credential_type = xsuaa_credential_type
        self._ca: _pki.Issued | None = None
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._server: TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self._client: _pki.Issued | None = None
        self._clients: dict[str, _pki.Issued] = {}
        self._xsuaa_client: _pki.Issued | None = None
        self._connections_before_stop = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Create the CA and certificates, bind a free port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        # mkdtemp makes the directory 0700: only this user can read the private keys in it.
        tmpdir = tempfile.mkdtemp(prefix="ias-emulator-")
        try:
            ca = self._ca = _pki.make_ca("IAS emulator CA")
            server = _pki.issue(ca, "localhost", server=True, extra_hosts=self.tenant_hosts[1:])
            files = {
                "ca.pem": ca.certificate_pem,
                "server.pem": server.certificate_pem,
                "server-key.pem": server.key_pem,
            }
            if self._tenant.credential_type == "X509_GENERATED":
                self._client = _pki.issue(ca, self._tenant.client_id, server=False)
                files["client.pem"] = self._client.certificate_pem
                files["client-key.pem"] = self._client.key_pem
                self._clients = {
                    extra: _pki.issue(ca, extra, server=False)
                    for extra in self._tenant.extra_clients
                }
            if self._xsuaa_credential_type == "x509":
                self._xsuaa_client = _pki.issue(ca, self._tenant.xsuaa_client_id, server=False)
            for name, text in files.items():
                Path(tmpdir, name).write_text(text)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(Path(tmpdir, "server.pem"), Path(tmpdir, "server-key.pem"))
            # Optional: the same endpoint serves mTLS clients and secret-authenticated ones.
            # Only our CA is trusted, so a certificate of another CA fails the handshake.
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(Path(tmpdir, "ca.pem"))
            self._server = TLSServer(context, self._handle, self._port)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        self._tenant.issuer = f"https://localhost:{self._server.port}"
        for name, subscriber in self._subscribers.items():
            subscriber.issuer = f"https://{name}.localhost:{self._server.port}"
        self._tmpdir = tmpdir
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits at most this long for the loop
            name=f"ias-emulator-{self._server.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and remove the temporary files. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            self._connections_before_stop = server.connections
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _running(self) -> TLSServer:
        if self._server is None:
            raise RuntimeError("the emulator is not running: use start() or a with block")
        return self._server

    # -- what clients need to know --------------------------------------------------------

    @property
    def url(self) -> str:
        """``https://localhost:<port>``: the tenant URL and token issuer."""
        return f"https://localhost:{self._running().port}"

    @property
    def issuer(self) -> str:
        """The ``iss`` of every token; the same as :attr:`url`."""
        return self.url

    @property
    def token_endpoint(self) -> str:
        """``<url>/oauth2/token``."""
        return self.url + TOKEN_PATH

    @property
    def ca_file(self) -> str:
        """Path of the PEM CA certificate that signed the server (and client) certificates."""
        return self._path("ca.pem")

    @property
    def client_certificate_files(self) -> tuple[str, str]:
        """``(certificate, key)`` file paths of the binding's client certificate, ready for
        ``requests``' ``cert=``. Only for ``credential_type="X509_GENERATED"``."""
        if self._tenant.credential_type != "X509_GENERATED":
            raise RuntimeError("a SECRET binding has no client certificate")
        return self._path("client.pem"), self._path("client-key.pem")

    @property
    def client_certificate_thumbprint(self) -> str:
        """``x5t#S256`` of the binding's client certificate now (RFC 8705)."""
        if self._client is None:
            raise RuntimeError("a SECRET binding has no client certificate")
        return _pki.thumbprint(self._client.certificate)

    def rotate_client_certificate(
        self, *, refuse_old: bool = True, valid_for: datetime.timedelta | None = None
    ) -> dict[str, Any]:
        """Issue the application a new client certificate and key (same CN, same CA), as
        a new binding does, and return the new :attr:`binding`. With ``refuse_old`` the
        old certificate is refused from now on (``invalid_client``), as IAS refuses the
        certificate of a deleted binding; else both work, as during a credentials
        rotation that keeps the old binding for a while."""
        self._running()
        if self._client is None or self._ca is None:
            raise RuntimeError("a SECRET binding has no client certificate")
        old = self._client
        if valid_for is None:
            self._client = _pki.issue(self._ca, self._tenant.client_id, server=False)
        else:
            self._client = _pki.issue(
                self._ca, self._tenant.client_id, server=False, validity=valid_for
            )
        Path(self._path("client.pem")).write_text(self._client.certificate_pem)
        Path(self._path("client-key.pem")).write_text(self._client.key_pem)
        if refuse_old:
            self.refuse_client_certificate(_pki.thumbprint(old.certificate))
        return self.binding

    def rotate_xsuaa_client_certificate(self, *, refuse_old: bool = True) -> dict[str, Any]:
        """Issue the XSUAA binding (``xsuaa_credential_type="x509"``) a new client
        certificate and key, as a new binding does, and return the new
        :attr:`xsuaa_binding`. With ``refuse_old`` the old certificate is refused from now
        on (``invalid_client``); else both work until :meth:`refuse_client_certificate`."""
        self._running()
        if self._xsuaa_client is None or self._ca is None:
            raise RuntimeError("the XSUAA binding has a client secret, not a certificate")
        old = self._xsuaa_client
        self._xsuaa_client = _pki.issue(self._ca, self._tenant.xsuaa_client_id, server=False)
        if refuse_old:
            self.refuse_client_certificate(_pki.thumbprint(old.certificate))
        return self.xsuaa_binding

    @property
    def xsuaa_client_certificate_thumbprint(self) -> str:
        """``x5t#S256`` of the XSUAA binding's client certificate now (RFC 8705)."""
        if self._xsuaa_client is None:
            raise RuntimeError("the XSUAA binding has a client secret, not a certificate")
        return _pki.thumbprint(self._xsuaa_client.certificate)

    def refuse_client_certificate(self, thumbprint: str) -> None:
        """Refuse the client certificate with this ``x5t#S256`` from now on
        (``invalid_client``), as IAS (and XSUAA, for its binding's certificate) does once
        a binding is deleted."""
        self._tenant.refused_certificates.add(thumbprint)

    def _path(self, name: str) -> str:
        self._running()
        assert self._tmpdir is not None
        return str(Path(self._tmpdir, name))

    @property
    def credential_type(self) -> str:
        """``"X509_GENERATED"`` or ``"SECRET"``: how the app authenticates."""
        return self._tenant.credential_type

    @property
    def client_id(self) -> str:
        """The application's (confidential) client id, the CN of its certificate."""
        return self._tenant.client_id

    @property
    def public_client_id(self) -> str:
        """The public (PKCE) client's id, the ``aud`` of public tokens: :attr:`client_id`
        unless the emulator was given a separate ``public_client_id``."""
        return self._tenant.public_client_id

    @property
    def xsuaa_client_id(self) -> str:
        """The XSUAA client id that exchanged tokens carry in ``aud``."""
        return self._tenant.xsuaa_client_id

    @property
    def app_tid(self) -> str:
        """The tenant id put in tokens and bindings."""
        return self._tenant.app_tid

    @property
    def app_tids(self) -> frozenset[str]:
        """Every tenant id this IAS hosts: :attr:`app_tid` and the ``extra_app_tids``."""
        return self._tenant.app_tids

    @property
    def connections(self) -> int:
        """TCP connections accepted since the last start (each one a TLS handshake attempt);
        still readable after :meth:`stop`."""
        server = self._server
        return server.connections if server is not None else self._connections_before_stop

    @property
    def binding(self) -> dict[str, Any]:
        """The credentials of an ``identity`` service binding, as in ``VCAP_SERVICES``."""
        return self.binding_for(self._tenant.client_id)

    def binding_for(self, client_id: str) -> dict[str, Any]:
        """The binding credentials of the application ``client_id``: :attr:`client_id` or
        one of ``extra_applications``, each with its own certificate or secret."""
        self._running()
        tenant = self._tenant
        if client_id == tenant.client_id:
            secret, client = tenant.client_secret, self._client
        elif client_id in tenant.extra_clients:
            secret, client = tenant.extra_clients[client_id], self._clients.get(client_id)
        else:
            raise ValueError(f"{client_id!r} is no application of this emulator")
        binding: dict[str, Any] = {
            "clientid": client_id,
            "url": self.url,
            "domains": ["localhost"],
            "app_tid": tenant.app_tid,
            "credential-type": tenant.credential_type,
        }
        if client is None:
            binding["clientsecret"] = secret
        else:
            binding["certificate"] = client.certificate_pem
            binding["key"] = client.key_pem
        return binding

    # -- subscriber tenants ---------------------------------------------------------------

    @property
    def subscribers(self) -> tuple[str, ...]:
        """The names of the subscriber tenants."""
        return tuple(self._subscribers)

    @property
    def tenant_hosts(self) -> tuple[str, ...]:
        """The host names this emulator answers for: ``localhost`` (the provider) and
        ``<name>.localhost`` of every subscriber."""
        return ("localhost", *(f"{name}.localhost" for name in self._subscribers))

    def tenant_url(self, name: str | None = None) -> str:
        """``https://<name>.localhost:<port>``: the URL and issuer of subscriber ``name``
        (the provider's :attr:`url` for ``None``)."""
        return self._tenant_of(name).issuer if name is not None else self.url

    def tenant_app_tid(self, name: str | None = None) -> str:
        """The ``app_tid`` of subscriber ``name`` (the provider's for ``None``)."""
        return self._tenant_of(name).app_tid

    def _tenant_of(self, name: str | None) -> Tenant:
        self._running()
        if name is None:
            return self._tenant
        try:
            return self._subscribers[name]
        except KeyError:
            raise ValueError(f"{name!r} is no subscriber of this emulator") from None

    @property
    def xsuaa_url(self) -> str:
        """``<url>/xsuaa``: the XSUAA service's ``url`` (and ``certurl``)."""
        return self.url + XSUAA_PREFIX

    @property
    def xsuaa_issuer(self) -> str:
        """The ``iss`` of XSUAA tokens: ``<url>/xsuaa/oauth/token``."""
        self._running()
        return self._tenant.xsuaa_issuer

    @property
    def xsuaa_binding(self) -> dict[str, Any]:
        """The credentials of an ``xsuaa`` service binding whose client id IAS adds to ``aud``.

        Its XSUAA answers the jwt-bearer grant at ``<url>/oauth/token`` (secret) and
        ``<certurl>/oauth/token`` (client certificate); both are this server.
        """
        binding: dict[str, Any] = {
            "clientid": self._tenant.xsuaa_client_id,
            "xsappname": self._tenant.xsappname,
            "url": self.xsuaa_url,
            "certurl": self.xsuaa_url,
            # XSUAA's domain, where its token_keys are: this server (a real one has no port).
            "uaadomain": f"localhost:{self._running().port}",
            "identityzone": "emulator",
            "identityzoneid": self._tenant.app_tid,
            "tenantmode": "dedicated",
            "credential-type": self._xsuaa_credential_type,
        }
        if self._xsuaa_client is not None:
            binding["certificate"] = self._xsuaa_client.certificate_pem
            binding["key"] = self._xsuaa_client.key_pem
        else:
            binding["clientsecret"] = self._tenant.xsuaa_client_secret
        return binding

    def app_config(self, **extra: Any) -> dict[str, Any]:
        """The ``IAS_PKCE_*`` settings of an app bound to this emulator, for ``app.config``.

        They name the tenant, the app's credentials (certificate and key, or the secret),
        the trusted domain, the tenant id, the XSUAA client id and the emulator's CA file.
        The accepted audience is left at its default, the app's own client id: the public
        client and the backend are one IAS application. ``extra`` adds to
        them or wins over them: ``app_config(IAS_PKCE_PROTECT="marked", TESTING=True)``;
        a lower-case name is short for its ``IAS_PKCE_`` key (``protect="marked"``).
        """
        binding = self.binding
        config: dict[str, Any] = {
            "IAS_PKCE_IAS_URL": binding["url"],
            "IAS_PKCE_CLIENT_ID": binding["clientid"],
            "IAS_PKCE_DOMAINS": list(binding["domains"]),
            "IAS_PKCE_APP_TID": binding["app_tid"],
            "IAS_PKCE_XSUAA_CLIENT_ID": self.xsuaa_client_id,
            "IAS_PKCE_VERIFY": self.ca_file,
        }
        if "clientsecret" in binding:
            config["IAS_PKCE_CLIENT_SECRET"] = binding["clientsecret"]
        else:
            config["IAS_PKCE_CERTIFICATE"] = binding["certificate"]
            config["IAS_PKCE_KEY"] = binding["key"]
        for name, value in extra.items():
            config[_setting_name(name)] = value
        return config

    def app_environment(self, prefix: str = "FLASK", **extra: Any) -> dict[str, str]:
        """The environment variables that bind an app to this emulator as a platform would:
        ``VCAP_SERVICES`` with the ``identity`` and ``xsuaa`` bindings, and
        ``<prefix>_IAS_PKCE_VERIFY`` (the CA file) for Flask's
        ``app.config.from_prefixed_env(prefix)``. ``extra`` settings are added the same
        way, as JSON unless they are text that JSON would read as something else."""
        config = self.app_config(**extra)
        wanted = {"IAS_PKCE_VERIFY", *map(_setting_name, extra)}
        settings = {key: value for key, value in config.items() if key in wanted}
        environment = {"VCAP_SERVICES": json.dumps(self.vcap_services())}
        for key, value in settings.items():
            environment[f"{prefix}_{key}"] = _environment_text(value)
        return environment

    def vcap_services(self) -> dict[str, Any]:
        """A whole ``VCAP_SERVICES`` value with the ``identity`` and ``xsuaa`` bindings."""
        return {
            "identity": [
                {
                    "label": "identity",
                    "name": "ias",
                    "instance_name": "ias",
                    "plan": "application",
                    "tags": ["ias"],
                    "credentials": self.binding,
                }
            ],
            "xsuaa": [
                {
                    "label": "xsuaa",
                    "name": "xsuaa",
                    "instance_name": "xsuaa",
                    "plan": "application",
                    "tags": ["xsuaa"],
                    "credentials": self.xsuaa_binding,
                }
            ],
        }

    def allow_origin(self, origin: str) -> None:
        """Let browser apps served from ``origin`` (``http://127.0.0.1:5000``, no path)
        call discovery, the keys and the token endpoint: IAS answers CORS only for the
        tenant's trusted domains."""
        split = urlsplit(origin)
        if split.scheme not in ("http", "https") or not split.netloc or split.path:
            raise ValueError("an origin is scheme://host[:port], without a path")
        self._tenant.allowed_origins.add(origin)

    @property
    def allowed_origins(self) -> frozenset[str]:
        """The origins :meth:`allow_origin` (or ``allowed_origins=``) let in."""
        return frozenset(self._tenant.allowed_origins)

    def allow_redirect_uri(self, uri: str) -> None:
        """Register ``uri`` as a redirect URI of the public client (for every tenant of
        the application), as adding it to the identity instance's
        ``oauth2-configuration.redirect-uris`` does. A ``*`` stands for a run of letters,
        digits and ``-._~`` (never a ``.`` or ``..`` path segment). Raises
        ``ValueError`` for a URI that is not absolute or has a fragment (RFC 6749 3.1.2)."""
        self._tenant.redirect_uris.add(_checked_redirect_uri(uri))

    @property
    def redirect_uris(self) -> frozenset[str]:
        """The registered redirect URIs (``redirect_uris=`` and :meth:`allow_redirect_uri`)."""
        return frozenset(self._tenant.redirect_uris)

    @property
    def authorize_endpoint(self) -> str:
        """``<url>/oauth2/authorize``: a browser gets the login page, other clients are
        signed in at once (as ``login_hint`` or the first user)."""
        return self.url + AUTHORIZE_PATH

    @property
    def users(self) -> list[str]:
        """The users' ``login_hint`` values (e-mail addresses), the default first."""
        return list(self._tenant.users)

    # -- keys and tokens ------------------------------------------------------------------

    @property
    def current_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        return self._tenant.current_kid

    @property
    def jwks(self) -> dict[str, Any]:
        """The JWKS served at ``/oauth2/certs``."""
        return self._tenant.jwks()

    def tenant_jwks(self, name: str) -> dict[str, Any]:
        """The JWKS that subscriber ``name`` serves (its own keys)."""
        return self._tenant_of(name).jwks()

    def rotate_keys(self, retire_old: bool = False) -> str:
        """Add a new signing key and return its kid. Old keys stay in the JWKS unless
        ``retire_old``; retired keys still sign through :meth:`sign` (``kid=``)."""
        return self._tenant.rotate_keys(retire_old)

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        headers: Mapping[str, Any] | None = None,
        kid: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """Sign ``claims`` as they are (RS256) with the current key, or the key ``kid`` names
        (retired ones included). ``headers`` add to the JOSE header; ``None`` removes one.
        ``tenant`` signs with the keys of that subscriber."""
        if tenant is not None:
            return self._tenant_of(tenant).sign(claims, headers, kid)
        return self._tenant.sign(claims, headers, kid)

    def sign_xsuaa(
        self, claims: Mapping[str, Any], *, headers: Mapping[str, Any] | None = None
    ) -> str:
        """Sign ``claims`` as they are with the XSUAA service's key (the one its
        ``/token_keys`` serve); ``headers`` add to the JOSE header, ``None`` removes one.
        For tests of what an app does with a broken XSUAA answer."""
        self._running()
        return self._tenant.sign_xsuaa(claims, headers)

    def issue_public_token(self, *, tenant: str | None = None, **claims: Any) -> str:
        """A token as the PKCE flow gives the public client (first user, ``aud`` and
        ``azp`` = :attr:`public_client_id`); ``claims`` add or replace claims
        (``name=None`` removes one). ``tenant`` names a subscriber: the token is then its
        own (its issuer, ``app_tid`` and keys)."""
        issuer = self._tenant_of(tenant)
        return issuer.sign(issuer.public_claims(None, claims), None, None)

    def foreign_key_token(self, **claims: Any) -> str:
        """Like :meth:`issue_public_token` but signed by a key outside the JWKS that
        carries the current key's kid: its signature must not verify."""
        self._running()
        return self._tenant.sign_foreign(self._tenant.public_claims(None, claims))

    def make_foreign_client_certificate(self) -> tuple[str, str]:
        """``(certificate PEM, key PEM)`` with the app's client id as CN but issued by
        another CA: the emulator must not accept it."""
        foreign = _pki.issue(_pki.make_ca("Foreign CA"), self.client_id, server=False)
        return foreign.certificate_pem, foreign.key_pem

    # -- the public client's side ---------------------------------------------------------

    def pkce_login(
        self,
        redirect_uri: str = "http://localhost/callback",
        login_hint: str | None = None,
        verify: str | bool | None = None,
    ) -> dict[str, Any]:
        """Run the public client's authorization-code flow with PKCE S256 over HTTPS and
        return the token response. Raises ``RuntimeError`` when a step fails."""
        verify = self.ca_file if verify is None else verify
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        query = {
            "response_type": "code",
            "client_id": self._tenant.public_client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
            "state": state,
            "scope": "openid",
        }
        if login_hint is not None:
            query["login_hint"] = login_hint
        with requests.Session() as session:
            answer = session.get(
                self.authorize_endpoint,
                params=query,
                allow_redirects=False,
                verify=verify,
                timeout=10,
            )
            params = dict(parse_qsl(urlsplit(answer.headers.get("Location", "")).query))
            if answer.status_code != 302 or "code" not in params or params.get("state") != state:
                raise RuntimeError(
                    f"authorize failed: {answer.status_code} {params or answer.text}"
                )
            answer = session.post(
                self.token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "client_id": self._tenant.public_client_id,
                    "code": params["code"],
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
                verify=verify,
                timeout=10,
            )
        if answer.status_code != 200:
            raise RuntimeError(f"token request failed: {answer.status_code} {answer.text}")
        tokens: dict[str, Any] = answer.json()
        return tokens

    # -- record and faults ----------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._calls)

    @property
    def exchanges(self) -> list[Call]:
        """The jwt-bearer token requests among :attr:`calls`."""
        return [
            c
            for c in self.calls
            if c.path == TOKEN_PATH and c.params.get("grant_type") == JWT_BEARER
        ]

    @property
    def xsuaa_exchanges(self) -> list[Call]:
        """The requests to XSUAA's token endpoint among :attr:`calls`."""
        return [c for c in self.calls if c.path == XSUAA_TOKEN_PATH]

    @property
    def xsuaa_keys(self) -> dict[str, Any]:
        """The key set served at XSUAA's ``https://<uaadomain>/token_keys``."""
        return self._tenant.xsuaa_keys()

    def reset_calls(self) -> None:
        """Forget the recorded calls (the connection count stays)."""
        with self._lock:
            self._calls.clear()

    def inject(
        self,
        path: str,
        *,
        status: int | None = None,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int = 1,
        header_interval: float = 0.0,
    ) -> None:
        """Make the next ``times`` requests to ``path`` fail.

        Each waits ``delay`` seconds, then the connection is closed without an answer
        (``drop``) or answered with ``status`` (200 when only ``body`` is given), ``body``
        (a mapping is sent as JSON) and ``headers``. With neither ``status``, ``body`` nor
        ``drop``, the request is only delayed and then answered normally. Faults queue up
        per path in the order injected. ``path`` is matched without the query string.
        With ``header_interval``, the answer's status line goes out at once and each byte
        of its headers ``header_interval`` seconds after the one before (a slow proxy).
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if isinstance(body, Mapping):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        elif isinstance(body, str):
            body = body.encode()
        fault = _Fault(status, body, dict(headers or {}), delay, drop, times, header_interval)
        with self._lock:
            self._faults.setdefault(path, []).append(fault)

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(path)
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return fault

    # -- the server side ------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        if request.method == "POST":
            params = parse_qs(request.body.decode("latin-1"), keep_blank_values=True)
        else:
            params = parse_qs(request.query, keep_blank_values=True)
        fault = self._take_fault(request.path)
        if fault is not None and fault.delay > 0:
            time.sleep(fault.delay)
        if fault is not None and (fault.drop or fault.status is not None or fault.body is not None):
            response = Response(fault.status or 200, fault.body or b"", fault.headers, fault.drop)
        else:
            tenant = self._tenant_for_host(_host(request))
            if tenant is None:
                payload = {"error": "not_found", "error_description": "no such tenant"}
                response = Response(
                    404, json.dumps(payload).encode(), {"Content-Type": "application/json"}
                )
            else:
                response = tenant.route(request, params)
        if fault is not None:
            response.header_interval = fault.header_interval
        self._record(request, params, None if response.drop else response.status)
        return response

    def _tenant_for_host(self, host: str) -> Tenant | None:
        if host in ("localhost", "127.0.0.1", ""):
            return self._tenant
        name, dot, rest = host.partition(".")
        return self._subscribers.get(name) if dot and rest == "localhost" else None

    def _record(self, request: Request, params: dict[str, list[str]], status: int | None) -> None:
        flat = {name: values[0] for name, values in params.items()}
        lists = {name: list(values) for name, values in params.items()}
        if "client_secret" in flat:
            flat["client_secret"] = _REDACTED
            lists["client_secret"] = [_REDACTED] * len(lists["client_secret"])
        headers = dict(request.headers)
        if "authorization" in headers:
            headers["authorization"] = headers["authorization"].split(" ")[0] + " " + _REDACTED
        basic = basic_credentials(request.headers.get("authorization"))
        client_id: str | None = None
        if basic is not None:
            method: str | None = "client_secret_basic"
            client_id = basic[0]
        elif "client_secret" in flat:
            method = "client_secret_post"
            client_id = flat.get("client_id")
        elif request.client_cn is not None:
            method = "tls_client_auth"
            client_id = request.client_cn
        else:
            method = None
        call = Call(
            request.method,
            request.path,
            flat,
            headers,
            request.client_cn,
            method,
            status,
            request.connection_id,
            _host(request),
            client_id,
            lists,
            _certificate_thumbprint(request.client_certificate),
        )
        with self._lock:
            self._calls.append(call)


def _host(request: Request) -> str:
    """The host name the request named, without its port, lower-cased."""
    host = request.headers.get("host", "")
    return urlsplit(f"//{host}").hostname or ""
