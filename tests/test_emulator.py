"""The IAS emulator behaves like IAS over real HTTPS and mTLS."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from jose import jwt

from flask_ias_pkce.testing import Call, IASEmulator, resolve_tenant_hosts

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REDIRECT_URI = "http://localhost/callback"
DEFAULT_TID = "0f3c6d2e-6a1b-4c55-9d0e-7b8a2f4c1e90"  # the emulator's default app_tid
# RFC 7636 Appendix B (the challenge is the RFC's own text: SHA-256 of the verifier, base64url)
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ias(clock: Clock) -> Iterator[IASEmulator]:
    with IASEmulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
def secret_ias() -> Iterator[IASEmulator]:
    with IASEmulator(credential_type="SECRET") as emulator:
        yield emulator


@pytest.fixture
def client_cert(ias: IASEmulator, tmp_path: Path) -> tuple[str, str]:
    """The binding's certificate and key written to files, as an app would."""
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_text(ias.binding["certificate"])
    keyfile.write_text(ias.binding["key"])
    return str(certfile), str(keyfile)


def authorize(ias: IASEmulator, **overrides: str) -> requests.Response:
    params = {
        "response_type": "code",
        "client_id": ias.public_client_id,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": RFC_CHALLENGE,
        "code_challenge_method": "S256",
        "state": "xyz",
        **overrides,
    }
    return requests.get(
        ias.url + "/oauth2/authorize",
        params=params,
        allow_redirects=False,
        verify=ias.ca_file,
        timeout=5,
    )


def redirect_params(answer: requests.Response) -> dict[str, str]:
    assert answer.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}


def redeem(ias: IASEmulator, code: str, verifier: str = RFC_VERIFIER) -> requests.Response:
    form = {
        "grant_type": "authorization_code",
        "client_id": ias.public_client_id,
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    return requests.post(ias.token_endpoint, data=form, verify=ias.ca_file, timeout=5)


def exchange(ias: IASEmulator, assertion: str, **kwargs: Any) -> requests.Response:
    form = {
        "grant_type": JWT_BEARER,
        "assertion": assertion,
        "token_format": "jwt",
        "refresh_expiry": "0",
        **kwargs.pop("form", {}),
    }
    return requests.post(ias.token_endpoint, data=form, verify=ias.ca_file, timeout=5, **kwargs)


def decode(ias: IASEmulator, token: str, audience: str) -> dict[str, Any]:
    """Verify ``token`` the way a relying party does: key by kid from the served JWKS."""
    jwks = requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["RS256"], audience=audience, issuer=ias.issuer
    )
    return claims


# -- discovery and keys ---------------------------------------------------------------------


def test_discovery_names_our_endpoints(ias: IASEmulator) -> None:
    config = requests.get(
        ias.url + "/.well-known/openid-configuration", verify=ias.ca_file, timeout=5
    ).json()
    assert config["issuer"] == ias.url == ias.issuer
    assert config["token_endpoint"] == ias.token_endpoint
    assert config["jwks_uri"] == ias.url + "/oauth2/certs"
    assert JWT_BEARER in config["grant_types_supported"]
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]


def test_unknown_path_is_a_json_404(ias: IASEmulator) -> None:
    answer = requests.get(ias.url + "/nope", verify=ias.ca_file, timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"


def test_rotate_keys_serves_new_key_and_retire_removes_old(ias: IASEmulator) -> None:
    old_kid = ias.current_kid
    old_token = ias.issue_public_token()
    new_kid = ias.rotate_keys()
    assert ias.current_kid == new_kid != old_kid

    def served() -> set[str]:
        jwks = requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5).json()
        return {key["kid"] for key in jwks["keys"]}

    assert served() == {old_kid, new_kid}
    assert jwt.get_unverified_header(ias.issue_public_token())["kid"] == new_kid
    decode(ias, old_token, ias.public_client_id)

    newest = ias.rotate_keys(retire_old=True)
    assert served() == {newest}
    retired_token = ias.sign({"iss": ias.issuer, "exp": time.time() + 60}, kid=old_kid)
    assert jwt.get_unverified_header(retired_token)["kid"] == old_kid


# -- the public client's PKCE flow ------------------------------------------------------------


def test_pkce_login_gives_tokens_that_verify_against_the_jwks(ias: IASEmulator) -> None:
    tokens = ias.pkce_login()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    claims = decode(ias, tokens["id_token"], ias.public_client_id)
    assert claims["aud"] == ias.public_client_id
    assert claims["azp"] == ias.public_client_id
    assert claims["email"] == "alice@example.com"
    assert claims["app_tid"] == ias.app_tid
    assert claims["sub"] == claims["user_uuid"]
    decode(ias, tokens["access_token"], ias.public_client_id)
    assert jwt.get_unverified_header(tokens["id_token"]) == {
        "alg": "RS256",
        "kid": ias.current_kid,
        "typ": "JWT",
    }


