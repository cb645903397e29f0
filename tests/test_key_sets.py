"""Signing keys are kept per issuer, tenant and client, as IAS hands them out: what one
tenant's token fetched never vouches for another's, and a failure of one never holds up
the others."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
from jose import jwt

from benchmarks import forged
from flask_ias_pkce import transport
from flask_ias_pkce.errors import IASPKCEError
from flask_ias_pkce.keys import DEFAULT_KEY_LIMITS, JWKSCache, KeyLimits
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.transport import HttpPolicy, new_session
from flask_ias_pkce.verify import TokenVerifier

from helpers import FakeClock, bearer, build_app

UNPROVEN_FETCHES_PER_MINUTE = DEFAULT_KEY_LIMITS.unproven_fetches_per_minute
CERTS = "/oauth2/certs"
DISCOVERY = "/.well-known/openid-configuration"
HOSTED_TENANTS = ("a", "b", "good", "new-tenant", "x")


@pytest.fixture
def ias_emulator() -> Iterator[IASEmulator]:
    """An IAS tenant that hosts several application tenants (``app_tid``), as one IAS
    tenant does for the subaccounts connected to it."""
    with IASEmulator(extra_app_tids=HOSTED_TENANTS) as emulator:
        yield emulator


def passthrough_token(ias: IASEmulator, **claims: object) -> str:
    # Passthrough tokens need no exchange: these tests are about the keys only.
    return ias.issue_public_token(aud=[ias.public_client_id, ias.xsuaa_client_id], **claims)


def key_fetches(ias: IASEmulator) -> list[dict[str, str]]:
    return [call.headers for call in ias.calls if call.path == CERTS]


def test_each_tenant_gets_the_keys_ias_gives_that_tenant(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()

    first = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="a")))
    second = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="b")))
    again = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="a")))

    assert (first.status_code, second.status_code, again.status_code) == (200, 200, 200)
    # The issuer's keys once (no tenant named), then IAS's answer for each tenant.
    assert [fetch.get("x-app_tid") for fetch in key_fetches(ias_emulator)] == [None, "a", "b"]


def test_a_tenant_ias_refuses_does_not_lock_out_another(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    assert (
        client.get(
            "/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="good"))
        ).status_code
        == 200
    )
    # IAS answers 400 for a tenant it does not host (or this client may not see).
    refused = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="evil")))
    good = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="good")))

    assert refused.status_code == 401
    assert good.status_code == 200
    # The issuer's keys, the tenant "good", the tenant "evil" (refused).
    assert [call.status for call in ias_emulator.calls if call.path == CERTS] == [200, 200, 400]


@pytest.mark.parametrize(
    "claims",
    [
        {"app_tid": "a"},
        {"app_tid": "a", "azp": None},
        {"app_tid": None},  # an older tenant's token: no app_tid
        {"app_tid": None, "azp": None},
    ],
    ids=["tenant-and-azp", "tenant-only", "azp-only", "neither"],
)
def test_client_and_tenant_headers_go_together_or_not_at_all(
    ias_emulator: IASEmulator, claims: dict[str, Any]
) -> None:
    # @sap/xssec 3.3.3: "send either both x-app_tid & x-client_id headers or none of them
    # to IAS /certs endpoint to prevent bad request"; the emulator refuses one alone.
    client = build_app(ias_emulator).test_client()
    answer = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, **claims)))
    assert answer.status_code == 200
    fetches = key_fetches(ias_emulator)
    assert fetches
    for headers in fetches:
        assert ("x-client_id" in headers) == ("x-app_tid" in headers), headers
        assert "x-azp" not in headers or "x-app_tid" in headers, headers


def test_key_requests_name_the_client_tenant_and_azp_and_ias_refuses_strangers(
    ias_emulator: IASEmulator,
) -> None:
    client = build_app(ias_emulator).test_client()

    known = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="a")))
    stranger = client.get(
        "/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="b", azp="stranger"))
    )

    assert (known.status_code, stranger.status_code) == (200, 401)
    assert 'error="invalid_token"' in stranger.headers["WWW-Authenticate"]
    own = ias_emulator.client_id
    sent = [
        (f.get("x-client_id"), f.get("x-app_tid"), f.get("x-azp"))
        for f in key_fetches(ias_emulator)
    ]
    # First the issuer's keys (no client headers at all), then IAS's word per tenant and
    # client: x-client_id and x-app_tid always together (@sap/xssec 3.3.3).
    assert sent == [(None, None, None), (own, "a", own), (own, "b", "stranger")]
    assert [call.status for call in ias_emulator.calls if call.path == CERTS] == [200, 200, 400]


def discovery_calls(ias: IASEmulator) -> int:
    return sum(call.path == DISCOVERY for call in ias.calls)


def made_up_tenant(ias: IASEmulator, index: int) -> str:
    # A tenant under the trusted domain that does not exist (anyone can name one).
    return f"https://t{index}.localhost:{urlsplit(ias.url).port}"


def test_forged_tokens_spend_no_budget_of_a_fresh_worker(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator, clock=FakeClock(time.time())).test_client()
    forged = [
        ias_emulator.foreign_key_token(app_tid=f"made-up-{index}", jti=str(index))
        for index in range(3 * UNPROVEN_FETCHES_PER_MINUTE + 5)
    ]

    refused = {client.get("/api/me", headers=bearer(token)).status_code for token in forged}
    real = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator)))

    assert refused == {401}
    assert real.status_code == 200
    # The issuer's keys once, and the real token's tenant once: no call per forged token.
    assert len(key_fetches(ias_emulator)) == 2
    assert [fetch.get("x-app_tid") for fetch in key_fetches(ias_emulator)] == [
        None,
        ias_emulator.app_tid,
    ]


def test_only_a_signed_token_asks_ias_about_its_tenant(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    assert client.get("/api/me", headers=bearer(passthrough_token(ias_emulator))).status_code == 200
    ias_emulator.reset_calls()

    for index in range(50):
        token = ias_emulator.foreign_key_token(app_tid=f"forged-{index}", azp=f"client-{index}")
        assert client.get("/api/me", headers=bearer(token)).status_code == 401
    assert ias_emulator.calls == []

    new_tenant = passthrough_token(ias_emulator, app_tid="new-tenant")
    assert client.get("/api/me", headers=bearer(new_tenant)).status_code == 200
    assert [fetch.get("x-app_tid") for fetch in key_fetches(ias_emulator)] == ["new-tenant"]


def test_a_tenants_keys_decide_even_when_the_issuers_keys_verified(
    ias_emulator: IASEmulator,
) -> None:
    client = build_app(ias_emulator).test_client()
    assert client.get("/api/me", headers=bearer(passthrough_token(ias_emulator))).status_code == 200
    # IAS gives this tenant other keys than the issuer's: its answer decides.
    ias_emulator.inject(CERTS, body={"keys": []})

    answer = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid="x")))

    assert answer.status_code == 502
    assert [fetch.get("x-app_tid") for fetch in key_fetches(ias_emulator)][-1] == "x"


@pytest.fixture
def wildcard_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``*.localhost`` resolves to 127.0.0.1, as a real domain's tenants all resolve.
    The emulator's certificate names only ``localhost``: their TLS handshakes fail fast."""
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("wildcard_dns")
def test_made_up_tenants_share_one_small_budget(ias_emulator: IASEmulator) -> None:
    clock = FakeClock(time.time())
    client = build_app(ias_emulator, clock=clock, IAS_PKCE_RETRIES=0).test_client()
    sent: list[str] = []
    original = transport._send

    def send(session: Any, method: str, url: str, policy: Any, **kwargs: Any) -> Any:
        sent.append(url)
        return original(session, method, url, policy, **kwargs)

    statuses = []
    real = []
    with mock.patch.object(transport, "_send", send):
        for minute in range(3):
            for index in range(40):
                token = ias_emulator.foreign_key_token(
                    ias_iss=made_up_tenant(ias_emulator, 1000 * minute + index)
                )
                statuses.append(client.get("/api/me", headers=bearer(token)).status_code)
                real.append(
                    client.get(
                        "/api/me", headers=bearer(ias_emulator.issue_public_token())
                    ).status_code
                )
            clock.advance(60)

    forged_calls = [url for url in sent if ".localhost:" in url]
    assert len(forged_calls) <= 3 * UNPROVEN_FETCHES_PER_MINUTE
    assert set(statuses) <= {502, 503}
    assert set(real) == {200}


