"""The emulated IAS tenant's protocol: signing keys, tokens and the OAuth endpoints.

Nothing here knows about sockets, TLS set-up or fault injection; it answers one parsed
request at a time (see :mod:`._server`) and is safe to call from many threads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives import serialization

from flask_ias_pkce.testing import _login
from flask_ias_pkce.testing._jws import InvalidTokenError, SigningKey, b64url, verify
from flask_ias_pkce.testing._server import Request, Response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/oauth2/token"
#: The XSUAA service lives under this path of the same server (the xsuaa binding's ``url``).
XSUAA_PREFIX = "/xsuaa"
XSUAA_TOKEN_PATH = XSUAA_PREFIX + "/oauth/token"
#: XSUAA's keys, at the root of its ``uaadomain`` host (the emulator's own server).
XSUAA_KEYS_PATH = "/token_keys"
AUTHORIZE_PATH = "/oauth2/authorize"
DISCOVERY_PATH = "/.well-known/openid-configuration"
#: What a browser app of an allowed origin may call across origins: discovery, the keys and
#: the token endpoint (the authorize endpoint is a navigation, not a fetch).
_CORS_PATHS = frozenset({DISCOVERY_PATH, "/oauth2/certs", TOKEN_PATH})

_CODE_LIFETIME = 60.0
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 4.1
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256, unpadded
#: Claims that describe a token rather than its user: an exchange makes new ones.
#: The key of a user in ``users`` that lists the user's XSUAA scopes (local names).
XSUAA_SCOPES = "scopes"
_PER_TOKEN_CLAIMS = frozenset({"iss", "aud", "azp", "exp", "iat", "nbf", "jti", "nonce", "cnf"})

Params = dict[str, list[str]]


def usable_redirect_uri(uri: str) -> bool:
    """Whether ``uri`` can be a redirect URI: absolute, without a fragment (RFC 6749 3.1.2)."""
    split = urlsplit(uri)
    return bool(split.scheme) and not split.fragment and bool(split.netloc or split.path)


def redirect_uri_registered(uri: str, registered: Iterable[str]) -> bool:
    """Whether ``uri`` is one of the ``registered`` redirect URIs: the same string (RFC
    6749 3.1.2.3, RFC 9700 2.1: exact string matching), or, for a registered URI with
    ``*``, the same string with a run of RFC 3986 unreserved characters (letters, digits,
    ``-._~``) in each ``*``'s place, and no ``.`` or ``..`` path segment. So a wildcard
    never reaches into another part of the URI: ``http://localhost:*/app/`` matches no
    ``http://localhost:1@evil.example/app/``, and ``https://*.example.com/cb`` no
    ``https://evil.test\\.example.com/cb`` (a browser reads that ``\\`` as ``/``). IAS
    accepts wildcards in redirect URIs; exactly how it matches them is unconfirmed."""
    for pattern in registered:
        if uri == pattern:
            return True
        if "*" in pattern:
            expression = "[A-Za-z0-9._~-]*".join(re.escape(part) for part in pattern.split("*"))
            if re.fullmatch(expression, uri) and not _DOT_SEGMENT.search(urlsplit(uri).path):
                return True
    return False


#: A ``.`` or ``..`` segment of a URI's path (RFC 3986 5.2.4 removes them).
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


@dataclass(frozen=True)
class _Grant:
    """What an authorization code stands for."""

    redirect_uri: str
    code_challenge: str
    login_hint: str
    nonce: str | None
    expires_at: float


class _OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def json_response(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer; never cached, as token responses must not be (RFC 6749 5.1)."""
    return Response(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})},
    )


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of ``verifier`` (RFC 7636 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """``(client_id, secret)`` of an HTTP Basic header, form-decoded as RFC 6749 2.3.1 says;
    ``None`` without one, empty strings when it is garbled."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id), unquote(secret)


def _thumbprint(der: bytes | None) -> str:
    # base64url SHA-256 of the DER certificate, as RFC 8705 defines x5t#S256.
    digest = hashlib.sha256(der or b"").digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _form(request: Request, params: Params) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise _OAuthError("invalid_request", "the body must be form-encoded")
    if any(len(values) > 1 for name, values in params.items() if name != "resource"):
        raise _OAuthError("invalid_request", "a parameter is repeated")
    return {name: values[0] for name, values in params.items()}


def _error_response(request: Request, error: _OAuthError) -> Response:
    payload = {"error": error.error, "error_description": error.description}
    # RFC 6749 5.2: a client that tried Basic gets a Basic challenge back.
    tried_basic = basic_credentials(request.headers.get("authorization")) is not None
    challenge = {"WWW-Authenticate": 'Basic realm="ias-emulator"'}
    headers = challenge if error.status == 401 and tried_basic else {}
    return json_response(error.status, payload, headers)


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    split = urlsplit(uri)
    query = urlencode([*parse_qsl(split.query, keep_blank_values=True), *params.items()])
    return urlunsplit(split._replace(query=query))


class Tenant:
    """One IAS tenant: who its clients and users are, its keys, and its endpoints."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        token_lifetime: int,
        exchanged_token_lifetime: int,
        credential_type: str,
        client_id: str,
        client_secret: str,
        public_client_id: str,
        xsuaa_client_id: str,
        xsuaa_client_secret: str,
        xsuaa_token_lifetime: int,
        app_tid: str,
        extra_app_tids: frozenset[str],
        users: Mapping[str, Mapping[str, Any]],
        extra_clients: Mapping[str, str] | None = None,
        allowed_origins: Iterable[str] = (),
        redirect_uris: set[str] | None = None,
    ) -> None:
        self.issuer = ""  # known once the server has a port
        #: The public client's registered redirect URIs (shared by the tenants of one
        #: application): ``/oauth2/authorize`` refuses any other (see
        #: :func:`redirect_uri_registered`).
        self.redirect_uris: set[str] = set() if redirect_uris is None else redirect_uris
        #: Origins (``scheme://host[:port]``) whose browser apps may call the tenant: IAS
        #: answers CORS for the tenant's trusted domains only.
        self.allowed_origins = set(allowed_origins)
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.exchanged_token_lifetime = exchanged_token_lifetime
        self.credential_type = credential_type
        self.client_id = client_id
        self.client_secret = client_secret
        self.public_client_id = public_client_id
        self.xsuaa_client_id = xsuaa_client_id
        self.xsuaa_client_secret = xsuaa_client_secret
        self.xsuaa_token_lifetime = xsuaa_token_lifetime
        self.app_tid = app_tid
        self.app_tids = frozenset((app_tid, *extra_app_tids))
        self.users = {hint: dict(claims) for hint, claims in users.items()}
        #: Further applications of the tenant (client id: secret), each a public client of
        #: its own that exchanges its own tokens, as a second ``identity`` instance is.
        self.extra_clients = dict(extra_clients or {})
        for hint, user in self.users.items():
            scopes = user.get(XSUAA_SCOPES)
            if scopes is not None and (
                isinstance(scopes, str) or not all(isinstance(name, str) for name in scopes)
            ):
                raise ValueError(f"the {XSUAA_SCOPES!r} of user {hint!r} must be a list of strings")
        self._lock = threading.Lock()
        self._keys = [SigningKey.generate()]  # the JWKS; the last one signs
        self._retired: dict[str, SigningKey] = {}
        self._foreign_key: SigningKey | None = None
        self._codes: dict[str, _Grant] = {}
        # XSUAA signs with keys of its own; made at first use, as most tests never need one.
        self._xsuaa_key: SigningKey | None = None
        #: Put ``cnf.x5t#S256`` of the client certificate into tokens exchanged over mTLS.
        self.certificate_bound_tokens = False
        #: Thumbprints of client certificates this tenant no longer accepts (rotated out).
        self.refused_certificates: set[str] = set()

    # -- keys and tokens ------------------------------------------------------------------

    @property
    def current_kid(self) -> str:
        with self._lock:
            return self._keys[-1].kid

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.public_jwk() for key in self._keys]}

    def rotate_keys(self, retire_old: bool) -> str:
        new_key = SigningKey.generate()
        with self._lock:
            if retire_old:
                self._retired.update((key.kid, key) for key in self._keys)
                self._keys = []
            self._keys.append(new_key)
        return new_key.kid

    def sign(
        self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None, kid: str | None
    ) -> str:
        with self._lock:
            keys = {key.kid: key for key in (*self._retired.values(), *self._keys)}
            key = keys.get(kid) if kid is not None else self._keys[-1]
        if key is None:
            raise ValueError(f"no key with kid {kid!r}, current or retired")
        return key.sign(claims, headers)

    def sign_foreign(self, claims: Mapping[str, Any]) -> str:
        with self._lock:
            if self._foreign_key is None:
                self._foreign_key = SigningKey.generate()
            foreign = SigningKey(self._keys[-1].kid, self._foreign_key.private_key)
        return foreign.sign(claims)

    def public_claims(self, login_hint: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The claims of a public-client token for a user (the first one by default);
        ``overrides`` replace claims, ``None`` removes one."""
        hint = login_hint if login_hint is not None else next(iter(self.users))
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "app_tid": self.app_tid,
            "sid": f"S-SP-{uuid.uuid4()}",
            **self._user_claims(hint),
            "aud": self.public_client_id,
            "azp": self.public_client_id,
            "iat": now,
            "exp": now + self.token_lifetime,
            "jti": str(uuid.uuid4()),
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def _user_claims(self, hint: str) -> dict[str, Any]:
        """What a token says about the user ``hint``: ``sub`` (the subject name identifier:
        the ``user_uuid``, else the email), ``email`` and the user's own claims."""
        user = self.users[hint]
        # "scopes" is the user's setting for XSUAA, not a claim IAS sends.
        claims = {name: value for name, value in user.items() if name != XSUAA_SCOPES}
        return {"sub": user.get("user_uuid", hint), "email": hint, **claims}

    def _find_user(self, assertion: Mapping[str, Any]) -> str:
        """The login hint of the user an assertion names. SAP's documentation of the grant
        ("Configure the Client to Call Identity Authentication JWT Bearer Token",
        SAP-docs/btp-cloud-identity-services, Operation Guide): "if `user_uuid` claim is
        provided, it will be used to search the user by user_uuid, otherwise `sub` claim
        will be used"."""
        if "user_uuid" in assertion:
            wanted, claim = assertion["user_uuid"], "user_uuid"
        else:
            wanted, claim = assertion.get("sub"), "sub"
        for hint in self.users:
            if isinstance(wanted, str) and self._user_claims(hint).get(claim) == wanted:
                return hint
        raise _OAuthError("invalid_grant", f"assertion refused: no user with this {claim}")

    # -- endpoints ------------------------------------------------------------------------

    def route(self, request: Request, params: Params) -> Response:
        """Answer a request with IAS's behaviour; 404/405 JSON for anything else."""
        routes: dict[str, tuple[tuple[str, ...], Callable[[Request, Params], Response]]] = {
            DISCOVERY_PATH: (("GET",), self._discovery),
            "/oauth2/certs": (("GET",), self._certs),
            # POST is the login page's form.
            AUTHORIZE_PATH: (("GET", "POST"), self._authorize),
            TOKEN_PATH: (("POST",), self._token),
            XSUAA_TOKEN_PATH: (("POST",), self._xsuaa_token),
            XSUAA_KEYS_PATH: (("GET",), self._xsuaa_token_keys),
        }
        if request.path not in routes:
            return json_response(404, {"error": "not_found", "error_description": "no endpoint"})
        methods, endpoint = routes[request.path]
        cors = self._cors_headers(request)
        if request.method == "OPTIONS" and request.path in _CORS_PATHS:
            # A CORS preflight. Without an allowed Origin the answer carries no CORS
            # headers, so the browser refuses the actual request.
            preflight = {
                "Access-Control-Allow-Methods": ", ".join(methods),
                "Access-Control-Allow-Headers": "Content-Type, Authorization",
                "Access-Control-Max-Age": "600",
            }
            return Response(204, headers={**cors, **(preflight if cors else {})})
        if request.method not in methods:
            allowed = ", ".join(methods)
            payload = {"error": "invalid_request", "error_description": f"use {allowed}"}
            return json_response(405, payload, {"Allow": allowed})
        response = endpoint(request, params)
        if request.path in _CORS_PATHS:
            response.headers.update(cors)
        return response

    def _cors_headers(self, request: Request) -> dict[str, str]:
        # Unconfirmed detail: IAS answers CORS for the origins of the tenant's trusted
        # domains; the exact header set it sends is modelled on the Fetch standard.
        origin = request.headers.get("origin")
        if origin is None or origin not in self.allowed_origins:
            return {"Vary": "Origin"} if origin is not None else {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _certs(self, request: Request, params: Params) -> Response:
        """The JWKS, for the clients and tenant this IAS knows.

        SAP's libraries send ``x-client_id`` (their binding's client id), ``x-app_tid`` and
        ``x-azp`` (the token's claims); IAS answers 400 to a client id or tenant it does not
        know and to an ``azp`` that is no client of the tenant. The bodies are those
        SAP/cloud-security-client-go models in ``oidcclient/jwk_test.go``; its
        ``mocks/mockServer.go`` notes that IAS answers ``{"msg":"Invalid app_tid
        provided"}`` for a foreign tenant. IAS's documentation of the endpoint calls both
        headers optional ("Reserved"), so a request without them gets the keys. One of the
        two without the other is refused too: @sap/xssec 3.3.3 started to "send either both
        x-app_tid & x-client_id headers or none of them ... to prevent bad request", and
        SAP's Spring token client sends them so (which of the two IAS refuses alone, and
        with what body, is unconfirmed).
        """
        headers = request.headers
        client_id, app_tid = headers.get("x-client_id"), headers.get("x-app_tid")
        if (
            (client_id is None) != (app_tid is None)
            or (client_id is not None and client_id not in self.client_ids)
            or (app_tid is not None and app_tid not in self.app_tids)
        ):
            return json_response(400, {"msg": "Invalid x-client_id or x-app_tid provided"})
        azp = headers.get("x-azp")
        if azp is not None and azp not in self.client_ids:
            return json_response(400, {"msg": "Invalid x-azp provided"})
        return json_response(200, self.jwks())

    @property
    def client_ids(self) -> frozenset[str]:
        """The applications of this tenant: the app's and, when separate, the public one."""
        return frozenset((self.client_id, self.public_client_id, *self.extra_clients))

    def _discovery(self, request: Request, params: Params) -> Response:
        return json_response(
            200,
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/oauth2/authorize",
                "token_endpoint": self.issuer + TOKEN_PATH,
                "jwks_uri": self.issuer + "/oauth2/certs",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "grant_types_supported": ["authorization_code", JWT_BEARER],
                "token_endpoint_auth_methods_supported": [
                    "tls_client_auth",
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "email", "profile", "groups"],
            },
        )

    def _authorize(self, request: Request, params: Params) -> Response:
        if request.method == "POST":
            # The login page's form: its authorize parameters plus the user picked or typed.
            params = dict(params)
            picked = params.pop(_login.PICK_FIELD, None)
            if picked:
                params["login_hint"] = picked
        query = {name: values[0] for name, values in params.items()}
        redirect_uri = query.get("redirect_uri", "")
        # RFC 6749 4.1.2.1: never redirect for an unknown client or to an unusable URI.
        if query.get("client_id") != self.public_client_id:
            payload = {"error": "invalid_request", "error_description": "unknown client_id"}
            return json_response(400, payload)
        if not usable_redirect_uri(redirect_uri):
            payload = {"error": "invalid_request", "error_description": "invalid redirect_uri"}
            return json_response(400, payload)
        if not redirect_uri_registered(redirect_uri, self.redirect_uris):
            # IAS sends the browser only to a URI registered for the application (the
            # identity instance's oauth2-configuration.redirect-uris); RFC 6749 4.1.2.1:
            # an unregistered one gets an error page, never a redirect.
            payload = {
                "error": "invalid_request",
                "error_description": "redirect_uri is not registered for this client",
            }
            return json_response(400, payload)
        state = {"state": query["state"]} if "state" in query else {}

        def refuse(error: str, description: str) -> Response:
            answer = {"error": error, "error_description": description, **state}
            return Response(302, headers={"Location": _with_query(redirect_uri, answer)})

        if any(len(values) > 1 for values in params.values()):
            return refuse("invalid_request", "a parameter is repeated")
        if query.get("response_type") != "code":
            return refuse("unsupported_response_type", "only response_type=code is supported")
        if query.get("code_challenge_method") != "S256":
            return refuse("invalid_request", "code_challenge_method must be S256")
        if not _CHALLENGE.fullmatch(query.get("code_challenge", "")):
            return refuse("invalid_request", "code_challenge is missing or malformed")
        if request.method == "GET" and _login.wants_page(request.headers.get("accept")):
            # A browser: the user signs in on the page first. Other clients are signed in
            # at once as login_hint (or the first user), so tests run unattended.
            page = _login.render(query, self.users, self.public_client_id)
            return Response(200, page, dict(_login.PAGE_HEADERS))
        login_hint = query.get("login_hint") or next(iter(self.users))
        if login_hint not in self.users:
            if request.method == "POST":
                # IAS keeps the user on its page with a message, not a redirect.
                error = f"There is no user {login_hint!r}."
                page = _login.render(query, self.users, self.public_client_id, error)
                return Response(200, page, dict(_login.PAGE_HEADERS))
            return refuse("access_denied", "unknown user")
        code = secrets.token_urlsafe(32)
        grant = _Grant(
            redirect_uri,
            query["code_challenge"],
            login_hint,
            query.get("nonce"),
            self.clock() + _CODE_LIFETIME,
        )
        with self._lock:
            self._codes[code] = grant
        location = _with_query(redirect_uri, {"code": code, **state})
        return Response(302, headers={"Location": location})

    def _token(self, request: Request, params: Params) -> Response:
        try:
            form = _form(request, params)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise _OAuthError("invalid_request", "grant_type is missing")
            if grant_type == "authorization_code":
                return json_response(200, self._code_grant(form))
            if grant_type == JWT_BEARER:
                return json_response(200, self._jwt_bearer_grant(request, form))
            raise _OAuthError("unsupported_grant_type", f"grant_type {grant_type} not supported")
        except _OAuthError as error:
            return _error_response(request, error)

    def _code_grant(self, form: dict[str, str]) -> dict[str, Any]:
        required = ("client_id", "code", "redirect_uri", "code_verifier")
        missing = [name for name in required if not form.get(name)]
        if missing:
            raise _OAuthError("invalid_request", f"missing {', '.join(missing)}")
        if form["client_id"] != self.public_client_id:
            raise _OAuthError("invalid_client", "unknown client", 401)
        # Any presentation burns the code, so a wrong verifier gets no second guess.
        with self._lock:
            grant = self._codes.pop(form["code"], None)
        if grant is None or self.clock() >= grant.expires_at:
            raise _OAuthError("invalid_grant", "the code is invalid, used or expired")
        if form["redirect_uri"] != grant.redirect_uri:
            raise _OAuthError("invalid_grant", "redirect_uri differs from the authorize request")
        verifier = form["code_verifier"]
        if not _VERIFIER.fullmatch(verifier) or not hmac.compare_digest(
            s256(verifier), grant.code_challenge
        ):
            raise _OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        claims = self.public_claims(grant.login_hint, {"nonce": grant.nonce})
        return {
            "access_token": self.sign({**claims, "jti": str(uuid.uuid4())}, None, None),
            "id_token": self.sign(claims, None, None),
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
        }

    def _authenticate(self, request: Request, form: dict[str, str]) -> str:
        """Authenticate the application that calls; return its client id."""
        secrets_by_client = {self.client_id: self.client_secret, **self.extra_clients}
        if self.credential_type == "SECRET":
            basic = basic_credentials(request.headers.get("authorization"))
            if basic is None and "client_secret" not in form:
                raise _OAuthError("invalid_client", "client authentication is required", 401)
            client_id, secret = basic or (form.get("client_id", ""), form["client_secret"])
            expected = secrets_by_client.get(client_id, "")
            good_secret = hmac.compare_digest(secret.encode(), expected.encode())
            if not expected or not good_secret:
                raise _OAuthError("invalid_client", "client authentication failed", 401)
        elif request.client_cn is None:
            raise _OAuthError("invalid_client", "a client certificate is required", 401)
        elif request.client_cn not in secrets_by_client:
            raise _OAuthError("invalid_client", "the certificate is not this client's", 401)
        elif _thumbprint(request.client_certificate) in self.refused_certificates:
            # A binding deleted (or rotated): IAS no longer knows its certificate.
            raise _OAuthError("invalid_client", "the certificate is no longer valid", 401)
        else:
            client_id = request.client_cn
        if form.get("client_id", client_id) != client_id:
            raise _OAuthError("invalid_client", "client_id is not the authenticated client", 401)
        return client_id

    def _verify_assertion(self, assertion: str) -> dict[str, Any]:
        with self._lock:
            keys = {key.kid: key for key in self._keys}
        try:
            claims = verify(assertion, keys)
        except InvalidTokenError as exc:
            raise _OAuthError("invalid_grant", f"assertion refused: {exc}") from exc
        now = self.clock()
        exp, nbf = claims.get("exp"), claims.get("nbf", now)
        if claims.get("iss") != self.issuer:
            raise _OAuthError("invalid_grant", "assertion refused: not issued by this tenant")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now:
            raise _OAuthError("invalid_grant", "assertion refused: expired")
        if not isinstance(nbf, int | float) or nbf > now:
            raise _OAuthError("invalid_grant", "assertion refused: not yet valid")
        return claims

    def _jwt_bearer_grant(self, request: Request, form: dict[str, str]) -> dict[str, Any]:
        # Client first: an unauthenticated caller learns nothing about its assertion.
        requester = self._authenticate(request, form)
        if not form.get("assertion"):
            raise _OAuthError("invalid_request", "assertion is missing")
        access_format = form.get("token_format", "opaque")  # IAS's default for this grant
        if access_format not in ("jwt", "opaque"):
            raise _OAuthError("invalid_request", "token_format must be jwt or opaque")
        if form.get("app_tid", self.app_tid) not in self.app_tids:
            raise _OAuthError("invalid_request", "unknown app_tid")
        public = self._verify_assertion(form["assertion"])
        # The new token is for the tenant the request names, else the assertion's.
        tenant = form.get("app_tid", public.get("app_tid", self.app_tid))
        # The same documentation: "audience: must contain the client ID of the requested
        # application in aud". A public client registered as an application of its own
        # gets tokens with only its own id in aud (IAS adds no dependent application's id
        # to tokens of public clients), so IAS refuses to exchange them for this one. The
        # wording of IAS's error_description is unconfirmed; the emulator names both ids.
        audience = public.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or requester not in audiences:
            raise _OAuthError(
                "invalid_grant",
                f"assertion refused: its aud {audience!r} does not contain the client id "
                f"{requester!r} of the requesting application",
            )
        user = self._user_claims(self._find_user(public))
        now = int(self.clock())
        claims = {
            "iss": self.issuer,
            **{name: value for name, value in public.items() if name not in _PER_TOKEN_CLAIMS},
            # The new token speaks of the user as the tenant knows them, not as the
            # assertion put it.
            **user,
            "app_tid": tenant,
            "aud": [requester, self.xsuaa_client_id],
            "azp": requester,
            "iat": now,
            "exp": now + self.exchanged_token_lifetime,
            "jti": str(uuid.uuid4()),
        }
        if self.certificate_bound_tokens and self.credential_type != "SECRET":
            # RFC 8705 3.1: the token is bound to the certificate the client authenticated
            # with. Whether IAS always does this for jwt-bearer over mTLS is unconfirmed.
            claims["cnf"] = {"x5t#S256": _thumbprint(request.client_certificate)}
        if access_format == "jwt":
            access_token = self.sign({**claims, "jti": str(uuid.uuid4())}, None, None)
        else:
            access_token = secrets.token_urlsafe(32)
        answer: dict[str, Any] = {
            "access_token": access_token,
            "id_token": self.sign(claims, None, None),
            "token_type": "Bearer",
            "expires_in": self.exchanged_token_lifetime,
        }
        if form.get("refresh_expiry") != "0":
            answer["refresh_token"] = secrets.token_urlsafe(32)
        return answer

    # -- XSUAA ------------------------------------------------------------------------------

    @property
    def xsuaa_issuer(self) -> str:
        """The ``iss`` of XSUAA tokens: XSUAA names its token endpoint."""
        return self.issuer + XSUAA_TOKEN_PATH

    @property
    def xsappname(self) -> str:
        """The XSUAA app name: the client id without its ``sb-`` prefix."""
        return self.xsuaa_client_id.removeprefix("sb-")

    def _xsuaa_signing_key(self) -> SigningKey:
        with self._lock:
            if self._xsuaa_key is None:
                self._xsuaa_key = SigningKey.generate(f"xsuaa-{secrets.token_hex(6)}")
            return self._xsuaa_key

    def sign_xsuaa(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None) -> str:
        return self._xsuaa_signing_key().sign(claims, headers)

    def xsuaa_keys(self) -> dict[str, Any]:
        """XSUAA's ``/token_keys``: a JWKS whose entries also carry the PEM ``value``."""
        key = self._xsuaa_signing_key()
        pem = (
            key.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )
        return {"keys": [{**key.public_jwk(), "value": pem}]}

    def _xsuaa_token_keys(self, request: Request, params: Params) -> Response:
        """XSUAA's keys of a zone: SAP's libraries ask ``<uaadomain>/token_keys?zid=<zid>``
        (see :mod:`flask_ias_pkce.xsuaa`). Without ``zid`` the keys of the binding's zone
        are served, as for legacy bindings. That XSUAA answers an unknown zone with 400 is
        unconfirmed; the emulator refuses it so that a wrong zone cannot go unnoticed."""
        zone = params.get("zid", [self.app_tid])[0]
        if zone not in self.app_tids:
            payload = {"error": "invalid_request", "error_description": "unknown zid"}
            return json_response(400, payload)
        return json_response(200, self.xsuaa_keys())

    def _authenticate_xsuaa(self, request: Request, form: dict[str, str]) -> None:
        # XSUAA takes the secret at its url and the certificate at its certurl; the
        # emulator serves both on one port, so it accepts whichever the client presents.
        basic = basic_credentials(request.headers.get("authorization"))
        if basic is not None or "client_secret" in form:
            client_id, secret = basic or (form.get("client_id", ""), form["client_secret"])
            good_secret = hmac.compare_digest(secret.encode(), self.xsuaa_client_secret.encode())
            if client_id != self.xsuaa_client_id or not good_secret:
                raise _OAuthError("invalid_client", "client authentication failed", 401)
        elif request.client_cn is None:
            raise _OAuthError("invalid_client", "client authentication is required", 401)
        elif request.client_cn != self.xsuaa_client_id:
            raise _OAuthError("invalid_client", "the certificate is not this client's", 401)
        elif _thumbprint(request.client_certificate) in self.refused_certificates:
            # The binding's old certificate after a rotation: XSUAA no longer accepts it
            # (that its answer is this one, 401 invalid_client, is unconfirmed).
            raise _OAuthError("invalid_client", "the certificate is no longer valid", 401)
        if form.get("client_id", self.xsuaa_client_id) != self.xsuaa_client_id:
            raise _OAuthError("invalid_client", "client_id is not the authenticated client", 401)

    def _local_scopes(self, ias: Mapping[str, Any]) -> list[str]:
        """The user's scopes without the xsappname: the ``scopes`` in ``users`` of the user
        the IAS token names (found as the jwt-bearer grant finds users), else ``Read``.
        XSUAA grants scopes through role collections assigned to the user; the emulator
        takes them as configured. A user it does not know gets the default, as XSUAA
        makes a shadow user for a user of a trusted IAS on first sight."""
        try:
            configured = self.users[self._find_user(ias)].get(XSUAA_SCOPES)
        except _OAuthError:
            configured = None
        return ["Read"] if configured is None else list(configured)

    def _xsuaa_token(self, request: Request, params: Params) -> Response:
        """XSUAA's jwt-bearer grant: an IAS token whose ``aud`` holds the XSUAA client id
        in, an XSUAA access token out."""
        try:
            form = _form(request, params)
            self._authenticate_xsuaa(request, form)
            if form.get("grant_type") != JWT_BEARER:
                raise _OAuthError("unsupported_grant_type", "only the jwt-bearer grant is served")
            if not form.get("assertion"):
                raise _OAuthError("invalid_request", "assertion is missing")
            zone = request.headers.get("x-zid")
            if zone is not None and zone not in self.app_tids:
                raise _OAuthError("invalid_request", "unknown identity zone (x-zid)")
            ias = self._verify_assertion(form["assertion"])
            audience = ias.get("aud")
            audiences = [audience] if isinstance(audience, str) else audience
            if not isinstance(audiences, list) or self.xsuaa_client_id not in audiences:
                raise _OAuthError("invalid_grant", "assertion refused: not issued for this client")
        except _OAuthError as error:
            return _error_response(request, error)
        now = int(self.clock())
        zid = zone or self.app_tid  # the token is issued in the zone the client named
        user = str(ias.get("user_uuid") or ias.get("sub"))
        scope = ["openid", *(f"{self.xsappname}.{name}" for name in self._local_scopes(ias))]
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "ext_attr": {"enhancer": "XSUAA", "subaccountid": zid, "zdn": "emulator"},
            "sub": user,
            "scope": scope,
            "client_id": self.xsuaa_client_id,
            "cid": self.xsuaa_client_id,
            "azp": self.xsuaa_client_id,
            "grant_type": JWT_BEARER,
            "user_id": user,
            "origin": "sap.custom",
            "user_name": ias.get("email", user),
            "auth_time": ias.get("iat", now),
            "iat": now,
            "exp": now + self.xsuaa_token_lifetime,
            "iss": self.xsuaa_issuer,
            "zid": zid,
            "aud": [self.xsuaa_client_id, self.xsappname],
        }
        if isinstance(ias.get("email"), str):
            claims["email"] = ias["email"]
        jku = f"{self.issuer}{XSUAA_KEYS_PATH}?zid={zid}"
        token = self._xsuaa_signing_key().sign(claims, {"jku": jku})
        answer = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.xsuaa_token_lifetime,
            "scope": " ".join(scope),
            "jti": claims["jti"],
        }
        return json_response(200, answer)