@pytest.mark.parametrize(
    ("verifier", "status"),
    [
        pytest.param(RFC_VERIFIER, 200, id="rfc7636-appendix-b"),
        pytest.param(RFC_VERIFIER[:-1] + "Y", 400, id="wrong-verifier"),
        pytest.param(RFC_CHALLENGE, 400, id="challenge-as-verifier"),
    ],
)
def test_code_redeemed_only_with_the_matching_verifier(
    ias: IASEmulator, verifier: str, status: int
) -> None:
    code = redirect_params(authorize(ias))["code"]
    answer = redeem(ias, code, verifier)
    assert answer.status_code == status
    if status != 200:
        assert answer.json()["error"] == "invalid_grant"


def test_authorize_redirects_code_and_state(ias: IASEmulator) -> None:
    ias.allow_redirect_uri(REDIRECT_URI + "?app=1")
    params = redirect_params(authorize(ias, redirect_uri=REDIRECT_URI + "?app=1"))
    assert params["state"] == "xyz"
    assert params["app"] == "1"
    assert params["code"]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"login_hint": "mallory@example.com"}, "access_denied"),
    ],
)
def test_authorize_errors_redirect(ias: IASEmulator, overrides: dict[str, str], error: str) -> None:
    params = redirect_params(authorize(ias, **overrides))
    assert params["error"] == error
    assert params["state"] == "xyz"
    assert "code" not in params


@pytest.mark.parametrize(
    "overrides", [{"client_id": "someone-else"}, {"redirect_uri": "not a uri"}]
)
def test_authorize_never_redirects_for_unknown_client_or_bad_uri(
    ias: IASEmulator, overrides: dict[str, str]
) -> None:
    answer = authorize(ias, **overrides)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


def test_code_is_single_use(ias: IASEmulator) -> None:
    code = redirect_params(authorize(ias))["code"]
    assert redeem(ias, code).status_code == 200
    second = redeem(ias, code)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"


def test_code_expires_after_60_seconds(ias: IASEmulator, clock: Clock) -> None:
    code = redirect_params(authorize(ias))["code"]
    clock.now += 61
    answer = redeem(ias, code)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


def test_redirect_uri_must_match(ias: IASEmulator) -> None:
    ias.allow_redirect_uri("http://localhost/other")
    code = redirect_params(authorize(ias, redirect_uri="http://localhost/other"))["code"]
    assert redeem(ias, code).json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://localhost/callback/",  # one character more
        "http://localhost/callback?next=/admin",  # a query the registration does not have
        "http://localhost:8080/callback",  # another port
        "https://localhost/callback",  # another scheme
        "https://attacker.example/callback",
    ],
)
def test_authorize_refuses_an_unregistered_redirect_uri_without_redirecting(
    ias: IASEmulator, redirect_uri: str
) -> None:
    answer = authorize(ias, redirect_uri=redirect_uri)
    assert answer.status_code == 400
    assert "Location" not in answer.headers  # RFC 6749 4.1.2.1: never to that URI
    assert answer.json() == {
        "error": "invalid_request",
        "error_description": "redirect_uri is not registered for this client",
    }
    assert ias.redirect_uris == {REDIRECT_URI}


def test_pkce_login_needs_a_registered_redirect_uri(ias: IASEmulator) -> None:
    with pytest.raises(RuntimeError, match="authorize failed: 400"):
        ias.pkce_login(redirect_uri="com.example.mobile://oauth2redirect")
    ias.allow_redirect_uri("com.example.mobile://oauth2redirect")
    tokens = ias.pkce_login(redirect_uri="com.example.mobile://oauth2redirect")
    assert decode(ias, tokens["id_token"], ias.public_client_id)["aud"]


@pytest.mark.parametrize(
    ("uri", "registered"),
    [
        ("http://localhost:5000/app/", True),
        ("http://localhost:61234/app/", True),
        ("http://localhost:1@attacker.example/app/", False),
        ("http://localhost:5000/app/../admin/", False),
        ("http://localhost:5000/other/", False),
        ("http://localhost:5000/app/?x=1", False),
    ],
)
def test_a_wildcard_stays_within_one_part_of_the_uri(
    ias: IASEmulator, uri: str, registered: bool
) -> None:
    ias.allow_redirect_uri("http://localhost:*/app/")
    answer = authorize(ias, redirect_uri=uri)
    assert answer.status_code == (302 if registered else 400)


@pytest.mark.parametrize("uri", ["/relative/callback", "http://localhost/callback#top"])
def test_only_absolute_redirect_uris_without_fragment_can_be_registered(
    ias: IASEmulator, uri: str
) -> None:
    with pytest.raises(ValueError, match="absolute and has no fragment"):
        ias.allow_redirect_uri(uri)
    with pytest.raises(ValueError, match="absolute and has no fragment"):
        IASEmulator(redirect_uris=[uri])