@pytest.mark.usefixtures("wildcard_dns")
def test_key_sets_that_verified_a_token_outlive_a_flood_of_made_up_issuers(
    ias_emulator: IASEmulator,
) -> None:
    clock = FakeClock(time.time())
    session = new_session()
    policy = HttpPolicy(verify=ias_emulator.ca_file, retries=0)
    keys = JWKSCache(session, policy=policy, client_id=ias_emulator.client_id, clock=clock)
    verifier = TokenVerifier(
        keys,
        domains=["localhost"],
        leeway=60,
        clock=clock,
        ports=(None, 443, urlsplit(ias_emulator.url).port),
    )
    audience = [ias_emulator.public_client_id]
    verifier.verify(ias_emulator.issue_public_token(), audience=audience)
    fetches = discovery_calls(ias_emulator)

    # More made-up issuers than any store of key sets holds.
    for index in range(300):
        token = ias_emulator.foreign_key_token(ias_iss=made_up_tenant(ias_emulator, index))
        with contextlib.suppress(IASPKCEError):
            verifier.verify(token, audience=audience)
    verifier.verify(ias_emulator.issue_public_token(), audience=audience)

    assert discovery_calls(ias_emulator) == fetches
    session.close()


def test_forged_tokens_cost_ias_a_bounded_number_of_calls() -> None:
    # The figure of docs/security.rst, smaller: python -m benchmarks.forged measures it.
    result = forged.run(forged=400, tenants=40, threads=4)

    assert result.forged_calls <= forged.bound(minutes=1)
    assert set(result.user_statuses) == {200}
    assert set(result.attack_statuses) <= {401, 502, 503}


