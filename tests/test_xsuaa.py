"""The second hop as a user sees it: ``current_token.xsuaa_token()`` gives an XSUAA token,
once per IAS token, and a refusing XSUAA is a clean 502."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from jose import jwt

from flask_ias_pkce import IASPKCE, KeyLimits, current_token
from flask_ias_pkce.constants import JWT_BEARER_GRANT
from flask_ias_pkce.testing import IASEmulator

from helpers import FakeClock, bearer, build_app

XSUAA_TOKEN_PATH = "/xsuaa/oauth/token"


def xsuaa_app(
    ias: IASEmulator,
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock | None = None,
    key_limits: KeyLimits | None = None,
) -> Flask:
    """An app bound as on Cloud Foundry: identity and xsuaa through VCAP_SERVICES."""
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(ias.vcap_services()))
    app = Flask("xsuaa_app")
    app.config.update(
        IAS_PKCE_VERIFY=ias.ca_file,
        IAS_PKCE_TIMEOUT=(2.0, 2.0),
        IAS_PKCE_RETRIES=0,
    )
    options: dict[str, Any] = {"clock": clock} if clock else {}
    if key_limits is not None:
        options["key_limits"] = key_limits
    extension = IASPKCE(**options)

    @app.get("/api/xsuaa")
    def xsuaa() -> dict[str, Any]:
        token = current_token.xsuaa_token()
        return {"claims": jwt.get_unverified_claims(token), "ias_token": current_token.token}

    extension.init_app(app)
    return app


@pytest.fixture
def secret_emulator() -> Iterator[IASEmulator]:
    with IASEmulator() as emulator:
        yield emulator


def test_xsuaa_token_obtained_once_per_ias_token(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = secret_emulator
    client = xsuaa_app(ias, monkeypatch).test_client()
    token = ias.pkce_login()["id_token"]

    answers = [client.get("/api/xsuaa", headers=bearer(token)) for _ in range(4)]

    assert [a.status_code for a in answers] == [200] * 4
    claims = answers[0].json["claims"]
    assert ias.xsuaa_client_id in claims["aud"]
    assert claims["iss"] == ias.xsuaa_issuer
    assert claims["user_name"] == "alice@example.com"
    assert claims["zid"] == ias.app_tid
    assert all(a.json["claims"]["jti"] == claims["jti"] for a in answers)
    [exchange] = ias.xsuaa_exchanges
    assert exchange.params == {
        "grant_type": JWT_BEARER_GRANT,
        "client_id": ias.xsuaa_client_id,
        "assertion": answers[0].json["ias_token"],
        "token_format": "jwt",
    }
    assert exchange.auth_method == "client_secret_basic"
    assert exchange.headers["x-zid"] == ias.app_tid
    assert exchange.status == 200

    other = ias.issue_public_token()
    assert client.get("/api/xsuaa", headers=bearer(other)).status_code == 200
    assert len(ias.xsuaa_exchanges) == 2


def test_concurrent_requests_share_one_xsuaa_exchange(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = secret_emulator
    app = xsuaa_app(ias, monkeypatch)
    token = ias.issue_public_token()
    ias.inject(XSUAA_TOKEN_PATH, delay=0.3)  # slow, so that every request arrives meanwhile
    statuses: list[int] = []

    def call() -> None:
        statuses.append(app.test_client().get("/api/xsuaa", headers=bearer(token)).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * 8
    assert len(ias.exchanges) == 1
    assert len(ias.xsuaa_exchanges) == 1


def test_xsuaa_token_with_client_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    with IASEmulator(xsuaa_credential_type="x509") as ias:
        assert "clientsecret" not in ias.xsuaa_binding
        client = xsuaa_app(ias, monkeypatch).test_client()

        answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

        assert answer.status_code == 200
        assert ias.xsuaa_client_id in answer.json["claims"]["aud"]
        [exchange] = ias.xsuaa_exchanges
        assert exchange.auth_method == "tls_client_auth"
        assert exchange.client_cn == ias.xsuaa_client_id


def test_xsuaa_refusal_is_a_clean_502(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = secret_emulator
    client = xsuaa_app(ias, monkeypatch).test_client()
    token = ias.issue_public_token()
    ias.inject(
        XSUAA_TOKEN_PATH,
        status=401,
        body={"error": "invalid_client", "error_description": "Bad credentials"},
    )

    answer = client.get("/api/xsuaa", headers=bearer(token))

    assert answer.status_code == 502
    assert answer.json["error"] == "bad_gateway"
    assert token not in answer.get_data(as_text=True)
    # A refusal is not cached: the next request asks again and succeeds.
    assert client.get("/api/xsuaa", headers=bearer(token)).status_code == 200
    assert len(ias.xsuaa_exchanges) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "bearer"},
        {"access_token": "not-a-jwt"},
        "<html>oops</html>",
    ],
)
def test_unusable_xsuaa_answer_is_a_502(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch, body: Any
) -> None:
    ias = secret_emulator
    client = xsuaa_app(ias, monkeypatch).test_client()
    ias.inject(XSUAA_TOKEN_PATH, status=200, body=body)

    answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 502
    assert answer.json["error"] == "bad_gateway"


def test_xsuaa_token_signed_by_a_stranger_is_refused(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = secret_emulator
    client = xsuaa_app(ias, monkeypatch).test_client()
    # Signed by an IAS key, whose kid XSUAA's token_keys do not list.
    forged = ias.sign(
        {
            "iss": ias.xsuaa_issuer,
            "aud": [ias.xsuaa_client_id],
            "exp": int(time.time()) + 600,
        }
    )
    ias.inject(XSUAA_TOKEN_PATH, status=200, body={"access_token": forged})

    answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 502


def test_xsuaa_token_obtained_again_when_it_nears_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    with IASEmulator(xsuaa_token_lifetime=120) as ias:
        clock = FakeClock(time.time())
        client = xsuaa_app(ias, monkeypatch, clock=clock).test_client()
        token = ias.issue_public_token()
        assert client.get("/api/xsuaa", headers=bearer(token)).status_code == 200

        clock.advance(30)  # within exp less the leeway (120 - 60): cached
        assert client.get("/api/xsuaa", headers=bearer(token)).status_code == 200
        assert len(ias.xsuaa_exchanges) == 1

        clock.advance(40)  # past it: the same IAS token gets a new XSUAA token
        assert client.get("/api/xsuaa", headers=bearer(token)).status_code == 200
        assert len(ias.xsuaa_exchanges) == 2
        assert len(ias.exchanges) == 1


def test_no_xsuaa_binding_means_no_second_hop(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator)
    app.testing = True  # let the view's error reach the test

    @app.get("/api/hop")
    def hop() -> str:
        return current_token.xsuaa_token()

    with pytest.raises(RuntimeError, match="No XSUAA binding"):
        app.test_client().get("/api/hop", headers=bearer(ias_emulator.issue_public_token()))


def xsuaa_claims(ias: IASEmulator, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ias.xsuaa_issuer,
        "aud": [ias.xsuaa_client_id],
        "sub": "someone",
        "exp": int(time.time()) + 600,
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def non_canonical(token: str) -> str:
    """``token`` with its signature's last character changed in bits that decoding drops:
    the same bytes, written another way (a 2048-bit signature leaves 4 such bits)."""
    head, body, signature = token.split(".")
    assert len(signature) % 4 == 2
    last = _BASE64URL.index(signature[-1])
    return f"{head}.{body}.{signature[:-1]}{_BASE64URL[last ^ 1]}"


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def nested_json(depth: int = 1500) -> str:
    return '{"alg": "RS256", "kid": "k", "x": ' + "[" * depth + "]" * depth + "}"


def sign_nested_xsuaa(ias: IASEmulator, depth: int = 1500) -> str:
    # json.dumps recurses too: give it room to write what the parser must refuse.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10 * depth)
    try:
        deep: list[Any] = []
        for _ in range(depth):
            deep = [deep]
        return ias.sign_xsuaa({**xsuaa_claims(ias), "deep": deep})
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda ias: "e30.e30.e30", "xsuaa_alg_not_allowed"),
        (lambda ias: "a.b.c", "xsuaa_not_canonical"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias), headers={"alg": "HS256"}), "alg_not"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias), headers={"kid": None}), "xsuaa_kid_bad"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias), headers={"kid": "x"}), "kid_unknown"),
        (lambda ias: ias.sign_xsuaa(["not", "an", "object"]), "xsuaa_malformed_jwt"),  # type: ignore[arg-type]
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias, iss="https://evil.example")), "issuer"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias, iss=None)), "xsuaa_issuer_untrusted"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias, exp=int(time.time()) - 600)), "expired"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias, aud=["another-app"])), "xsuaa_audience"),
        # The same rules as for IAS tokens (one reading of a JWS for both hops): a header
        # with crit, base64url that is not canonical, hostile nesting and numbers.
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias), headers={"crit": ["exp"]}), "crit"),
        (lambda ias: non_canonical(ias.sign_xsuaa(xsuaa_claims(ias))), "xsuaa_not_canonical"),
        (lambda ias: f"{b64(nested_json())}.e30.e30", "xsuaa_malformed_jwt"),
        (lambda ias: sign_nested_xsuaa(ias), "xsuaa_malformed_jwt"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias, exp=10**400)), "xsuaa_exp_malformed"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias, exp=float("nan"))), "xsuaa_malformed"),
        (lambda ias: ias.sign_xsuaa(xsuaa_claims(ias, exp=float("inf"))), "xsuaa_malformed"),
        (
            lambda ias: ".".join(
                ias.sign_xsuaa(xsuaa_claims(ias)).split(".")[:2]
                + ias.sign_xsuaa(xsuaa_claims(ias, sub="mallory")).split(".")[2:]
            ),
            "xsuaa_signature",
        ),
    ],
)
def test_every_broken_xsuaa_token_is_a_502_with_its_reason(
    secret_emulator: IASEmulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    forge: Any,
    reason: str,
) -> None:
    ias = secret_emulator
    client = xsuaa_app(ias, monkeypatch).test_client()
    forged = forge(ias)
    ias.inject(XSUAA_TOKEN_PATH, status=200, body={"access_token": forged})

    answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 502
    assert forged not in answer.get_data(as_text=True)
    [failure] = [
        r.getMessage() for r in caplog.records if "XSUAA exchange failed" in r.getMessage()
    ]
    assert reason in failure


def test_xsuaa_issuer_may_be_a_subscriber_subdomain(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # XSUAA names a subscriber's subdomain in iss: any host under the binding's uaadomain.
    ias = secret_emulator
    uaadomain = ias.xsuaa_binding["uaadomain"]
    client = xsuaa_app(ias, monkeypatch).test_client()
    token = ias.sign_xsuaa(xsuaa_claims(ias, iss=f"https://subscriber.{uaadomain}/oauth/token"))
    ias.inject(XSUAA_TOKEN_PATH, status=200, body={"access_token": token})

    answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 200, answer.json
    assert answer.json["claims"]["iss"].startswith("https://subscriber.")


def test_xsuaa_without_a_key_set_is_a_502(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = secret_emulator
    client = xsuaa_app(ias, monkeypatch).test_client()
    ias.inject("/token_keys", status=404, body={"error": "not_found"})

    answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 502


def test_xsuaa_over_plain_http_is_never_called(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A binding that names http:// would send the IAS token in clear: refused, as a 503.
    ias = secret_emulator
    vcap = ias.vcap_services()
    xsuaa = vcap["xsuaa"][0]["credentials"]
    xsuaa["url"] = xsuaa["url"].replace("https://", "http://")
    xsuaa.pop("certurl", None)
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(vcap))
    app = Flask("plain_http")
    app.config.update(
        IAS_PKCE_VERIFY=ias.ca_file,
        IAS_PKCE_RETRIES=0,
    )

    @app.get("/api/xsuaa")
    def hop() -> str:
        return current_token.xsuaa_token()

    IASPKCE(app)

    answer = app.test_client().get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 503
    assert ias.xsuaa_exchanges == []


def key_requests(ias: IASEmulator) -> list[Any]:
    return [call for call in ias.calls if call.path == "/token_keys"]


def test_xsuaa_keys_come_from_the_uaadomain_for_the_tokens_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As SAP's libraries fetch them: https://<uaadomain>/token_keys?zid=<zid>, x-zid too.
    with IASEmulator(extra_app_tids=["zone-2"]) as ias:
        client = xsuaa_app(ias, monkeypatch).test_client()

        first = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))
        again = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))
        other_zone = client.get(
            "/api/xsuaa", headers=bearer(ias.issue_public_token(app_tid="zone-2"))
        )

        assert [first.status_code, again.status_code, other_zone.status_code] == [200] * 3
        assert other_zone.json["claims"]["zid"] == "zone-2"
        assert [call.headers["x-zid"] for call in ias.xsuaa_exchanges][-1] == "zone-2"
        fetches = key_requests(ias)
        assert [call.params for call in fetches] == [
            {"zid": ias.app_tid, "client_id": ias.xsuaa_client_id},
            {"zid": "zone-2", "client_id": ias.xsuaa_client_id},
        ]
        assert [call.headers["x-zid"] for call in fetches] == [ias.app_tid, "zone-2"]


def test_xsuaa_token_of_a_zone_xsuaa_has_no_keys_for_is_a_502(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = secret_emulator
    client = xsuaa_app(ias, monkeypatch).test_client()
    token = ias.sign_xsuaa(xsuaa_claims(ias, zid="another-zone"))
    ias.inject(XSUAA_TOKEN_PATH, status=200, body={"access_token": token})

    answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 502
    [fetch] = key_requests(ias)
    assert (fetch.params["zid"], fetch.status) == ("another-zone", 400)


def test_xsuaa_binding_without_uaadomain_has_its_keys_asked_at_its_url(
    secret_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = secret_emulator
    vcap = ias.vcap_services()
    del vcap["xsuaa"][0]["credentials"]["uaadomain"]
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(vcap))
    app = Flask("no_uaadomain")
    app.config.update(IAS_PKCE_VERIFY=ias.ca_file, IAS_PKCE_RETRIES=0)

    @app.get("/api/xsuaa")
    def hop() -> str:
        return current_token.xsuaa_token()

    IASPKCE(app)

    app.test_client().get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert [call.path for call in ias.calls if call.path.endswith("/token_keys")] == [
        "/xsuaa/token_keys"
    ]


def test_xsuaa_key_sets_are_kept_for_a_bounded_number_of_zones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with IASEmulator(extra_app_tids=["zone-2"]) as ias:
        client = xsuaa_app(ias, monkeypatch, key_limits=KeyLimits(max_xsuaa_zones=1)).test_client()

        for zone in (ias.app_tid, "zone-2", ias.app_tid):
            token = ias.issue_public_token(app_tid=zone)
            assert client.get("/api/xsuaa", headers=bearer(token)).status_code == 200

        # The first zone's keys made room for the second's, so they were fetched again.
        assert [call.params["zid"] for call in key_requests(ias)] == [
            ias.app_tid,
            "zone-2",
            ias.app_tid,
        ]


def test_xsuaa_token_inside_the_margin_is_reused_until_its_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One rule for both hops: a token that is already within IAS_PKCE_MIN_REMAINING of its
    # expiry is served until that expiry, not obtained again on every call.
    with IASEmulator(xsuaa_token_lifetime=30) as ias:
        clock = FakeClock(time.time())
        client = xsuaa_app(ias, monkeypatch, clock=clock).test_client()
        token = ias.issue_public_token()

        for _ in range(3):
            assert client.get("/api/xsuaa", headers=bearer(token)).status_code == 200
        assert len(ias.xsuaa_exchanges) == 1

        clock.advance(31)  # past its expiry: a new one
        assert client.get("/api/xsuaa", headers=bearer(token)).status_code == 200
        assert len(ias.xsuaa_exchanges) == 2