# -- the app's jwt-bearer exchange -------------------------------------------------------------


def test_exchange_with_client_certificate(ias: IASEmulator, client_cert: tuple[str, str]) -> None:
    public = decode(ias, ias.pkce_login()["id_token"], ias.public_client_id)
    assertion = ias.issue_public_token()
    answer = exchange(ias, assertion, cert=client_cert)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "refresh_token" not in body
    assert body["token_type"] == "Bearer"
    claims = decode(ias, body["id_token"], ias.xsuaa_client_id)
    assert claims["aud"] == [ias.client_id, ias.xsuaa_client_id]
    assert claims["azp"] == ias.client_id
    assert claims["sub"] == public["sub"]
    assert claims["groups"] == public["groups"]
    assert decode(ias, body["access_token"], ias.client_id)["sub"] == public["sub"]
    (call,) = ias.exchanges
    assert call.auth_method == "tls_client_auth"
    assert call.client_cn == ias.client_id
    assert call.params["assertion"] == assertion
    assert call.status == 200


def test_exchange_defaults_to_opaque_access_token_and_refresh_token(
    ias: IASEmulator, client_cert: tuple[str, str]
) -> None:
    form = {"token_format": "opaque", "refresh_expiry": "3600"}
    body = exchange(ias, ias.issue_public_token(), cert=client_cert, form=form).json()
    assert body["access_token"].count(".") == 0
    assert body["refresh_token"]


def test_exchange_refused_without_client_certificate(ias: IASEmulator) -> None:
    answer = exchange(ias, ias.issue_public_token())
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_exchange_refused_with_certificate_of_another_ca(ias: IASEmulator, tmp_path: Path) -> None:
    cert_pem, key_pem = ias.make_foreign_client_certificate()
    (tmp_path / "c.pem").write_text(cert_pem)
    (tmp_path / "k.pem").write_text(key_pem)
    cert = (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    try:
        answer = exchange(ias, ias.issue_public_token(), cert=cert)
    except requests.exceptions.ConnectionError:  # SSLError included: handshake refused
        return
    assert answer.status_code == 401


@pytest.mark.parametrize(
    "make_assertion",
    [
        pytest.param(lambda ias: ias.foreign_key_token(), id="foreign-key"),
        pytest.param(lambda ias: ias.issue_public_token(exp=int(time.time()) - 5), id="expired"),
        pytest.param(lambda ias: ias.issue_public_token(iss="https://evil.example"), id="issuer"),
        pytest.param(lambda ias: ias.sign({"iss": ias.issuer}, headers={"alg": "HS256"}), id="alg"),
        pytest.param(lambda ias: "not-a-jwt", id="garbage"),
    ],
)
def test_exchange_refuses_bad_assertion_from_authenticated_client(
    ias: IASEmulator, client_cert: tuple[str, str], make_assertion: Any
) -> None:
    answer = exchange(ias, make_assertion(ias), cert=client_cert)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


def test_exchange_refuses_assertion_signed_by_retired_key(
    ias: IASEmulator, client_cert: tuple[str, str]
) -> None:
    assertion = ias.issue_public_token()
    ias.rotate_keys(retire_old=True)
    assert exchange(ias, assertion, cert=client_cert).json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("form", "error", "status"),
    [
        ({"assertion": ""}, "invalid_request", 400),
        ({"token_format": "xml"}, "invalid_request", 400),
        ({"client_id": "someone-else"}, "invalid_client", 401),
        ({"grant_type": "password"}, "unsupported_grant_type", 400),
    ],
)
def test_exchange_request_errors(
    ias: IASEmulator, client_cert: tuple[str, str], form: dict[str, str], error: str, status: int
) -> None:
    answer = exchange(ias, ias.issue_public_token(), cert=client_cert, form=form)
    assert (answer.status_code, answer.json()["error"]) == (status, error)


def test_public_client_is_the_app_by_default(ias: IASEmulator) -> None:
    claims = decode(ias, ias.pkce_login()["id_token"], ias.client_id)

    assert ias.public_client_id == ias.client_id
    assert claims["aud"] == claims["azp"] == ias.client_id


def test_exchange_of_a_separate_public_clients_token_is_refused() -> None:
    with IASEmulator(public_client_id="mobile-app") as ias:
        token = ias.pkce_login()["id_token"]
        answer = exchange(ias, token, cert=ias.client_certificate_files)

    assert jwt.get_unverified_claims(token)["aud"] == "mobile-app"
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    assert "'mobile-app'" in answer.json()["error_description"]
    assert repr(ias.client_id) in answer.json()["error_description"]


