"""Several IAS bindings and subscriber tenants, against the emulator over real HTTPS: each
token is verified and exchanged by its own binding (its own certificate or secret) and at
its own tenant (its own keys and app_tid), and what belongs to nobody costs no call."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from jose import jwt

from flask_ias_pkce import IASPKCE, current_token
from flask_ias_pkce.bindings import BindingError
from flask_ias_pkce.testing import IASEmulator, resolve_tenant_hosts, token_cache_key

from helpers import bearer, build_app

PARTNER = "partner-app-client-id"
TOKEN = "/oauth2/token"
CERTS = "/oauth2/certs"
#: A second application tenant that the provider's IAS tenant hosts.
HOSTED = "hosted-tenant"


def multi_app(ias: IASEmulator, **config: Any) -> Flask:
    """A host app bound to the emulator's two applications, consumer then partner."""
    app = Flask("multi_app")
    app.config.update(
        IAS_PKCE_BINDINGS=[
            {**ias.binding, "name": "consumer"},
            {**ias.binding_for(PARTNER), "name": "partner"},
        ],
        IAS_PKCE_XSUAA_CLIENT_ID=ias.xsuaa_client_id,
        IAS_PKCE_VERIFY=ias.ca_file,
        IAS_PKCE_TIMEOUT=(2.0, 2.0),
    )
    app.config.update(config)
    extension = IASPKCE()

    @app.get("/api/me")
    def me() -> dict[str, Any]:
        return {
            "sub": current_token.claims["sub"],
            "aud": current_token.claims["aud"],
            "azp": current_token.claims["azp"],
            "app_tid": current_token.claims.get("app_tid"),
        }

    extension.init_app(app)
    return app


def partner_token(ias: IASEmulator, **claims: Any) -> str:
    return ias.issue_public_token(**{"aud": PARTNER, "azp": PARTNER, **claims})


def audience_of(call: Any) -> Any:
    return jwt.get_unverified_claims(call.params["assertion"])["aud"]


def refusal_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage().rpartition("reason ")[2]
        for record in caplog.records
        if record.getMessage().startswith("Refused")
    ]


@pytest.fixture(params=["X509_GENERATED", "SECRET"])
def two_apps(request: pytest.FixtureRequest) -> Iterator[IASEmulator]:
    """One IAS tenant with two applications (a consumer and a partner app)."""
    with IASEmulator(credential_type=request.param, extra_applications=[PARTNER]) as ias:
        yield ias


# -- several IAS bindings ------------------------------------------------------------------


def test_each_token_is_exchanged_with_its_own_bindings_credentials(
    two_apps: IASEmulator,
) -> None:
    client = multi_app(two_apps).test_client()

    consumer = client.get("/api/me", headers=bearer(two_apps.issue_public_token()))
    partner = client.get("/api/me", headers=bearer(partner_token(two_apps)))

    assert consumer.status_code == 200, consumer.json
    assert partner.status_code == 200, partner.json
    assert consumer.json["azp"] == two_apps.client_id
    assert partner.json["azp"] == PARTNER
    assert PARTNER in partner.json["aud"]
    exchanges = two_apps.exchanges
    # The emulator records who authenticated each exchange: each binding its own.
    assert [(call.client_id, audience_of(call)) for call in exchanges] == [
        (two_apps.client_id, two_apps.client_id),
        (PARTNER, PARTNER),
    ]
    expected = "tls_client_auth" if two_apps.credential_type != "SECRET" else "client_secret_basic"
    assert {call.auth_method for call in exchanges} == {expected}
    assert all(call.status == 200 for call in exchanges)
    # Each binding asks for the tenant's keys as itself: IAS answers JWKS per client (the
    # issuer's keys, fetched first, name no client).
    assert {call.headers.get("x-client_id") for call in two_apps.calls if call.path == CERTS} == {
        None,
        two_apps.client_id,
        PARTNER,
    }