def test_a_cached_token_is_served_after_its_signing_key_left_the_jwks(
    ias_emulator: IASEmulator,
) -> None:
    # Decided (docs/security.rst): an entry lives until its own expiry; a key leaving the
    # JWKS is no revocation, and the cache-hit path asks nothing of the key sets.
    client = build_app(ias_emulator).test_client()
    old_token = ias_emulator.issue_public_token()
    assert client.get("/api/me", headers=bearer(old_token)).status_code == 200
    old_kid = ias_emulator.current_kid
    ias_emulator.rotate_keys(retire_old=True)
    ias_emulator.reset_calls()

    cached = client.get("/api/me", headers=bearer(old_token))
    new_with_old_key = ias_emulator.sign(
        {**jwt.get_unverified_claims(old_token), "jti": "another"}, kid=old_kid
    )
    refused = client.get("/api/me", headers=bearer(new_with_old_key))

    assert cached.status_code == 200
    assert cached.json is not None
    assert cached.json["from_cache"] is True
    assert refused.status_code == 401  # a token not cached yet meets the new key set


def test_proven_issuers_and_tenant_sets_are_kept_least_recently_used_first_out(
    ias_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(time.time())
    session = new_session()
    policy = HttpPolicy(verify=ias_emulator.ca_file, retries=0)
    keys = JWKSCache(
        session,
        policy=policy,
        client_id=ias_emulator.client_id,
        clock=clock,
        limits=KeyLimits(max_proven_issuers=1, max_tenant_sets=1),
    )
    port = urlsplit(ias_emulator.url).port
    verifier = TokenVerifier(
        keys, domains=["localhost", "127.0.0.1"], leeway=60, clock=clock, ports=(None, 443, port)
    )
    audience = [ias_emulator.public_client_id]
    keys.proven("https://other.localhost")  # unknown: nothing to promote
    for tenant in ("a", "b", "a"):
        verifier.verify(passthrough_token(ias_emulator, app_tid=tenant), audience=audience)
    # One tenant set kept: "a" was fetched again after "b" took its place.
    assert [fetch.get("x-app_tid") for fetch in key_fetches(ias_emulator)] == [None, "a", "b", "a"]

    # A second issuer (the same emulator by its address) verifies a token: one proven
    # issuer is kept, so the first must be looked up again.
    second = f"https://127.0.0.1:{port}"
    ias_emulator.inject(DISCOVERY, body={"issuer": second, "jwks_uri": second + CERTS})
    verifier.verify(passthrough_token(ias_emulator, ias_iss=second), audience=audience)
    before = discovery_calls(ias_emulator)
    verifier.verify(passthrough_token(ias_emulator), audience=audience)
    session.close()

    assert discovery_calls(ias_emulator) == before + 1


def test_a_binding_url_outside_its_domains_has_no_home_issuer(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator, IAS_PKCE_DOMAINS=["elsewhere.example"]).test_client()

    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 401
    assert ias_emulator.calls == []


@pytest.mark.parametrize("app_tid", ["two words", "", "x" * 129, 42, ["a"]])
def test_a_malformed_app_tid_is_refused_before_any_call(
    ias_emulator: IASEmulator, app_tid: object
) -> None:
    # A tenant id IAS would never write: IAS is not asked about it, and the token is not
    # quietly verified with the issuer's keys alone either.
    client = build_app(ias_emulator).test_client()
    answer = client.get("/api/me", headers=bearer(passthrough_token(ias_emulator, app_tid=app_tid)))
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert ias_emulator.calls == []
