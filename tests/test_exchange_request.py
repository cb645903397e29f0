"""The exchange request, complete: resource URNs, the token endpoint from discovery, a
correlation id on every call, and a cache reuse margin of its own."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest
from test_xsuaa import xsuaa_app

from flask_ias_pkce.config import ConfigError
from flask_ias_pkce.constants import EXTENSION_NAME
from flask_ias_pkce.testing import IASEmulator

from helpers import FakeClock, bearer, build_app

DISCOVERY = "/.well-known/openid-configuration"
RESOURCES = [
    "urn:sap:identity:application:provider:name:orders",
    "urn:sap:identity:application:provider:name:billing",
]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_resources_are_sent_one_parameter_each(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator, IAS_PKCE_RESOURCES=RESOURCES).test_client()

    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 200
    [exchange] = ias_emulator.exchanges
    assert exchange.param_lists["resource"] == RESOURCES


def test_no_resource_parameter_without_resources(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    [exchange] = ias_emulator.exchanges
    assert "resource" not in exchange.param_lists


def test_resources_are_part_of_the_cache_scope(ias_emulator: IASEmulator) -> None:
    def scope(**config: Any) -> str:
        settings = build_app(ias_emulator, **config).extensions[EXTENSION_NAME].settings
        return str(settings.cache_scope())

    assert scope() != scope(IAS_PKCE_RESOURCES=RESOURCES)
    assert scope(IAS_PKCE_RESOURCES=RESOURCES[:1]) != scope(IAS_PKCE_RESOURCES=RESOURCES)
    assert scope(IAS_PKCE_RESOURCES=RESOURCES[0]) == scope(IAS_PKCE_RESOURCES=RESOURCES[:1])


@pytest.mark.parametrize(
    "value",
    ["orders", ["urn:ok", "not a urn"], ["urn:has space"], [42], {"urn:a": 1}, ["urn:"]],
)
def test_bad_resources_are_refused_at_start_up(ias_emulator: IASEmulator, value: Any) -> None:
    with pytest.raises(ConfigError, match="IAS_PKCE_RESOURCES"):
        build_app(ias_emulator, IAS_PKCE_RESOURCES=value)


def test_the_token_endpoint_comes_from_discovery(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    # The first discovery is the key lookup's (answered as usual), the second the exchange's.
    ias_emulator.inject(DISCOVERY)
    document = {"issuer": ias_emulator.issuer, "token_endpoint": ias_emulator.url + "/v2/token"}
    ias_emulator.inject(DISCOVERY, body=document)

    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    # The emulator has no /v2/token: a 404 there is an unusable answer of IAS.
    assert answer.status_code == 502
    assert [call.path for call in ias_emulator.calls][-1] == "/v2/token"
    assert ias_emulator.exchanges == []


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://evil.example/oauth2/token",
        "https://localhost.evil.example/oauth2/token",
        "http://localhost/oauth2/token",
        None,
    ],
)
def test_a_token_endpoint_off_the_issuers_origin_is_never_called(
    ias_emulator: IASEmulator, endpoint: str | None
) -> None:
    client = build_app(ias_emulator).test_client()
    ias_emulator.inject(DISCOVERY)
    ias_emulator.inject(DISCOVERY, body={"issuer": ias_emulator.issuer, "token_endpoint": endpoint})

    answer = client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert answer.status_code == 502
    assert [call.path for call in ias_emulator.calls][-1] == DISCOVERY
    # The failed discovery is not remembered: the next request finds the endpoint.
    assert (
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token())).status_code == 200
    )


def test_the_token_endpoint_is_discovered_once_per_issuer(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    for _ in range(3):
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    assert len(ias_emulator.exchanges) == 3
    # One for the keys, one for the token endpoint.
    assert [call.path for call in ias_emulator.calls].count(DISCOVERY) == 2


def test_incoming_correlation_id_goes_with_every_call(
    ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    client = build_app(ias_emulator).test_client()
    caplog.set_level(logging.INFO, logger="flask_ias_pkce")

    headers = {**bearer(ias_emulator.issue_public_token()), "X-Correlation-ID": "req-42.a_b:c"}
    assert client.get("/api/me", headers=headers).status_code == 200

    calls = ias_emulator.calls
    assert {call.path for call in calls} >= {DISCOVERY, "/oauth2/certs", "/oauth2/token"}
    assert {call.correlation_id for call in calls} == {"req-42.a_b:c"}
    assert any("correlation req-42.a_b:c" in record.getMessage() for record in caplog.records)


def test_vcap_request_id_is_used_when_there_is_no_correlation_id(
    ias_emulator: IASEmulator,
) -> None:
    client = build_app(ias_emulator).test_client()
    vcap = "2a6f1c3e-8a4b-4f0e-9c1d-3e5f7a9b1c2d::f00d"
    headers = {**bearer(ias_emulator.issue_public_token()), "X-Vcap-Request-Id": vcap}

    assert client.get("/api/me", headers=headers).status_code == 200
    assert {call.correlation_id for call in ias_emulator.calls} == {vcap}


@pytest.mark.parametrize(
    "incoming",
    [None, "", "has space", "x" * 129, "-leading-dash", "semi;colon", "ümlaut", "a\tb"],
)
def test_an_unusable_or_missing_id_is_replaced_by_a_new_one(
    ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture, incoming: str | None
) -> None:
    client = build_app(ias_emulator).test_client()
    caplog.set_level(logging.INFO, logger="flask_ias_pkce")
    headers = bearer(ias_emulator.issue_public_token())
    if incoming is not None:
        headers["X-Correlation-ID"] = incoming

    assert client.get("/api/me", headers=headers).status_code == 200

    ids = {call.correlation_id for call in ias_emulator.calls}
    assert len(ids) == 1  # one id for the whole request
    [sent] = ids
    assert sent is not None
    assert UUID.fullmatch(sent)
    assert any(f"correlation {sent}" in record.getMessage() for record in caplog.records)


def test_each_request_gets_its_own_new_id(ias_emulator: IASEmulator) -> None:
    client = build_app(ias_emulator).test_client()
    for _ in range(2):
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token()))

    ids = [call.correlation_id for call in ias_emulator.exchanges]
    assert len(set(ids)) == 2


def test_the_xsuaa_hop_carries_the_correlation_id(
    ias_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = xsuaa_app(ias_emulator, monkeypatch).test_client()
    headers = {**bearer(ias_emulator.issue_public_token()), "X-Correlation-ID": "hop-1"}

    assert client.get("/api/xsuaa", headers=headers).status_code == 200
    assert ias_emulator.xsuaa_exchanges
    assert {call.correlation_id for call in ias_emulator.calls} == {"hop-1"}


def test_min_remaining_is_the_reuse_margin_not_the_leeway() -> None:
    clock = FakeClock(time.time())
    with IASEmulator(clock=clock, token_lifetime=3600, exchanged_token_lifetime=3600) as ias:
        client = build_app(
            ias, clock=clock, IAS_PKCE_MIN_REMAINING=600, IAS_PKCE_LEEWAY=10
        ).test_client()
        token = ias.issue_public_token()
        assert client.get("/api/me", headers=bearer(token)).status_code == 200

        clock.advance(2999)  # 601 s left: still served from the cache
        assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is True
        clock.advance(2)  # 599 s left: exchanged again
        assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is False
        assert len(ias.exchanges) == 2


@pytest.mark.parametrize("value", [-1, 3601, "60", True])
def test_bad_min_remaining_is_refused(ias_emulator: IASEmulator, value: Any) -> None:
    with pytest.raises(ConfigError, match="IAS_PKCE_MIN_REMAINING"):
        build_app(ias_emulator, IAS_PKCE_MIN_REMAINING=value)
