"""A catalogue of hostile and broken requests (RFC 6750, RFC 7519, RFC 8725 and the
advisories of JWT libraries). Each gets its RFC 6750 answer, leaks nothing of the token,
and costs no exchange; where a local check can refuse it, IAS sees no call at all."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from jose import jwk, jwt
from werkzeug import exceptions

from flask_ias_pkce import IASPKCEError, errors, transport
from flask_ias_pkce.testing import IASEmulator

from helpers import bearer, build_app


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(json.dumps(value))


def claims(ias: IASEmulator, **changes: Any) -> dict[str, Any]:
    base = jwt.get_unverified_claims(ias.issue_public_token())
    for name, value in changes.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def signed(ias: IASEmulator, headers: dict[str, Any] | None = None, **changes: Any) -> str:
    return ias.sign(claims(ias, **changes), headers=headers)


def hs256_with_public_key(ias: IASEmulator) -> str:
    # The classic key-confusion attack: HMAC keyed with the RSA public key's PEM.
    public_pem = jwk.construct(ias.jwks["keys"][-1], "RS256").to_pem()
    signing_input = f"{segment({'alg': 'HS256', 'kid': ias.current_kid})}.{segment(claims(ias))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def unsigned(ias: IASEmulator) -> str:
    return f"{segment({'alg': 'none', 'kid': ias.current_kid})}.{segment(claims(ias))}."


def with_alg(ias: IASEmulator, alg: str) -> str:
    # Headers that lie about the algorithm; the signature is RS256 anyway.
    return signed(ias, headers={"alg": alg})


def embedded_jwk(ias: IASEmulator) -> str:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = attacker.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = jwk.construct(pem, "RS256").public_key().to_dict()
    return jwt.encode(
        claims(ias), pem, algorithm="RS256", headers={"kid": "attacker", "jwk": public}
    )


def non_canonical(token: str) -> str:
    # An RS256 signature leaves 4 unused bits in its last base64url character.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]


def retired_key(ias: IASEmulator) -> str:
    old = ias.current_kid
    ias.rotate_keys(retire_old=True)
    return ias.sign(claims(ias), headers=None, kid=old)


DEEP = 1500  # levels of nesting: beyond Python's recursion limit, within the size limit


def nested(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def shallow_nested_payload(ias: IASEmulator) -> str:
    # Deeper than our limit, yet shallow enough for every Python's own parser: refused by
    # our rule, whatever the interpreter (3.13 parses 1,500 levels that 3.11 refuses).
    payload = json.dumps(claims(ias))[:-1] + f', "x": {nested(40)}}}'
    return raw_token(json.dumps({"alg": "RS256", "kid": ias.current_kid}), payload)


def raw_token(header: str, payload: str) -> str:
    # Refused before any signature check, so the signature can be anything.
    return f"{b64(header)}.{b64(payload)}.{b64(b'signature')}"


def nested_header(ias: IASEmulator) -> str:
    header = json.dumps({"alg": "RS256", "kid": ias.current_kid})[:-1] + f', "x": {nested()}}}'
    return raw_token(header, json.dumps(claims(ias)))


def nested_payload(ias: IASEmulator) -> str:
    payload = json.dumps(claims(ias))[:-1] + f', "x": {nested()}}}'
    return raw_token(json.dumps({"alg": "RS256", "kid": ias.current_kid}), payload)


def with_raw_claim(name: str, text: str) -> Callable[[IASEmulator], str]:
    # A claim whose JSON text no Python value would serialise to (1e999, say).
    def make(ias: IASEmulator) -> str:
        payload = json.dumps(claims(ias))[:-1] + f', "{name}": {text}}}'
        return raw_token(json.dumps({"alg": "RS256", "kid": ias.current_kid}), payload)

    return make


HUGE = 10**400  # a 401-digit integer: no float holds it


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[IASEmulator], dict[str, Any]]  # -> test client keyword arguments
    status: int
    error: str | None
    #: A local check refuses it before any call to IAS (no JWKS fetch either).
    no_call: bool = True


def header(value: str | Callable[[IASEmulator], str]) -> Callable[[IASEmulator], dict[str, Any]]:
    def build(ias: IASEmulator) -> dict[str, Any]:
        text = value(ias) if callable(value) else value
        return {"headers": {"Authorization": text}}

    return build


def token(make: Callable[[IASEmulator], str]) -> Callable[[IASEmulator], dict[str, Any]]:
    return header(lambda ias: "Bearer " + make(ias))


NOW = int(time.time())
INVALID = "invalid_token"
BAD_REQUEST = "invalid_request"

CASES = [
    # --- the header (RFC 6750 2.1, 3.1) ---
    Case("no authorization header", lambda ias: {}, 401, None),
    Case("basic scheme", header("Basic dXNlcjpwYXNz"), 401, None),
    Case("digest scheme", header('Digest username="x"'), 401, None),
    Case("scheme only", header("Bearer"), 400, BAD_REQUEST),
    Case("empty bearer value", header("Bearer    "), 400, BAD_REQUEST),
    Case("two tokens in one header", token(lambda ias: "abc def"), 400, BAD_REQUEST),
    Case(
        "two bearer credentials joined",
        header(lambda ias: f"Bearer {ias.issue_public_token()}, Bearer x"),
        400,
        BAD_REQUEST,
    ),
    Case("quote in token", token(lambda ias: 'abc"def'), 400, BAD_REQUEST),
    Case("non-ascii token", token(lambda ias: "tökén.a.b"), 400, BAD_REQUEST),
    Case("control character", token(lambda ias: "abc\tdef"), 400, BAD_REQUEST),
    Case("oversize token", token(lambda ias: "a" * 9000 + ".b.c"), 400, BAD_REQUEST),
    Case(
        "token in the query",
        lambda ias: {"query_string": {"access_token": ias.issue_public_token()}},
        400,
        BAD_REQUEST,
    ),
    Case(
        "token in header and query",
        lambda ias: {
            "headers": {"Authorization": "Bearer " + ias.issue_public_token()},
            "query_string": {"access_token": "x"},
        },
        400,
        BAD_REQUEST,
    ),
    # --- the token's shape (RFC 7519, RFC 7515) ---
    Case("opaque token", token(lambda ias: "opaque-access-token"), 401, INVALID),
    Case("two segments", token(lambda ias: "abc.def"), 401, INVALID),
    Case("four segments", token(lambda ias: "a.b.c.d"), 401, INVALID),
    Case("jwe compact", token(lambda ias: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"), 401, INVALID),
    Case("header not base64 json", token(lambda ias: "bm90anNvbg.e30.c2ln"), 401, INVALID),
    Case("header a json array", token(lambda ias: f"{segment([1])}.e30.c2ln"), 401, INVALID),
    Case(
        "payload not json",
        token(lambda ias: f"{segment({'alg': 'RS256', 'kid': 'k'})}.bm90anNvbg.c2ln"),
        401,
        INVALID,
    ),
    Case(
        "empty signature",
        token(lambda ias: signed(ias).rsplit(".", 1)[0] + "."),
        401,
        INVALID,
        no_call=False,
    ),
    # --- the header's fields (RFC 8725 2.1, 3.1; CVE-2015-9235 and kin) ---
    Case("alg none", token(unsigned), 401, INVALID),
    Case("alg HS256 keyed with the public key", token(hs256_with_public_key), 401, INVALID),
    Case("alg RS512", token(lambda ias: with_alg(ias, "RS512")), 401, INVALID),
    Case("alg PS256", token(lambda ias: with_alg(ias, "PS256")), 401, INVALID),
    Case("alg ES256", token(lambda ias: with_alg(ias, "ES256")), 401, INVALID),
    Case("alg lower case", token(lambda ias: with_alg(ias, "rs256")), 401, INVALID),
    Case("no kid", token(lambda ias: signed(ias, headers={"kid": None})), 401, INVALID),
    Case("kid a number", token(lambda ias: signed(ias, headers={"kid": 7})), 401, INVALID),
    Case(
        "kid with a newline",
        token(lambda ias: signed(ias, headers={"kid": "a\nb"})),
        401,
        INVALID,
    ),
    Case(
        "kid path traversal",
        token(lambda ias: signed(ias, headers={"kid": "../../../../dev/null"})),
        401,
        INVALID,
        no_call=False,
    ),
    Case(
        "kid sql",
        token(lambda ias: signed(ias, headers={"kid": "x' OR '1'='1"})),
        401,
        INVALID,
        no_call=False,
    ),
    Case("kid huge", token(lambda ias: signed(ias, headers={"kid": "k" * 500})), 401, INVALID),
    Case(
        "jku to elsewhere, foreign key",
        token(
            lambda ias: jwt.encode(
                claims(ias),
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                .private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                .decode(),
                algorithm="RS256",
                headers={"kid": ias.current_kid, "jku": "https://attacker.example/jwks"},
            )
        ),
        401,
        INVALID,
        no_call=False,
    ),
    Case("embedded jwk", token(embedded_jwk), 401, INVALID, no_call=False),
    Case(
        "x5u to elsewhere, foreign key",
        token(lambda ias: ias.foreign_key_token()),
        401,
        INVALID,
        no_call=False,
    ),
    Case(
        "crit extension",
        token(lambda ias: signed(ias, headers={"crit": ["exp"]})),
        401,
        INVALID,
    ),
    # --- the claims (RFC 7519 4.1, RFC 8725 3.8-3.10) ---
    Case("expired", token(lambda ias: signed(ias, exp=NOW - 3600)), 401, INVALID),
    Case("exp missing", token(lambda ias: signed(ias, exp=None)), 401, INVALID),
    Case("exp a string", token(lambda ias: signed(ias, exp=str(NOW + 600))), 401, INVALID),
    Case("exp a boolean", token(lambda ias: signed(ias, exp=True)), 401, INVALID),
    Case("nbf in the future", token(lambda ias: signed(ias, nbf=NOW + 3600)), 401, INVALID),
    # --- hostile structure and numbers (red-team review, issue 11) ---
    Case("header nested 1500 levels", token(nested_header), 401, INVALID),
    Case("payload nested 1500 levels", token(nested_payload), 401, INVALID),
    Case("payload nested 40 levels", token(shallow_nested_payload), 401, INVALID),
    Case("exp a 401-digit integer", token(lambda ias: signed(ias, exp=HUGE)), 401, INVALID),
    Case("nbf a 401-digit integer", token(lambda ias: signed(ias, nbf=HUGE)), 401, INVALID),
    Case("iat a 401-digit integer", token(lambda ias: signed(ias, iat=-HUGE)), 401, INVALID),
    Case("exp NaN", token(lambda ias: signed(ias, exp=float("nan"))), 401, INVALID),
    Case("exp Infinity", token(lambda ias: signed(ias, exp=float("inf"))), 401, INVALID),
    Case("nbf -Infinity", token(lambda ias: signed(ias, nbf=float("-inf"))), 401, INVALID),
    Case("exp 1e999", token(with_raw_claim("exp", "1e999")), 401, INVALID),
    Case("exp a list", token(lambda ias: signed(ias, exp=[NOW + 600])), 401, INVALID),
    Case(
        "token in the query, name percent-encoded",
        lambda ias: {"query_string": "access%5Ftoken=" + ias.issue_public_token()},
        400,
        BAD_REQUEST,
    ),
    Case("iat in the future", token(lambda ias: signed(ias, iat=NOW + 3600)), 401, INVALID),
    Case("iss missing", token(lambda ias: signed(ias, iss=None)), 401, INVALID),
    Case("iss over http", token(lambda ias: signed(ias, iss="http://localhost")), 401, INVALID),
    Case(
        "iss a suffix lookalike",
        token(lambda ias: signed(ias, iss="https://localhost.evil.example")),
        401,
        INVALID,
    ),
    Case(
        "iss two labels below",
        token(lambda ias: signed(ias, iss="https://a.b.localhost")),
        401,
        INVALID,
    ),
    Case(
        "iss with user info",
        token(lambda ias: signed(ias, iss="https://localhost@evil.example")),
        401,
        INVALID,
    ),
    Case(
        "iss with a query",
        token(lambda ias: signed(ias, iss="https://localhost?x=evil.example")),
        401,
        INVALID,
    ),
    Case(
        "iss with a fragment",
        token(lambda ias: signed(ias, iss="https://evil.example#.localhost")),
        401,
        INVALID,
    ),
    Case(
        "iss with a path",
        token(lambda ias: signed(ias, iss="https://evil.example/localhost")),
        401,
        INVALID,
    ),
    Case(
        "iss on another port",
        token(lambda ias: signed(ias, iss="https://localhost:1")),
        401,
        INVALID,
    ),
    Case(
        "signature not canonical base64url",
        token(lambda ias: non_canonical(signed(ias))),
        401,
        INVALID,
    ),
    Case("iss a list", token(lambda ias: signed(ias, iss=["https://localhost"])), 401, INVALID),
    Case(
        "iss with a port that is no number",
        token(lambda ias: signed(ias, iss="https://localhost:44x3")),
        401,
        INVALID,
    ),
    Case(
        "ias_iss untrusted",
        token(lambda ias: signed(ias, ias_iss="https://evil.example")),
        401,
        INVALID,
    ),
    Case("aud another client", token(lambda ias: signed(ias, aud="other-app")), 401, INVALID),
    Case("aud missing", token(lambda ias: signed(ias, aud=None)), 401, INVALID),
    Case("aud numbers", token(lambda ias: signed(ias, aud=[1, 2])), 401, INVALID),
    # --- the keys ---
    Case(
        "foreign key with our kid",
        token(lambda ias: ias.foreign_key_token()),
        401,
        INVALID,
        no_call=False,
    ),
    Case("retired key", token(retired_key), 401, INVALID, no_call=False),
    Case(
        "signature of another token",
        token(
            lambda ias: ".".join(
                signed(ias, sub="mallory").split(".")[:2] + signed(ias).split(".")[2:]
            )
        ),
        401,
        INVALID,
        no_call=False,
    ),
]


@pytest.fixture
def app(ias_emulator: IASEmulator) -> Flask:
    return build_app(ias_emulator)


def parts_of(text: str, size: int = 20) -> set[str]:
    return {text[i : i + size] for i in range(0, max(1, len(text) - size + 1))}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_refused(case: Case, app: Flask, ias_emulator: IASEmulator) -> None:
    request = case.build(ias_emulator)
    ias_emulator.reset_calls()

    answer = app.test_client().get("/api/me", **request)

    assert answer.status_code == case.status
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="api"')
    if case.error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{case.error}"' in challenge
        assert answer.json["error"] == case.error
    sent = request.get("headers", {}).get("Authorization", "")
    shown = answer.get_data(as_text=True) + challenge
    leaked = [part for part in parts_of(sent.removeprefix("Bearer ")) if part in shown]
    assert not leaked or len(sent) < 20
    assert ias_emulator.exchanges == []
    if case.no_call:
        assert ias_emulator.calls == []


def test_catalogue_is_large_enough() -> None:
    assert len({case.name for case in CASES}) >= 40


HOSTILE_STRUCTURE = [
    case
    for case in CASES
    if "nested" in case.name or "401-digit" in case.name or "NaN" in case.name
]


@pytest.mark.parametrize("case", HOSTILE_STRUCTURE, ids=[case.name for case in HOSTILE_STRUCTURE])
def test_hostile_structure_is_one_info_line_without_traceback(
    case: Case, app: Flask, ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    request = case.build(ias_emulator)
    caplog.set_level(logging.DEBUG)

    answer = app.test_client().get("/api/me", **request)

    assert answer.status_code == 401
    records = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert [record.levelno for record in records] == [logging.INFO]
    assert all(record.exc_info is None for record in caplog.records)


@pytest.mark.parametrize("query", ["foo_access_token=1", "x=access_token%3D1", "my_access_token"])
def test_a_query_parameter_merely_containing_access_token_is_no_token(
    app: Flask, ias_emulator: IASEmulator, query: str
) -> None:
    # RFC 6750 2.3: only a parameter named exactly access_token carries a token.
    answer = app.test_client().get(
        "/api/me", query_string=query, headers=bearer(ias_emulator.issue_public_token())
    )

    assert answer.status_code == 200


def test_lower_case_scheme_is_accepted(app: Flask, ias_emulator: IASEmulator) -> None:
    answer = app.test_client().get(
        "/api/me", headers={"Authorization": "bearer " + ias_emulator.issue_public_token()}
    )
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        pytest.param('{"a": ' + "[" * 31 + "]" * 31 + "}", True, id="32 levels accepted"),
        pytest.param('{"a": ' + "[" * 32 + "]" * 32 + "}", False, id="33 levels refused"),
        pytest.param('{"a": "' + "[" * 500 + '"}', True, id="brackets inside a string"),
        pytest.param('{"a": "\\"' + "{" * 500 + '"}', True, id="after an escaped quote"),
        pytest.param('{"a": NaN}', False, id="NaN"),
    ],
)
def test_json_rules_are_ours_whatever_the_interpreter(text: str, parsed: bool) -> None:
    # The same limit on every Python: CPython's own depth limit differs by version.
    assert (transport.loads_json(text) is not None) is parsed
    assert (transport.loads_json(text.encode()) is not None) is parsed


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer not.a.token"}, 401, "invalid_token"),
        ({"Authorization": "Bearer "}, 400, "invalid_request"),
    ],
    ids=["missing", "invalid", "empty"],
)
def test_a_host_app_reshapes_refusals_with_errorhandler_by_status(
    ias_emulator: IASEmulator, headers: dict[str, str], status: int, error: str
) -> None:
    # app.errorhandler(401) registers werkzeug's Unauthorized: our errors are that class
    # too (and BadRequest, Forbidden, ...), so a handler by status sees them.
    app = build_app(ias_emulator)
    seen: list[IASPKCEError] = []

    def reshape(refusal: IASPKCEError) -> tuple[dict[str, str], int]:
        seen.append(refusal)
        return {"problem": refusal.error}, refusal.code

    app.register_error_handler(status, reshape)
    answer = app.test_client().get("/api/me", headers=headers)
    assert (answer.status_code, answer.json) == (status, {"problem": error})
    assert [type(refusal).__name__ for refusal in seen] == [
        {"unauthorized": "MissingToken", "invalid_token": "InvalidToken"}.get(
            error, "InvalidRequest"
        )
    ]


@pytest.mark.parametrize(
    ("refusal", "werkzeug_class"),
    [
        (errors.MissingToken("m", reason="r"), exceptions.Unauthorized),
        (errors.InvalidToken("m", reason="r"), exceptions.Unauthorized),
        (errors.InvalidRequest("m", reason="r"), exceptions.BadRequest),
        (errors.InsufficientScope("m", reason="r"), exceptions.Forbidden),
        (errors.IASRefused("m", reason="r"), exceptions.BadGateway),
        (errors.IASTimeout("m", reason="r"), exceptions.GatewayTimeout),
        (errors.IASUnavailable("m", reason="r", retry_after=7), exceptions.ServiceUnavailable),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_each_error_is_werkzeugs_class_of_its_status_with_our_answer(
    refusal: IASPKCEError, werkzeug_class: type[exceptions.HTTPException]
) -> None:
    assert isinstance(refusal, werkzeug_class)
    assert refusal.code == werkzeug_class.code
    response = refusal.get_response()
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.get_data()) == {"error": refusal.error, "error_description": "m"}
    challenge = response.headers.get("WWW-Authenticate")
    assert (challenge is not None) == (refusal.code in (400, 401, 403))
    if isinstance(refusal, errors.IASUnavailable):
        assert response.headers["Retry-After"] == "7"