def test_each_binding_keeps_its_own_connection(two_apps: IASEmulator) -> None:
    client = multi_app(two_apps).test_client()
    for _ in range(2):
        client.get("/api/me", headers=bearer(two_apps.issue_public_token()))
        client.get("/api/me", headers=bearer(partner_token(two_apps)))

    connections: dict[str | None, set[int]] = {}
    for call in two_apps.exchanges:
        connections.setdefault(call.client_id, set()).add(call.connection_id)
    consumer, partner = connections[two_apps.client_id], connections[PARTNER]
    assert not consumer & partner  # a session never carries another binding's requests


def test_a_token_for_neither_binding_is_refused_without_a_call(
    two_apps: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    client = multi_app(two_apps).test_client()
    token = two_apps.issue_public_token(aud="someone-else", azp="someone-else")

    with caplog.at_level(logging.INFO, "flask_ias_pkce"):
        answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert two_apps.calls == []
    assert refusal_reasons(caplog) == ["audience"]


@pytest.mark.parametrize(
    ("order", "chosen"),
    [
        (None, "consumer"),
        (["partner", "consumer"], "partner"),
        (["consumer", "partner"], "consumer"),
    ],
)
def test_a_token_for_both_goes_to_the_first_in_order(
    two_apps: IASEmulator, order: list[str] | None, chosen: str
) -> None:
    config = {} if order is None else {"IAS_PKCE_BINDING_NAME": order}
    client = multi_app(two_apps, **config).test_client()
    token = two_apps.issue_public_token(aud=[PARTNER, two_apps.client_id])

    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    expected = {"consumer": two_apps.client_id, "partner": PARTNER}[chosen]
    assert [call.client_id for call in two_apps.exchanges] == [expected]


def test_a_cached_token_costs_no_routing_and_no_call(two_apps: IASEmulator) -> None:
    client = multi_app(two_apps).test_client()
    token = partner_token(two_apps)
    client.get("/api/me", headers=bearer(token))
    two_apps.reset_calls()

    again = client.get("/api/me", headers=bearer(token))

    assert again.status_code == 200
    assert two_apps.calls == []


def test_the_cache_scope_names_every_binding(two_apps: IASEmulator) -> None:
    one = token_cache_key(build_app(two_apps), "t")
    both = token_cache_key(multi_app(two_apps), "t")
    reordered = multi_app(two_apps, IAS_PKCE_BINDING_NAME=["partner", "consumer"])
    keys = {one, both, token_cache_key(reordered, "t")}
    # With other bindings (or another order) a token may route elsewhere: other entries.
    assert len(keys) == 3


def test_accepted_audiences_cannot_be_shared_by_several_bindings(two_apps: IASEmulator) -> None:
    with pytest.raises(ValueError, match="IAS_PKCE_ACCEPTED_AUDIENCES"):
        multi_app(two_apps, IAS_PKCE_ACCEPTED_AUDIENCES=["x"])


def vcap_with(ias: IASEmulator, *extra: dict[str, Any]) -> str:
    services = ias.vcap_services()
    partner = {
        "label": "identity",
        "name": "partner-ias",
        "instance_name": "partner-ias",
        "plan": "application",
        "credentials": ias.binding_for(PARTNER),
    }
    services["identity"].append(partner)
    services["xsuaa"].extend(extra)
    return json.dumps(services)


def vcap_app(ias: IASEmulator, monkeypatch: pytest.MonkeyPatch, vcap: str, **config: Any) -> Flask:
    monkeypatch.setenv("VCAP_SERVICES", vcap)
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    app = Flask("vcap_app")
    app.config.update(IAS_PKCE_VERIFY=ias.ca_file, IAS_PKCE_TIMEOUT=(2.0, 2.0), **config)

    @app.get("/api/me")
    def me() -> dict[str, Any]:
        return {"azp": current_token.claims["azp"]}

    IASPKCE(app)
    return app


def test_several_identity_entries_in_vcap_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with IASEmulator(extra_applications=[PARTNER]) as ias:
        client = vcap_app(ias, monkeypatch, vcap_with(ias)).test_client()
        answer = client.get("/api/me", headers=bearer(partner_token(ias)))
        assert answer.status_code == 200, answer.json
        assert [call.client_cn for call in ias.exchanges] == [PARTNER]


def test_several_service_binding_root_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    with IASEmulator(extra_applications=[PARTNER]) as ias:
        for name, binding in (("consumer", ias.binding), ("partner", ias.binding_for(PARTNER))):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "type").write_text("identity")
            for key, value in binding.items():
                text = json.dumps(value) if isinstance(value, list) else value
                (folder / key).write_text(text)
        monkeypatch.setenv("SERVICE_BINDING_ROOT", str(tmp_path))
        monkeypatch.delenv("VCAP_SERVICES", raising=False)
        app = Flask("kyma_app")
        app.config.update(
            IAS_PKCE_VERIFY=ias.ca_file,
            IAS_PKCE_XSUAA_CLIENT_ID=ias.xsuaa_client_id,
            IAS_PKCE_TIMEOUT=(2.0, 2.0),
        )
        app.add_url_rule("/api/me", "me", lambda: {"azp": current_token.claims["azp"]})
        IASPKCE(app)
        client = app.test_client()

        partner = client.get("/api/me", headers=bearer(partner_token(ias)))
        consumer = client.get("/api/me", headers=bearer(ias.issue_public_token()))

        assert (partner.json, consumer.json) == ({"azp": PARTNER}, {"azp": ias.client_id})
        assert [call.client_cn for call in ias.exchanges] == [PARTNER, ias.client_id]