@pytest.mark.parametrize(
    ("aud", "status"),
    [
        pytest.param(["another-app", "backend-app-client-id"], 200, id="among-others"),
        pytest.param(["another-app"], 400, id="other-app-only"),
        pytest.param(None, 400, id="no-aud"),
        pytest.param(42, 400, id="not-a-string"),
    ],
)
def test_exchange_needs_the_clients_id_in_the_assertions_aud(
    ias: IASEmulator, client_cert: tuple[str, str], aud: Any, status: int
) -> None:
    answer = exchange(ias, ias.issue_public_token(aud=aud), cert=client_cert)

    assert answer.status_code == status, answer.text


ALICE_UUID = "6f1a3c1e-2b4d-4e8f-9a0b-1c2d3e4f5a6b"


@pytest.mark.parametrize(
    ("claims", "subject"),
    [
        pytest.param({}, ALICE_UUID, id="as-issued"),
        pytest.param({"sub": "P000042"}, ALICE_UUID, id="user_uuid-decides"),
        pytest.param({"user_uuid": None}, ALICE_UUID, id="by-sub"),
        pytest.param({"user_uuid": None, "sub": "bob@example.com"}, "bob@example.com", id="bob"),
        pytest.param({"user_uuid": "0000", "sub": ALICE_UUID}, None, id="unknown-user_uuid"),
        pytest.param({"user_uuid": None, "sub": "mallory"}, None, id="unknown-sub"),
        pytest.param({"user_uuid": None, "sub": None}, None, id="no-identifier"),
    ],
)
def test_exchange_finds_the_user_by_user_uuid_else_by_sub(
    claims: dict[str, Any], subject: str | None
) -> None:
    users = {"alice@example.com": {"user_uuid": ALICE_UUID}, "bob@example.com": {"groups": []}}
    with IASEmulator(users=users) as ias:
        answer = exchange(ias, ias.issue_public_token(**claims), cert=ias.client_certificate_files)

    if subject is None:
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")
        assert "no user" in answer.json()["error_description"]
    else:
        assert answer.status_code == 200, answer.text
        assert jwt.get_unverified_claims(answer.json()["id_token"])["sub"] == subject


def post_token(ias: IASEmulator, **kwargs: Any) -> requests.Response:
    return requests.post(ias.token_endpoint, verify=ias.ca_file, timeout=5, **kwargs)


@pytest.mark.parametrize(
    ("send", "error", "status"),
    [
        (
            lambda ias, cert: post_token(ias, json={"grant_type": JWT_BEARER}),
            "invalid_request",
            400,
        ),
        (
            lambda ias, cert: post_token(ias, data=[("grant_type", "a"), ("grant_type", "b")]),
            "invalid_request",
            400,
        ),
        (lambda ias, cert: post_token(ias, data={"code": "x"}), "invalid_request", 400),
        (
            lambda ias, cert: post_token(ias, data={"grant_type": "authorization_code"}),
            "invalid_request",
            400,
        ),
        (
            lambda ias, cert: post_token(
                ias,
                data={
                    "grant_type": "authorization_code",
                    "client_id": "someone",
                    "code": "x",
                    "redirect_uri": REDIRECT_URI,
                    "code_verifier": RFC_VERIFIER,
                },
            ),
            "invalid_client",
            401,
        ),
        (
            lambda ias, cert: requests.get(ias.token_endpoint, verify=ias.ca_file, timeout=5),
            "invalid_request",
            405,
        ),
        (
            lambda ias, cert: exchange(
                ias, ias.issue_public_token(), cert=cert, form={"app_tid": "another-tenant"}
            ),
            "invalid_request",
            400,
        ),
        (
            lambda ias, cert: exchange(
                ias, ias.issue_public_token(nbf=int(time.time()) + 3600), cert=cert
            ),
            "invalid_grant",
            400,
        ),
    ],
)
def test_token_endpoint_refuses_malformed_requests_like_ias(
    ias: IASEmulator, client_cert: tuple[str, str], send: Any, error: str, status: int
) -> None:
    answer = send(ias, client_cert)

    assert (answer.status_code, answer.json()["error"]) == (status, error)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_secret_binding_exchange(secret_ias: IASEmulator, method: str) -> None:
    binding = secret_ias.binding
    assert "certificate" not in binding
    credentials = (binding["clientid"], binding["clientsecret"])
    if method == "client_secret_basic":
        answer = exchange(secret_ias, secret_ias.issue_public_token(), auth=credentials)
    else:
        form = dict(zip(("client_id", "client_secret"), credentials, strict=True))
        answer = exchange(secret_ias, secret_ias.issue_public_token(), form=form)
    assert answer.status_code == 200, answer.text
    assert secret_ias.xsuaa_client_id in jwt.get_unverified_claims(answer.json()["id_token"])["aud"]
    (call,) = secret_ias.exchanges
    assert call.auth_method == method
    assert binding["clientsecret"] not in json.dumps(call.params) + json.dumps(call.headers)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "none"])
