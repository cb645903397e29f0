"""The request hook's fast path: a cache hit in process is served in a few steps, and
gives the answer the full path gives. Every test first makes the token's entry (one
exchange), so that the request under test could be a fast-path hit; each then checks
that whatever the full path treats apart still gets the full path's answer."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, g
from jose import jwt

from flask_ias_pkce import IASPKCE, current_token, signals
from flask_ias_pkce.testing import IASEmulator

from helpers import FakeClock, bearer, emulator_config


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """Calls and faults are reset per test: one emulator serves the whole module."""
    return shared_ias_emulator


def _app(ias: IASEmulator, *, clock: FakeClock | None = None, **config: Any) -> Flask:
    app = Flask("fast_path_app")
    app.config.update(emulator_config(ias, **config))
    ext = IASPKCE(clock=clock) if clock is not None else IASPKCE()

    @app.get("/api/me")
    def me() -> dict[str, Any]:
        return {"sub": current_token.claims["sub"], "from_cache": current_token.from_cache}

    @app.route("/api/options", methods=["GET", "OPTIONS"])
    def handles_options() -> str:
        return "the view ran for " + str(current_token.claims["sub"])

    @app.get("/api/admins")
    @ext.require_groups("Admins")
    def admins() -> str:
        return "admin " + str(current_token.claims["sub"])

    @app.get("/api/maybe")
    @ext.optional
    def maybe() -> dict[str, Any]:
        return {"sub": current_token.claims["sub"] if current_token else None}

    ext.init_app(app)
    app.extensions["test_extension"] = ext
    return app


@pytest.fixture
def app(ias_emulator: IASEmulator) -> Flask:
    return _app(ias_emulator)


def _cached(client: Any, token: str, path: str = "/api/me") -> None:
    """One request that exchanges ``token`` and leaves its entry in process."""
    assert client.get(path, headers=bearer(token)).status_code == 200


def _new_hit(app: Flask, ias: IASEmulator, path: str = "/api/me") -> tuple[Any, str]:
    """A client of ``app`` and a new token whose entry ``app`` holds in process."""
    client = app.test_client()
    token = ias.issue_public_token()
    _cached(client, token, path)
    return client, token


@pytest.fixture
def cached(app: Flask, ias_emulator: IASEmulator) -> tuple[Any, str]:
    """A client of ``app`` and a token whose entry it holds in process."""
    return _new_hit(app, ias_emulator)


@pytest.mark.parametrize(
    "authorization",
    [
        "bearer {token}",  # the scheme is case-insensitive (RFC 7235 2.1)
        "BEARER {token}",
        "Bearer  {token}",  # more than one space
        "Bearer {token} ",  # trailing space
        "Bearer {token}\t",
    ],
)
def test_other_spellings_of_the_header_are_hits_of_the_full_path(
    cached: tuple[Any, str], ias_emulator: IASEmulator, authorization: str
) -> None:
    client, token = cached
    answer = client.get("/api/me", headers={"Authorization": authorization.format(token=token)})
    assert answer.status_code == 200
    assert answer.json == {"sub": jwt.get_unverified_claims(token)["sub"], "from_cache": True}
    assert len(ias_emulator.exchanges) == 1


@pytest.mark.parametrize(
    "query",
    ["access_token=x", "%61ccess_token=x", "a=1&access_token=", "access%5Ftoken=y"],
    ids=["plain", "encoded-a", "empty-value", "encoded-underscore"],
)
def test_a_second_token_in_the_query_is_refused_even_when_the_header_is_cached(
    cached: tuple[Any, str], query: str
) -> None:
    client, token = cached
    answer = client.get("/api/me?" + query, headers=bearer(token))
    assert answer.status_code == 400
    assert 'error="invalid_request"' in answer.headers["WWW-Authenticate"]


def test_a_query_that_merely_contains_percent_signs_is_a_hit(cached: tuple[Any, str]) -> None:
    client, token = cached
    answer = client.get("/api/me?q=50%25", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.json["from_cache"] is True


def test_an_options_request_to_a_view_that_handles_options_is_still_authenticated(
    app: Flask, ias_emulator: IASEmulator
) -> None:
    client, token = _new_hit(app, ias_emulator, "/api/options")
    assert client.options("/api/options").status_code == 401
    answer = client.options("/api/options", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.data.startswith(b"the view ran for ")
    # Flask's own OPTIONS of an ordinary view needs no token, cached or not.
    assert client.options("/api/me").status_code == 200


def test_a_cache_hit_listener_hears_every_hit(app: Flask, cached: tuple[Any, str]) -> None:
    client, token = cached
    heard: list[dict[str, Any]] = []

    def listener(sender: Flask, **extra: Any) -> None:
        heard.append(extra)

    with signals.cache_hit.connected_to(listener, app):
        for _ in range(3):
            assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert [hit["subject"] for hit in heard] == [jwt.get_unverified_claims(token)["sub"]] * 3
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert len(heard) == 3  # disconnected: no more


def test_rules_hold_on_a_hit(app: Flask, ias_emulator: IASEmulator) -> None:
    client = app.test_client()
    bob = ias_emulator.pkce_login(login_hint="bob@example.com")["id_token"]
    alice = ias_emulator.issue_public_token()
    _cached(client, alice, "/api/admins")
    _cached(client, bob)  # Bob's entry, made on a route without rules
    for _ in range(2):
        assert client.get("/api/admins", headers=bearer(alice)).status_code == 200
        refused = client.get("/api/admins", headers=bearer(bob))
        assert refused.status_code == 403
        assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert len(ias_emulator.exchanges) == 2


def test_nothing_of_a_refused_token_stays_in_g(app: Flask, ias_emulator: IASEmulator) -> None:
    bob = ias_emulator.pkce_login(login_hint="bob@example.com")["id_token"]
    with app.test_client() as client:
        _cached(client, bob)
        assert client.get("/api/admins", headers=bearer(bob)).status_code == 403
        assert "ias_pkce" not in vars(g)


def test_a_rule_added_after_the_first_hits_takes_effect_at_once(
    app: Flask, ias_emulator: IASEmulator
) -> None:
    client = app.test_client()
    bob = ias_emulator.pkce_login(login_hint="bob@example.com")["id_token"]
    for _ in range(2):
        assert client.get("/api/me", headers=bearer(bob)).status_code == 200
    ext: IASPKCE = app.extensions["test_extension"]
    ext.require_groups("Admins")(app.view_functions["me"])
    assert client.get("/api/me", headers=bearer(bob)).status_code == 403


def test_an_endpoint_made_exempt_after_the_first_hits_sees_no_token(
    app: Flask, ias_emulator: IASEmulator
) -> None:
    client, token = _new_hit(app, ias_emulator, "/api/maybe")
    ext: IASPKCE = app.extensions["test_extension"]
    ext.exempt(app.view_functions["maybe"])
    answer = client.get("/api/maybe", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.json == {"sub": None}


def test_an_entry_past_its_time_is_not_served(ias_emulator: IASEmulator) -> None:
    clock = FakeClock(jwt.get_unverified_claims(ias_emulator.issue_public_token())["iat"])
    app = _app(ias_emulator, clock=clock)
    cache = app.extensions["ias_pkce"].authenticator.cache
    client, token = _new_hit(app, ias_emulator)
    assert client.get("/api/me", headers=bearer(token)).json["from_cache"] is True
    (entry,) = cache._l1.values()
    # Just past the entry's time (the token's expiry less IAS_PKCE_MIN_REMAINING), the
    # token itself still valid: obtained again, not served from process.
    clock.advance(entry.not_after - clock.now + 1)
    answer = client.get("/api/me", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.json["from_cache"] is False
    assert len(ias_emulator.exchanges) == 2


def test_a_remembered_refusal_is_never_a_hit(app: Flask, ias_emulator: IASEmulator) -> None:
    client = app.test_client()
    # A user IAS does not know: it refuses the exchange, and the refusal is remembered.
    stranger = ias_emulator.issue_public_token(sub="stranger@example.com", user_uuid=None)
    for _ in range(3):
        answer = client.get("/api/me", headers=bearer(stranger))
        assert answer.status_code == 401
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert len(ias_emulator.exchanges) == 1


def test_without_the_in_process_tier_every_hit_takes_the_full_path(
    ias_emulator: IASEmulator,
) -> None:
    app = _app(ias_emulator, IAS_PKCE_L1_SIZE=0)
    client = app.test_client()
    token = ias_emulator.issue_public_token()
    for _ in range(3):
        answer = client.get("/api/me", headers=bearer(token))
        assert answer.status_code == 200
    assert answer.json["from_cache"] is True
    assert len(ias_emulator.exchanges) == 1


def test_an_oversize_header_is_refused_before_any_lookup(
    app: Flask, ias_emulator: IASEmulator
) -> None:
    client = app.test_client()
    limit = app.extensions["ias_pkce"].settings.max_token_bytes
    answer = client.get("/api/me", headers=bearer("a" * (limit + 1)))
    assert answer.status_code == 400
    assert 'error="invalid_request"' in answer.headers["WWW-Authenticate"]
    assert ias_emulator.calls == []


def test_a_rule_added_while_a_request_resolves_the_endpoint_is_not_lost(
    app: Flask, ias_emulator: IASEmulator
) -> None:
    # The interleaving of two threads, made deterministic: a rule is added right after a
    # full-path request has read the endpoint's (old) rules, before it keeps them. What it
    # resolved then must not be written back over the new rule.
    client = app.test_client()
    bob = ias_emulator.pkce_login(login_hint="bob@example.com")["id_token"]
    state = app.extensions["ias_pkce"]
    ext: IASPKCE = app.extensions["test_extension"]
    me = app.view_functions["me"]
    resolve = ext._resolve_rules

    def resolve_then_add_a_rule(*args: Any) -> Any:
        rules = resolve(*args)
        ext.require_groups("Admins")(me)  # "the other thread"
        return rules

    ext._resolve_rules = resolve_then_add_a_rule  # type: ignore[method-assign]
    try:
        assert client.get("/api/me", headers=bearer(bob)).status_code == 200  # began before
    finally:
        ext._resolve_rules = resolve  # type: ignore[method-assign]
    assert "me" not in state.rules
    for _ in range(3):  # the fast path's spelling, and the full path's
        assert client.get("/api/me", headers=bearer(bob)).status_code == 403
        assert client.get("/api/me", headers={"Authorization": "bearer " + bob}).status_code == 403


def test_a_shared_app_context_never_shows_the_previous_requests_token(
    app: Flask, ias_emulator: IASEmulator
) -> None:
    # Flask reuses an app context already pushed (tests often push one around several
    # requests), and g lives in it: each request must start without a token in g.
    seen: list[bool] = []

    @app.get("/public")
    @app.extensions["test_extension"].exempt
    def public() -> str:
        seen.append(bool(current_token))
        return "public"

    @app.errorhandler(401)
    def refused(error: Exception) -> tuple[str, int]:
        seen.append(bool(current_token))
        return "refused", 401

    client = app.test_client()
    token = ias_emulator.issue_public_token()
    with app.app_context():
        assert client.get("/api/me", headers=bearer(token)).status_code == 200
        assert client.get("/public").status_code == 200
        assert client.get("/api/me", headers=bearer(token)).status_code == 200
        assert client.get("/api/me", headers=bearer(token + "x")).status_code == 401
    assert seen == [False, False]