def test_one_application_bound_twice_is_refused_at_init_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with IASEmulator() as ias:
        services = ias.vcap_services()
        services["identity"].append({**services["identity"][0], "name": "ias-again"})
        with pytest.raises(BindingError, match=r"'ias'.*'ias-again'"):
            vcap_app(ias, monkeypatch, json.dumps(services))
        ordered = vcap_app(
            ias, monkeypatch, json.dumps(services), IAS_PKCE_BINDING_NAME=["ias-again", "ias"]
        )
        response = ordered.test_client().get("/api/me", headers=bearer(ias.issue_public_token()))
        assert response.status_code == 200


# -- several XSUAA bindings ----------------------------------------------------------------


def xsuaa_entry(ias: IASEmulator, name: str, plan: str, client_id: str) -> dict[str, Any]:
    credentials = {**ias.xsuaa_binding, "clientid": client_id}
    return {
        "label": "xsuaa",
        "name": name,
        "instance_name": name,
        "plan": plan,
        "credentials": credentials,
    }


def test_several_xsuaa_bindings_broker_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with IASEmulator(xsuaa_client_id="sb-broker!b1") as ias:
        other = xsuaa_entry(ias, "xsuaa-app", "application", "sb-app!t1")
        broker = xsuaa_entry(ias, "xsuaa-broker", "broker", ias.xsuaa_client_id)
        services = ias.vcap_services()
        services["xsuaa"] = [other, broker]
        app = vcap_app(ias, monkeypatch, json.dumps(services))
        assert app.extensions["ias_pkce"].settings.xsuaa_client_id == "sb-broker!b1"
        answer = app.test_client().get("/api/me", headers=bearer(ias.issue_public_token()))
        assert answer.status_code == 200


def test_several_xsuaa_bindings_without_a_rule_fail_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with IASEmulator() as ias:
        services = ias.vcap_services()
        services["xsuaa"].append(xsuaa_entry(ias, "xsuaa-two", "application", "sb-two!t2"))
        with pytest.raises(BindingError, match=r"'xsuaa'.*'xsuaa-two'"):
            vcap_app(ias, monkeypatch, json.dumps(services))
        app = vcap_app(ias, monkeypatch, json.dumps(services), IAS_PKCE_XSUAA_BINDING_NAME="xsuaa")
        assert app.extensions["ias_pkce"].settings.xsuaa_client_id == ias.xsuaa_client_id