def test_secret_binding_refuses_wrong_or_missing_secret(
    secret_ias: IASEmulator, method: str
) -> None:
    client_id = secret_ias.client_id
    assertion = secret_ias.issue_public_token()
    if method == "client_secret_basic":
        answer = exchange(secret_ias, assertion, auth=(client_id, "wrong"))
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    elif method == "client_secret_post":
        answer = exchange(
            secret_ias, assertion, form={"client_id": client_id, "client_secret": "x"}
        )
    else:
        answer = exchange(secret_ias, assertion)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def xsuaa_exchange(ias: IASEmulator, **changes: Any) -> requests.Response:
    """An XSUAA jwt-bearer request with the binding's secret; ``changes`` alter it."""
    binding = ias.xsuaa_binding
    form = {
        "grant_type": JWT_BEARER,
        "client_id": binding["clientid"],
        "assertion": changes.pop("assertion", None) or exchanged_token(ias),
        **changes.pop("form", {}),
    }
    auth = changes.pop("auth", (binding["clientid"], binding["clientsecret"]))
    return requests.post(
        ias.xsuaa_url + "/oauth/token",
        data=form,
        auth=auth,
        headers=changes.pop("headers", {}),
        verify=ias.ca_file,
        timeout=5,
    )


def exchanged_token(ias: IASEmulator) -> str:
    """An IAS token with the XSUAA client id in ``aud``, as the first hop gives it."""
    return ias.issue_public_token(aud=[ias.client_id, ias.xsuaa_client_id])


def test_xsuaa_grant_gives_a_token_for_the_xsuaa_client(ias: IASEmulator) -> None:
    answer = xsuaa_exchange(ias)

    assert answer.status_code == 200, answer.text
    claims = jwt.get_unverified_claims(answer.json()["access_token"])
    assert ias.xsuaa_client_id in claims["aud"]


@pytest.mark.parametrize(
    ("changes", "error", "status"),
    [
        ({"auth": ("sb-backend!t4711", "wrong")}, "invalid_client", 401),
        ({"auth": None}, "invalid_client", 401),
        ({"form": {"client_id": "sb-other!t1"}}, "invalid_client", 401),
        ({"form": {"grant_type": "password"}}, "unsupported_grant_type", 400),
        ({"form": {"assertion": ""}}, "invalid_request", 400),
        ({"headers": {"x-zid": "another-zone"}}, "invalid_request", 400),
        ({"assertion": "not.a.token"}, "invalid_grant", 400),
    ],
)
def test_xsuaa_grant_refuses_like_xsuaa(
    ias: IASEmulator, changes: dict[str, Any], error: str, status: int
) -> None:
    answer = xsuaa_exchange(ias, **changes)

    assert (answer.status_code, answer.json()["error"]) == (status, error)


def test_xsuaa_grant_refuses_an_ias_token_without_the_xsuaa_audience(ias: IASEmulator) -> None:
    answer = xsuaa_exchange(ias, assertion=ias.issue_public_token())

    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")


def test_xsuaa_grant_by_certificate(tmp_path: Path) -> None:
    with IASEmulator(xsuaa_credential_type="x509") as ias:
        binding = ias.xsuaa_binding
        certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
        certfile.write_text(binding["certificate"])
        keyfile.write_text(binding["key"])
        form = {"grant_type": JWT_BEARER, "assertion": exchanged_token(ias)}
        url = binding["certurl"] + "/oauth/token"

        with_certificate = requests.post(
            url, data=form, cert=(str(certfile), str(keyfile)), verify=ias.ca_file, timeout=5
        )
        without = requests.post(url, data=form, verify=ias.ca_file, timeout=5)
        other_client = requests.post(
            url,
            data=form,
            cert=(ias.client_certificate_files[0], ias.client_certificate_files[1]),
            verify=ias.ca_file,
            timeout=5,
        )

    assert with_certificate.status_code == 200, with_certificate.text
    assert (without.status_code, without.json()["error"]) == (401, "invalid_client")
    assert (other_client.status_code, other_client.json()["error"]) == (401, "invalid_client")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"credential_type": "PASSWORD"}, "credential_type"),
        ({"xsuaa_credential_type": "instance-secret"}, "xsuaa_credential_type"),
        ({"users": {}}, "users"),
    ],
)
def test_emulator_refuses_settings_it_cannot_emulate(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        IASEmulator(**settings)


def test_inject_needs_at_least_one_time(ias: IASEmulator) -> None:
    with pytest.raises(ValueError, match="times"):
        ias.inject("/oauth2/token", status=500, times=0)


# -- bindings ---------------------------------------------------------------------------------


def test_vcap_services_carry_both_bindings(ias: IASEmulator) -> None:
    vcap = ias.vcap_services()
    identity = vcap["identity"][0]["credentials"]
    assert identity == ias.binding
    assert identity["url"] == ias.url
    assert identity["domains"] == ["localhost"]
    assert identity["credential-type"] == "X509_GENERATED"
    assert identity["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert identity["key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert vcap["xsuaa"][0]["credentials"]["clientid"] == ias.xsuaa_client_id


# -- the JWKS and who asks for it ----------------------------------------------------------


def certs(ias: IASEmulator, **headers: str) -> requests.Response:
    return requests.get(ias.url + "/oauth2/certs", headers=headers, verify=ias.ca_file, timeout=5)


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        pytest.param({}, 200, None, id="no-headers"),
        pytest.param(
            {
                "x-client_id": "backend-app-client-id",
                "x-app_tid": "0f3c6d2e-6a1b-4c55-9d0e-7b8a2f4c1e90",
                "x-azp": "backend-app-client-id",
            },
            200,
            None,
            id="known",
        ),
        pytest.param(
            {"x-client_id": "stranger", "x-app_tid": DEFAULT_TID},
            400,
            "Invalid x-client_id or x-app_tid provided",
            id="client",
        ),
        pytest.param(
            {"x-client_id": "backend-app-client-id", "x-app_tid": "another-tenant"},
            400,
            "Invalid x-client_id or x-app_tid provided",
            id="tenant",
        ),
        # Both or neither (@sap/xssec 3.3.3, SAP's Spring token client).
        pytest.param(
            {"x-client_id": "backend-app-client-id"},
            400,
            "Invalid x-client_id or x-app_tid provided",
            id="client-alone",
        ),
        pytest.param(
            {"x-app_tid": DEFAULT_TID},
            400,
            "Invalid x-client_id or x-app_tid provided",
            id="tenant-alone",
        ),
        pytest.param({"x-azp": "stranger"}, 400, "Invalid x-azp provided", id="azp"),
        pytest.param(
            {"x-client_id": "backend-app-client-id", "x-app_tid": "hosted"},
            200,
            None,
            id="extra-tenant",
        ),
    ],
)
def test_jwks_refuses_clients_and_tenants_it_does_not_know(
    headers: dict[str, str], status: int, message: str | None
) -> None:
    with IASEmulator(extra_app_tids=["hosted"]) as ias:
        answer = certs(ias, **headers)
        [call] = ias.calls

    assert answer.status_code == status
    if message is None:
        assert answer.json() == ias.jwks
    else:
        assert answer.json() == {"msg": message}
    for name, value in headers.items():
        assert call.headers[name] == value


def test_jwks_knows_a_separate_public_client() -> None:
    with IASEmulator(public_client_id="mobile-app") as ias:
        tenant = {"x-app_tid": ias.app_tid}
        assert certs(ias, **{"x-azp": "mobile-app", "x-client_id": ias.client_id, **tenant}).ok
        assert certs(ias, **{"x-client_id": "mobile-app", **tenant}).ok


# -- record and faults ------------------------------------------------------------------------


def test_calls_record_requests_and_connections(ias: IASEmulator) -> None:
    with requests.Session() as session:
        for _ in range(3):
            session.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5)
    requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5)
    calls = ias.calls
    assert [c.path for c in calls] == ["/oauth2/certs"] * 4
    assert all(isinstance(c, Call) and c.status == 200 for c in calls)
    assert len({c.connection_id for c in calls[:3]}) == 1  # keep-alive
    assert calls[3].connection_id != calls[0].connection_id
    assert ias.connections == 2
    ias.reset_calls()
    assert ias.calls == []


def test_a_client_that_asks_to_close_is_told_and_gets_a_new_connection(ias: IASEmulator) -> None:
    # Without "Connection: close" in the answer a client would pool a connection that the
    # emulator is closing, and its next call would fail on it.
    with requests.Session() as session:
        answers = [
            session.get(
                ias.url + "/oauth2/certs",
                headers={"Connection": "close"},
                verify=ias.ca_file,
                timeout=5,
            )
            for _ in range(2)
        ]
        kept = session.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5)
    assert [answer.headers.get("Connection") for answer in answers] == ["close", "close"]
    assert "Connection" not in kept.headers
    assert [answer.status_code for answer in [*answers, kept]] == [200, 200, 200]
    assert len({call.connection_id for call in ias.calls}) == 3


def test_injected_status_body_and_times(ias: IASEmulator, client_cert: tuple[str, str]) -> None:
    ias.inject("/oauth2/token", status=503, body={"error": "temporarily_unavailable"}, times=2)
    assertion = ias.issue_public_token()
    first, second, third = (exchange(ias, assertion, cert=client_cert) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.json() == {"error": "temporarily_unavailable"}
    assert [c.status for c in ias.exchanges] == [503, 503, 200]


def test_injected_delay_then_normal_answer(ias: IASEmulator) -> None:
    ias.inject("/oauth2/certs", delay=0.3)
    started = time.monotonic()
    answer = requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert answer.status_code == 200
    ias.inject("/oauth2/certs", delay=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=(5, 0.2))


def test_injected_drop_and_clear(ias: IASEmulator) -> None:
    ias.inject("/oauth2/certs", drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5)
    assert ias.calls[-1].status is None
    ias.inject("/oauth2/certs", status=500, times=5)
    ias.clear_faults()
    assert requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5).ok