# -- subscriber tenants --------------------------------------------------------------------


@pytest.fixture
def tenants() -> Iterator[IASEmulator]:
    """A provider tenant and two subscribers, reachable by name in this process."""
    with (
        resolve_tenant_hosts(),
        IASEmulator(subscribers=["sub1", "sub2"], extra_app_tids=[HOSTED]) as ias,
    ):
        yield ias


def tenant_app(ias: IASEmulator, **config: Any) -> Flask:
    app = build_app(ias, **config)

    @app.get("/api/tenant")
    def tenant() -> dict[str, Any]:
        return {"iss": current_token.claims["iss"], "app_tid": current_token.claims["app_tid"]}

    return app


def test_a_subscribers_token_is_verified_and_exchanged_at_its_own_tenant(
    tenants: IASEmulator,
) -> None:
    client = tenant_app(tenants).test_client()
    token = tenants.issue_public_token(tenant="sub1")

    answer = client.get("/api/tenant", headers=bearer(token))

    assert answer.status_code == 200, answer.json
    sub1 = tenants.tenant_app_tid("sub1")
    assert sub1 != tenants.app_tid
    (exchange,) = tenants.exchanges
    assert exchange.host == "sub1.localhost"
    assert exchange.params["app_tid"] == sub1
    jwks = [call for call in tenants.calls if call.path == CERTS]
    assert {call.host for call in jwks} == {"sub1.localhost"}
    assert {call.headers.get("x-app_tid") for call in jwks} <= {sub1, None}
    assert sub1 in {call.headers.get("x-app_tid") for call in jwks}
    # The token the view gets is the subscriber's, of the subscriber's tenant.
    assert (answer.json["iss"], answer.json["app_tid"]) == (tenants.tenant_url("sub1"), sub1)


def test_subscribers_keys_vouch_for_nobody_else(tenants: IASEmulator) -> None:
    client = build_app(tenants).test_client()
    # Signed by sub1 but claiming to come from sub2.
    claims = jwt.get_unverified_claims(tenants.issue_public_token(tenant="sub2"))
    forged = tenants.sign(claims, tenant="sub1")

    answer = client.get("/api/me", headers=bearer(forged))

    assert answer.status_code == 401
    assert tenants.exchanges == []


def test_a_token_naming_another_tenant_is_refused(tenants: IASEmulator) -> None:
    client = build_app(tenants).test_client()
    # sub1's token with the provider's tenant id: IAS refuses sub1's keys for that tenant.
    token = tenants.issue_public_token(tenant="sub1", app_tid=tenants.app_tid)

    answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 401
    assert tenants.exchanges == []


def test_a_subscribers_token_without_app_tid_is_refused_without_a_call(
    tenants: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    client = build_app(tenants).test_client()
    token = tenants.issue_public_token(tenant="sub1", app_tid=None)

    with caplog.at_level(logging.INFO, "flask_ias_pkce"):
        answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert tenants.calls == []
    assert refusal_reasons(caplog) == ["app_tid_missing"]


def test_the_providers_own_token_without_app_tid_uses_the_bindings(tenants: IASEmulator) -> None:
    client = build_app(tenants).test_client()
    token = tenants.issue_public_token(app_tid=None)

    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    (exchange,) = tenants.exchanges
    assert (exchange.host, exchange.params["app_tid"]) == ("localhost", tenants.app_tid)


def test_tenants_outside_the_allow_list_are_refused_without_a_call(
    tenants: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = tenants.tenant_app_tid("sub1")
    client = build_app(tenants, IAS_PKCE_TENANTS=[allowed]).test_client()

    with caplog.at_level(logging.INFO, "flask_ias_pkce"):
        other = client.get("/api/me", headers=bearer(tenants.issue_public_token(tenant="sub2")))
        provider = client.get("/api/me", headers=bearer(tenants.issue_public_token()))
        assert tenants.calls == []
        good = client.get("/api/me", headers=bearer(tenants.issue_public_token(tenant="sub1")))

    assert (other.status_code, provider.status_code, good.status_code) == (401, 401, 200)
    assert 'error="invalid_token"' in other.headers["WWW-Authenticate"]
    assert refusal_reasons(caplog) == ["tenant_not_allowed", "tenant_not_allowed"]


def test_an_allow_list_of_one_tenant_is_a_string(tenants: IASEmulator) -> None:
    client = build_app(tenants, IAS_PKCE_TENANTS=tenants.app_tid).test_client()
    assert client.get("/api/me", headers=bearer(tenants.issue_public_token())).status_code == 200


@pytest.mark.parametrize("value", [7, [""], ["a", 1]])
def test_a_malformed_allow_list_is_refused_at_start(tenants: IASEmulator, value: Any) -> None:
    with pytest.raises(ValueError, match="IAS_PKCE_TENANTS"):
        build_app(tenants, IAS_PKCE_TENANTS=value)


@pytest.mark.parametrize(
    ("issuer", "public_tid", "exchanged_tid", "reason"),
    [
        # Another tenant of the same IAS tenant: its keys verify, its app_tid does not.
        (None, None, HOSTED, "exchanged_tenant"),
        (None, HOSTED, None, "exchanged_tenant"),
        ("sub1", None, HOSTED, "exchanged_jwks_400"),
        # Another subscriber's tenant: IAS refuses sub1's keys for it.
        ("sub1", None, "sub2", "exchanged_jwks_400"),
    ],
)
def test_a_tenant_swap_in_the_exchanged_token_is_refused(
    tenants: IASEmulator,
    caplog: pytest.LogCaptureFixture,
    issuer: str | None,
    public_tid: str | None,
    exchanged_tid: str | None,
    reason: str,
) -> None:
    client = build_app(tenants).test_client()
    own = tenants.tenant_app_tid(issuer)
    token = tenants.issue_public_token(tenant=issuer, app_tid=public_tid or own)
    claims = jwt.get_unverified_claims(token)
    swapped = {**claims, "aud": [tenants.client_id, tenants.xsuaa_client_id]}
    if exchanged_tid == "":
        swapped.pop("app_tid")
    elif exchanged_tid in tenants.subscribers:
        swapped["app_tid"] = tenants.tenant_app_tid(exchanged_tid)
    else:
        swapped["app_tid"] = exchanged_tid or own
    tenants.inject(TOKEN, body={"id_token": tenants.sign(swapped, tenant=issuer)})

    with caplog.at_level(logging.INFO, "flask_ias_pkce"):
        answer = client.get("/api/me", headers=bearer(token))

    assert answer.status_code == 502
    assert refusal_reasons(caplog) == [reason]


# -- the host-name helper and the emulator's tenants ---------------------------------------


def test_resolve_tenant_hosts_resolves_only_inside_the_block() -> None:
    original = socket.getaddrinfo
    with resolve_tenant_hosts():
        addresses = {info[4][0] for info in socket.getaddrinfo("sub1.localhost", 443)}
        byte_name = {info[4][0] for info in socket.getaddrinfo(b"X.LOCALHOST.", 443)}
        with resolve_tenant_hosts(suffix=".example"):
            nested = {info[4][0] for info in socket.getaddrinfo("a.example", 443)}
            still = {info[4][0] for info in socket.getaddrinfo("sub2.localhost", 443)}
        assert socket.getaddrinfo is not original
    assert addresses == byte_name == nested == still == {"127.0.0.1"}
    assert socket.getaddrinfo is original


def test_the_fixture_resolves_tenant_hosts(ias_tenant_hosts: None) -> None:
    assert {info[4][0] for info in socket.getaddrinfo("t.localhost", 80)} == {"127.0.0.1"}


def test_each_subscriber_has_its_own_keys_and_answers_for_itself(tenants: IASEmulator) -> None:
    import requests

    def get(url: str, **headers: str) -> requests.Response:
        return requests.get(url, headers=headers, verify=tenants.ca_file, timeout=5)

    sub1, sub2 = tenants.tenant_url("sub1"), tenants.tenant_url("sub2")
    assert sub1 == f"https://sub1.localhost:{tenants.url.rsplit(':', 1)[1]}"
    kids = {tenants.current_kid, *(k["kid"] for k in tenants.tenant_jwks("sub1")["keys"])}
    assert len(kids) == 2
    assert get(sub1 + "/.well-known/openid-configuration").json()["issuer"] == sub1
    assert get(sub1 + CERTS).json() == tenants.tenant_jwks("sub1")
    own = {"x-client_id": tenants.client_id}
    assert get(sub1 + CERTS, **own, **{"x-app_tid": tenants.tenant_app_tid("sub1")}).ok
    refused = get(sub1 + CERTS, **own, **{"x-app_tid": tenants.tenant_app_tid("sub2")})
    assert refused.status_code == 400
    assert get(sub2 + CERTS).json() != get(sub1 + CERTS).json()
    # A tenant it does not host (its certificate does not name one either).
    assert get(sub1 + CERTS, Host="nobody.localhost").status_code == 404
    with pytest.raises(ValueError, match="no subscriber"):
        tenants.tenant_url("nobody")


def test_a_subscriber_refuses_the_providers_app_tid(tenants: IASEmulator) -> None:
    import requests

    token = tenants.issue_public_token(tenant="sub1")
    answer = requests.post(
        tenants.tenant_url("sub1") + TOKEN,
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": token,
            "app_tid": tenants.app_tid,
        },
        cert=tenants.client_certificate_files,
        verify=tenants.ca_file,
        timeout=5,
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subscribers": ["Bad_Name"]}, "DNS label"),
        ({"extra_applications": ["backend-app-client-id"]}, "repeat"),
    ],
)
def test_emulator_refuses_bad_tenants_and_applications(kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IASEmulator(**kwargs)


def test_binding_for_an_unknown_application(two_apps: IASEmulator) -> None:
    with pytest.raises(ValueError, match="no application"):
        two_apps.binding_for("nobody")


# -- flask ias-pkce check -------------------------------------------------------------------


def test_check_checks_every_binding_one_block_each(two_apps: IASEmulator) -> None:
    from flask_ias_pkce.cli import ias_pkce

    app = multi_app(two_apps)
    result = app.test_cli_runner().invoke(ias_pkce, ["check"])

    text = result.output
    assert result.exit_code == 0, text
    consumer, _, partner = text.partition("-- IAS binding 2 of 2: partner")
    assert "-- IAS binding 1 of 2: consumer" in consumer
    for block, client_id in ((consumer, two_apps.client_id), (partner, PARTNER)):
        assert f"clientid='{client_id}'" in block or client_id in block
        assert "PASS  client auth" in block
        assert "PASS  jwks" in block
    # Each block authenticated as its own binding.
    assert [call.client_id for call in two_apps.exchanges] == [two_apps.client_id, PARTNER]


def test_check_fails_for_the_one_binding_that_is_wrong(two_apps: IASEmulator) -> None:
    from flask_ias_pkce.cli import ias_pkce

    bad = {**two_apps.binding_for(PARTNER), "name": "partner"}
    if "clientsecret" in bad:
        bad["clientsecret"] = "wrong"
    else:
        bad["certificate"], bad["key"] = two_apps.make_foreign_client_certificate()
    app = multi_app(two_apps, IAS_PKCE_BINDINGS=[{**two_apps.binding, "name": "consumer"}, bad])
    result = app.test_cli_runner().invoke(ias_pkce, ["check"])

    consumer, _, partner = result.output.partition("-- IAS binding 2 of 2")
    assert result.exit_code == 1
    assert "PASS  client auth" in consumer
    assert "FAIL" in partner
    assert "FAIL" not in consumer