# -- lifecycle and plugin ---------------------------------------------------------------------


def test_stop_is_quick_with_open_connection_and_removes_files() -> None:
    ias = IASEmulator().start()
    ca_dir = os.path.dirname(ias.ca_file)
    assert os.stat(ca_dir).st_mode & 0o777 == 0o700
    with requests.Session() as session:
        session.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=5)
        started = time.monotonic()
        ias.stop()
        assert time.monotonic() - started < 1
    assert not os.path.exists(ca_dir)
    ias.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = ias.url


def test_plugin_fixtures(ias_emulator: IASEmulator, public_token: str) -> None:
    claims = decode(ias_emulator, public_token, ias_emulator.public_client_id)
    assert claims["iss"] == ias_emulator.issuer


def test_xsuaa_grants_each_user_the_configured_scopes() -> None:
    users = {
        "alice@example.com": {"scopes": ["Read", "Admin"]},
        "bob@example.com": {"groups": ["Employees"]},
    }
    with IASEmulator(users=users) as emulator:
        prefix = emulator.xsuaa_binding["xsappname"] + "."

        def scopes(**claims: Any) -> list[str]:
            assertion = emulator.issue_public_token(
                aud=[emulator.client_id, emulator.xsuaa_client_id], **claims
            )
            answer = xsuaa_exchange(emulator, assertion=assertion)
            assert answer.status_code == 200, answer.text
            token_scopes: list[str] = jwt.get_unverified_claims(answer.json()["access_token"])[
                "scope"
            ]
            assert answer.json()["scope"] == " ".join(token_scopes)
            return token_scopes

        assert scopes() == ["openid", prefix + "Read", prefix + "Admin"]
        # Bob has no setting: today's default. A user the tenant does not know (XSUAA
        # would make a shadow user) gets the default too.
        assert scopes(sub="bob@example.com", email="bob@example.com") == ["openid", prefix + "Read"]
        assert scopes(sub="nobody@example.com") == ["openid", prefix + "Read"]


@pytest.mark.parametrize("credential_type", ["X509_GENERATED", "SECRET"])
def test_app_config_binds_an_app_in_one_call(credential_type: str) -> None:
    from flask import Flask

    from flask_ias_pkce import IASPKCE, current_token

    with IASEmulator(credential_type=credential_type) as ias:
        config = ias.app_config(IAS_PKCE_PROTECT="marked", leeway=30, TESTING=True)
        app = Flask("bound")
        app.config.update(config)
        ext = IASPKCE(app)

        @app.get("/me")
        @ext.required
        def me() -> dict[str, Any]:
            return {"aud": current_token.claims["aud"]}

        answer = app.test_client().get(
            "/me", headers={"Authorization": f"Bearer {ias.issue_public_token()}"}
        )
        assert answer.status_code == 200, answer.json
        assert ias.xsuaa_client_id in answer.json["aud"]
        assert ias.exchanges[0].auth_method == (
            "tls_client_auth" if credential_type == "X509_GENERATED" else "client_secret_basic"
        )

    assert config["IAS_PKCE_PROTECT"] == "marked"
    assert config["IAS_PKCE_LEEWAY"] == 30
    assert config["TESTING"] is True
    assert config["IAS_PKCE_VERIFY"].endswith("ca.pem")
    assert ("IAS_PKCE_CLIENT_SECRET" in config) == (credential_type == "SECRET")
    assert ("IAS_PKCE_KEY" in config) == (credential_type == "X509_GENERATED")


def test_app_config_leaves_the_audience_to_the_binding() -> None:
    # One IAS application: the public token's aud is the app's own client id, which is
    # the default accepted audience; app_config() must not widen it.
    with IASEmulator() as ias:
        assert "IAS_PKCE_ACCEPTED_AUDIENCES" not in ias.app_config()
        assert ias.client_id in jwt.get_unverified_claims(ias.issue_public_token())["aud"]
        environment = ias.app_environment("APP", protect="marked")
        assert set(environment) == {"VCAP_SERVICES", "APP_IAS_PKCE_VERIFY", "APP_IAS_PKCE_PROTECT"}
        assert environment["APP_IAS_PKCE_VERIFY"] == ias.ca_file


def _authorize_query(ias: IASEmulator, challenge: str = RFC_CHALLENGE) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": ias.public_client_id,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st<&>ate",
    }


def test_a_browser_gets_a_login_page_and_its_form_signs_in(ias_emulator: IASEmulator) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = requests.get(
        ias_emulator.authorize_endpoint,
        params=_authorize_query(ias_emulator),
        headers=browser,
        allow_redirects=False,
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert '<form method="post" action="/oauth2/authorize"' in page.text
    assert "alice@example.com" in page.text
    assert 'value="st&lt;&amp;&gt;ate"' in page.text  # parameters are escaped
    # The form posts the authorize parameters back with the chosen user.
    signed_in = requests.post(
        ias_emulator.authorize_endpoint,
        data={**_authorize_query(ias_emulator), "pick": "alice@example.com"},
        allow_redirects=False,
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert signed_in.status_code == 302
    location = parse_qs(urlsplit(signed_in.headers["Location"]).query)
    assert location["state"] == ["st<&>ate"]
    tokens = requests.post(
        ias_emulator.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "client_id": ias_emulator.public_client_id,
            "code": location["code"][0],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": RFC_VERIFIER,
        },
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert tokens.status_code == 200
    assert jwt.get_unverified_claims(tokens.json()["id_token"])["email"] == "alice@example.com"


def test_the_login_form_refuses_an_unknown_user_on_the_page(ias_emulator: IASEmulator) -> None:
    answer = requests.post(
        ias_emulator.authorize_endpoint,
        data={**_authorize_query(ias_emulator), "login_hint": "mallory@example.com"},
        allow_redirects=False,
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert answer.status_code == 200
    assert "There is no user &#x27;mallory@example.com&#x27;." in answer.text


def test_a_programmatic_client_is_still_redirected_at_once(ias_emulator: IASEmulator) -> None:
    answer = requests.get(
        ias_emulator.authorize_endpoint,
        params=_authorize_query(ias_emulator),
        allow_redirects=False,
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert answer.status_code == 302
    assert "code=" in answer.headers["Location"]


def test_the_page_is_not_shown_for_a_bad_client(ias_emulator: IASEmulator) -> None:
    answer = requests.get(
        ias_emulator.authorize_endpoint,
        params={**_authorize_query(ias_emulator), "client_id": "someone-else"},
        headers={"Accept": "text/html"},
        allow_redirects=False,
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert answer.status_code == 400


def test_cors_only_for_allowed_origins(ias_emulator: IASEmulator) -> None:
    allowed = "http://127.0.0.1:5000"
    ias_emulator.allow_origin(allowed)

    def token_call(origin: str) -> requests.Response:
        return requests.post(
            ias_emulator.token_endpoint,
            data={"grant_type": "authorization_code"},
            headers={"Origin": origin},
            verify=ias_emulator.ca_file,
            timeout=10,
        )

    good = token_call(allowed)
    assert good.status_code == 400  # the request is incomplete, but the browser may read why
    assert good.headers["Access-Control-Allow-Origin"] == allowed
    assert good.headers["Vary"] == "Origin"
    bad = token_call("http://evil.example")
    assert "Access-Control-Allow-Origin" not in bad.headers
    preflight = requests.options(
        ias_emulator.token_endpoint,
        headers={"Origin": allowed, "Access-Control-Request-Method": "POST"},
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == allowed
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    refused = requests.options(
        ias_emulator.token_endpoint,
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
    discovery = requests.get(
        ias_emulator.url + "/.well-known/openid-configuration",
        headers={"Origin": allowed},
        verify=ias_emulator.ca_file,
        timeout=10,
    )
    assert discovery.headers["Access-Control-Allow-Origin"] == allowed
    assert ias_emulator.allowed_origins == {allowed}
    with pytest.raises(ValueError, match="without a path"):
        ias_emulator.allow_origin("http://127.0.0.1:5000/app")


def test_the_emulator_listens_on_a_given_port() -> None:
    with IASEmulator() as first:
        port = int(first.url.rsplit(":", 1)[1])
    with IASEmulator(port=port) as second:
        assert second.url == f"https://localhost:{port}"
    with pytest.raises(ValueError, match="port"):
        IASEmulator(port=70000)


def test_subscriber_tenants_share_the_applications_redirect_uris() -> None:
    with IASEmulator(subscribers=["customer"]) as emulator, resolve_tenant_hosts():
        emulator.allow_redirect_uri("http://localhost:*/app/")
        base = emulator.tenant_url("customer")

        def status(redirect_uri: str) -> int:
            params = {
                "response_type": "code",
                "client_id": emulator.public_client_id,
                "redirect_uri": redirect_uri,
                "code_challenge": RFC_CHALLENGE,
                "code_challenge_method": "S256",
            }
            answer = requests.get(
                base + "/oauth2/authorize",
                params=params,
                allow_redirects=False,
                verify=emulator.ca_file,
                timeout=5,
            )
            return answer.status_code

        assert status(REDIRECT_URI) == 302
        assert status("http://localhost:5000/app/") == 302
        assert status("https://attacker.example/app/") == 400
