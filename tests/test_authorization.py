"""Authorization per view: groups of the IAS token and scopes of the XSUAA token, refused
with 403 insufficient_scope, after authentication, from the cache without calls."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask
from jose import jwt

from flask_ias_pkce import IASPKCE, ConfigError, InsufficientScope, current_token, signals
from flask_ias_pkce.authorization import claim_scopes
from flask_ias_pkce.testing import IASEmulator

from helpers import bearer, emulator_config

# RFC 7235 / RFC 6750 section 3: challenge = "Bearer" 1*SP auth-param *("," OWS auth-param)
_PARAM = r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z-]+)'
_CHALLENGE = re.compile(rf"Bearer {_PARAM}(?:, *{_PARAM})*")


def challenge(answer: Any) -> dict[str, str]:
    """The auth-params of a ``WWW-Authenticate: Bearer`` header, checked against the grammar."""
    header = answer.headers["WWW-Authenticate"]
    assert _CHALLENGE.fullmatch(header), header
    return {name: value.strip('"') for name, value in re.findall(_PARAM, header)}


@pytest.fixture(scope="module")
def _groupless_emulator() -> Iterator[IASEmulator]:
    with IASEmulator(users={"tester@example.com": {"user_uuid": "7d0c3b52-0d5c"}}) as emulator:
        yield emulator


@pytest.fixture
def ias_emulator(_groupless_emulator: IASEmulator) -> Iterator[IASEmulator]:
    """An emulator whose one user has no groups of its own: IAS's exchange keeps the
    assertion's claims that the tenant does not set, so each test's token brings its
    groups (``issue_public_token(groups=...)``) into the exchanged token. One for the
    module (these tests change nothing in it); calls and faults are per test."""
    _groupless_emulator.reset_calls()
    _groupless_emulator.clear_faults()
    yield _groupless_emulator
    _groupless_emulator.clear_faults()


def token_for(ias: IASEmulator, login_hint: str) -> str:
    """A user's public token, from the PKCE flow as a mobile app would sign in."""
    token: str = ias.pkce_login(login_hint=login_hint)["id_token"]
    return token


def group_app(ias: IASEmulator, **config: Any) -> tuple[Flask, IASPKCE]:
    app = Flask("authz_app")
    app.config.update(emulator_config(ias, **config))
    return app, IASPKCE()


def assert_refused(answer: Any, reason_scope: str) -> None:
    assert answer.status_code == 403
    assert answer.json["error"] == "insufficient_scope"
    assert answer.json["error_description"]
    params = challenge(answer)
    assert params["error"] == "insufficient_scope"
    assert params["realm"]
    assert params["scope"] == reason_scope


# -- groups --------------------------------------------------------------------------------


@pytest.fixture
def groups_client(ias_emulator: IASEmulator) -> Any:
    app, ias = group_app(ias_emulator)

    @app.get("/any")
    @ias.require_groups("Admins", "Auditors")
    def any_of() -> dict[str, Any]:
        return {"groups": sorted(current_token.groups), "admin": current_token.has_group("Admins")}

    @app.get("/all")
    @ias.require_groups("Admins", "Auditors", all=True)
    def all_of() -> str:
        return "all"

    @app.get("/plain")
    def plain() -> dict[str, Any]:
        return {"groups": sorted(current_token.groups)}

    ias.init_app(app)
    return app.test_client()


@pytest.mark.parametrize(
    ("groups", "status"),
    [
        ("Admins", 200),  # one group as a string, as IAS sends it
        (["Employees", "Admins"], 200),
        (["Auditors"], 200),
        ("Employees", 403),
        (["Employees"], 403),
        ([], 403),
        (None, 403),  # no groups claim at all
        (7, 403),  # anything else counts as no groups
        ({"Admins": True}, 403),
        (["Admins", 1], 403),  # a list that is not all strings is no groups
    ],
)
def test_require_groups_one_of(
    groups_client: Any, ias_emulator: IASEmulator, groups: Any, status: int
) -> None:
    token = ias_emulator.issue_public_token(groups=groups)
    answer = groups_client.get("/any", headers=bearer(token))
    assert answer.status_code == status
    if status == 403:
        assert_refused(answer, "Admins Auditors")
    else:
        assert "Admins" in answer.json["groups"] or "Auditors" in answer.json["groups"]


@pytest.mark.parametrize(
    ("groups", "status"),
    [
        (["Admins", "Auditors"], 200),
        (["Auditors", "Employees", "Admins"], 200),
        (["Admins"], 403),
        ("Admins", 403),
        (["Auditors"], 403),
    ],
)
def test_require_groups_all_of(
    groups_client: Any, ias_emulator: IASEmulator, groups: Any, status: int
) -> None:
    answer = groups_client.get(
        "/all", headers=bearer(ias_emulator.issue_public_token(groups=groups))
    )
    assert answer.status_code == status
    if status == 403:
        assert_refused(answer, "Admins Auditors")


def test_groups_in_the_view(groups_client: Any, ias_emulator: IASEmulator) -> None:
    answer = groups_client.get(
        "/plain", headers=bearer(ias_emulator.issue_public_token(groups="SubaccountAdmin"))
    )
    assert answer.json == {"groups": ["SubaccountAdmin"]}
    token = ias_emulator.issue_public_token(groups=["Admins", "Employees"])
    answer = groups_client.get("/any", headers=bearer(token))
    assert answer.json == {"groups": ["Admins", "Employees"], "admin": True}


def test_groups_is_a_frozenset(ias_emulator: IASEmulator) -> None:
    app, ias = group_app(ias_emulator)
    seen: dict[str, Any] = {}

    @app.get("/me")
    def me() -> str:
        seen["groups"] = current_token.groups
        seen["has"] = (current_token.has_group("Admins"), current_token.has_group("Nobody"))
        return "ok"

    ias.init_app(app)
    token = ias_emulator.issue_public_token(groups=["Admins", "Employees"])
    assert app.test_client().get("/me", headers=bearer(token)).status_code == 200
    assert seen == {"groups": frozenset({"Admins", "Employees"}), "has": (True, False)}
    token = ias_emulator.issue_public_token(groups=42)
    app.test_client().get("/me", headers=bearer(token))
    assert seen["groups"] == frozenset()


def test_authentication_comes_first(groups_client: Any, ias_emulator: IASEmulator) -> None:
    assert groups_client.get("/any").status_code == 401
    forged = ias_emulator.foreign_key_token(groups=["Admins"])
    answer = groups_client.get("/any", headers=bearer(forged))
    assert answer.status_code == 401
    assert challenge(answer)["error"] == "invalid_token"
    expired = ias_emulator.issue_public_token(groups=["Admins"], exp=1000, iat=900)
    assert groups_client.get("/any", headers=bearer(expired)).status_code == 401
    assert ias_emulator.exchanges == []


def test_cache_hit_costs_no_call(groups_client: Any, ias_emulator: IASEmulator) -> None:
    allowed = ias_emulator.issue_public_token(groups="Admins")
    refused = ias_emulator.issue_public_token(groups="Employees")
    assert groups_client.get("/any", headers=bearer(allowed)).status_code == 200
    assert groups_client.get("/any", headers=bearer(refused)).status_code == 403
    calls = len(ias_emulator.calls)
    assert len(ias_emulator.exchanges) == 2
    for _ in range(3):
        assert groups_client.get("/any", headers=bearer(allowed)).status_code == 200
        assert groups_client.get("/any", headers=bearer(refused)).status_code == 403
    assert len(ias_emulator.calls) == calls


def test_names_outside_the_scope_grammar_are_checked_but_not_named(
    ias_emulator: IASEmulator,
) -> None:
    app, ias = group_app(ias_emulator)

    @app.get("/sales")
    @ias.require_groups("Sales Team", 'say "hi"', "Sales")
    def sales() -> str:
        return "sales"

    ias.init_app(app)
    client = app.test_client()
    ok = ias_emulator.issue_public_token(groups=["Sales Team"])
    assert client.get("/sales", headers=bearer(ok)).status_code == 200
    answer = client.get("/sales", headers=bearer(ias_emulator.issue_public_token(groups="x")))
    assert_refused(answer, "Sales")


# -- blueprints ----------------------------------------------------------------------------


def blueprint_app(ias_emulator: IASEmulator, protect: str = "all") -> Any:
    app, ias = group_app(ias_emulator, IAS_PKCE_PROTECT=protect)
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    inner = Blueprint("inner", __name__, url_prefix="/inner")
    plain_inner = Blueprint("plain_inner", __name__, url_prefix="/plain")
    open_inner = Blueprint("open_inner", __name__, url_prefix="/open")
    unmarked = Blueprint("unmarked", __name__, url_prefix="/unmarked")
    ias.protect(admin, groups=["Admins"])
    ias.protect(inner, groups=["Auditors"])
    ias.protect(plain_inner)
    ias.exempt(open_inner)

    @admin.get("/panel")
    def panel() -> str:
        return "panel"

    @admin.get("/both")
    @ias.require_groups("Owners")
    def both() -> str:
        return "both"

    @admin.get("/health")
    @ias.exempt
    def health() -> str:
        return "ok"

    @admin.get("/maybe")
    @ias.optional
    def maybe() -> str:
        return "maybe"

    for blueprint in (inner, plain_inner, open_inner, unmarked):

        @blueprint.get("/deep", endpoint="deep")
        def deep() -> str:
            return "deep"

    admin.register_blueprint(inner)
    admin.register_blueprint(plain_inner)
    admin.register_blueprint(open_inner)
    admin.register_blueprint(unmarked)
    app.register_blueprint(admin)
    ias.init_app(app)
    return app.test_client()


@pytest.mark.parametrize("protect", ["all", "marked"])
@pytest.mark.parametrize(
    ("path", "groups", "status"),
    [
        ("/admin/panel", ["Admins"], 200),
        ("/admin/panel", ["Employees"], 403),
        # the view's own rule adds to its blueprint's: both must hold
        ("/admin/both", ["Admins", "Owners"], 200),
        ("/admin/both", ["Admins"], 403),
        ("/admin/both", ["Owners"], 403),
        # the innermost marked blueprint decides
        ("/admin/inner/deep", ["Auditors"], 200),
        ("/admin/inner/deep", ["Admins"], 403),
        ("/admin/plain/deep", ["Employees"], 200),
        ("/admin/open/deep", None, 200),
        # an unmarked nested blueprint follows its parent
        ("/admin/unmarked/deep", ["Admins"], 200),
        ("/admin/unmarked/deep", ["Auditors"], 403),
        # an exempt view of a blueprint with rules asks for nothing
        ("/admin/health", None, 200),
        # an optional view of such a blueprint still needs the group
        ("/admin/maybe", ["Admins"], 200),
        ("/admin/maybe", ["Employees"], 403),
        ("/admin/maybe", None, 401),
    ],
)
def test_blueprint_and_view_rules(
    ias_emulator: IASEmulator, protect: str, path: str, groups: Any, status: int
) -> None:
    client = blueprint_app(ias_emulator, protect)
    headers = bearer(ias_emulator.issue_public_token(groups=groups)) if groups else {}
    answer = client.get(path, headers=headers)
    assert answer.status_code == status, answer.json
    if path == "/admin/both" and status == 403:
        assert_refused(answer, "Owners" if groups == ["Admins"] else "Admins")


def test_rule_added_after_the_first_request_takes_effect(ias_emulator: IASEmulator) -> None:
    app, ias = group_app(ias_emulator, IAS_PKCE_PROTECT="marked")
    admin = Blueprint("admin", __name__, url_prefix="/admin")

    @admin.get("/panel")
    def panel() -> str:
        return "panel"

    @app.get("/late")
    def late() -> str:
        return "late"

    app.register_blueprint(admin)
    ias.init_app(app)
    client = app.test_client()
    token = ias_emulator.issue_public_token(groups=["Employees"])
    assert client.get("/late").status_code == 200
    assert client.get("/admin/panel").status_code == 200
    ias.require_groups("Admins")(late)
    ias.protect(admin, groups=["Admins"])
    assert client.get("/late").status_code == 401
    assert client.get("/late", headers=bearer(token)).status_code == 403
    assert client.get("/admin/panel", headers=bearer(token)).status_code == 403
    ias.exempt(admin)
    assert client.get("/admin/panel").status_code == 200


# -- registration errors -------------------------------------------------------------------


def test_exempt_or_optional_view_with_a_requirement_is_refused() -> None:
    ias = IASPKCE()

    def view() -> str:
        return "x"

    def other() -> str:
        return "y"

    ias.exempt(view)
    with pytest.raises(ConfigError, match="exempt"):
        ias.require_groups("Admins")(view)
    ias.require_groups("Admins")(other)
    with pytest.raises(ConfigError, match="exempt"):
        ias.exempt(other)
    with pytest.raises(ConfigError, match="optional"):
        ias.optional(other)
    ias.required(other)  # already implied: fine

    def maybe() -> str:
        return "z"

    ias.optional(maybe)
    with pytest.raises(ConfigError, match="optional"):
        ias.require_groups("Admins")(maybe)


@pytest.mark.parametrize(
    ("names", "error"),
    [((), ValueError), (("",), TypeError), ((None,), TypeError), ((["A"],), TypeError)],
)
def test_bad_requirement_names_are_refused(names: tuple[Any, ...], error: type) -> None:
    ias = IASPKCE()
    with pytest.raises(error):
        ias.require_groups(*names)
    with pytest.raises(error):
        ias.require_scopes(*names)


def test_protect_takes_one_name_as_a_string(ias_emulator: IASEmulator) -> None:
    app, ias = group_app(ias_emulator)
    admin = Blueprint("admin", __name__)
    ias.protect(admin, groups="Admins")  # one group, not the letters A, d, m, ...

    @admin.get("/panel")
    def panel() -> str:
        return "panel"

    app.register_blueprint(admin)
    ias.init_app(app)
    client = app.test_client()
    letters = ias_emulator.issue_public_token(groups=["A", "d"])
    assert client.get("/panel", headers=bearer(letters)).status_code == 403
    admins = ias_emulator.issue_public_token(groups="Admins")
    assert client.get("/panel", headers=bearer(admins)).status_code == 200


def test_require_decorates_views_only() -> None:
    with pytest.raises(TypeError):
        IASPKCE().require_groups("Admins")(Blueprint("b", __name__))  # type: ignore[type-var]


def test_scopes_without_xsuaa_binding_refused_at_registration(ias_emulator: IASEmulator) -> None:
    # Decorated before init_app: init_app refuses, no hook is registered.
    app, ias = group_app(ias_emulator)

    @app.get("/read")
    @ias.require_scopes("Read")
    def read() -> str:
        return "read"

    with pytest.raises(ConfigError, match="xsuaa binding"):
        ias.init_app(app)
    assert "ias_pkce" not in app.extensions
    # Decorated after init_app: the decorator refuses at once.
    app, ias = group_app(ias_emulator)
    ias.init_app(app)
    with pytest.raises(ConfigError, match="xsuaa binding"):
        ias.require_scopes("Read")
    with pytest.raises(ConfigError, match="xsuaa binding"):
        ias.protect(Blueprint("b", __name__), scopes=["Read"])
    ias.protect(Blueprint("c", __name__), groups=["Admins"])  # groups need no XSUAA


def test_scopes_need_the_xsappname(
    ias_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    vcap = ias_emulator.vcap_services()
    del vcap["xsuaa"][0]["credentials"]["xsappname"]
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(vcap))
    app = Flask("no_xsappname")
    app.config.update(
        IAS_PKCE_VERIFY=ias_emulator.ca_file,
        IAS_PKCE_ACCEPTED_AUDIENCES=[ias_emulator.public_client_id],
    )
    ias = IASPKCE(app)
    with pytest.raises(ConfigError, match="xsappname"):
        ias.require_scopes("Read")

    @app.get("/scope")
    def scope() -> str:
        with pytest.raises(RuntimeError, match="xsappname"):
            current_token.has_scope("Read")
        return "checked"

    answer = app.test_client().get("/scope", headers=bearer(ias_emulator.issue_public_token()))
    assert answer.text == "checked"


def test_has_scope_without_xsuaa_binding(groups_client: Any, ias_emulator: IASEmulator) -> None:
    app = groups_client.application

    @app.get("/no-hop")
    def no_hop() -> str:
        with pytest.raises(RuntimeError, match="No XSUAA binding"):
            current_token.has_scope("Read")
        return "checked"

    answer = groups_client.get("/no-hop", headers=bearer(ias_emulator.issue_public_token()))
    assert answer.text == "checked"


@pytest.mark.parametrize(
    ("scope", "held"),
    [
        (["openid", "app.Read"], {"openid", "app.Read"}),
        ("openid app.Read", {"openid", "app.Read"}),  # RFC 8693's space-separated form
        (None, set()),
        (3, set()),
        (["app.Read", None], set()),
    ],
)
def test_scope_claim_forms(scope: Any, held: set[str]) -> None:
    assert claim_scopes({"scope": scope}) == frozenset(held)


# -- scopes of the second hop --------------------------------------------------------------

USERS = {
    "alice@example.com": {"groups": ["Admins"], "scopes": ["Read", "Write", "Admin"]},
    "bob@example.com": {"groups": ["Employees"], "scopes": ["Read"]},
    "carol@example.com": {"groups": "Employees"},  # no setting: openid and Read
}


@pytest.fixture
def xsuaa_emulator() -> Iterator[IASEmulator]:
    with IASEmulator(users=USERS) as emulator:
        yield emulator


def scopes_app(ias: IASEmulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(ias.vcap_services()))
    app = Flask("scopes_app")
    app.config.update(
        IAS_PKCE_VERIFY=ias.ca_file,
        IAS_PKCE_ACCEPTED_AUDIENCES=[ias.public_client_id],
        IAS_PKCE_TIMEOUT=(2.0, 2.0),
        IAS_PKCE_RETRIES=0,
    )
    extension = IASPKCE()
    orders = Blueprint("orders", __name__, url_prefix="/orders")
    extension.protect(orders, scopes=["Read"])

    @app.get("/write")
    @extension.require_scopes("Write", "Admin")
    def write() -> str:
        return "write"

    @app.get("/all")
    @extension.require_scopes("Write", "Admin", all=True)
    @extension.require_groups("Admins")
    def all_of() -> str:
        return "all"

    @orders.get("/list")
    def order_list() -> dict[str, Any]:
        return {
            "read": current_token.has_scope("Read"),
            "admin": current_token.has_scope("Admin"),
            "openid": current_token.has_scope("openid"),
            "scopes": sorted(current_token.xsuaa_scopes()),
            "scope_claim": jwt.get_unverified_claims(current_token.xsuaa_token())["scope"],
        }

    app.register_blueprint(orders)
    extension.init_app(app)
    return app.test_client()


def test_scopes_of_the_second_hop(
    xsuaa_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = scopes_app(xsuaa_emulator, monkeypatch)
    prefix = xsuaa_emulator.xsuaa_binding["xsappname"] + "."
    alice = token_for(xsuaa_emulator, "alice@example.com")
    bob = token_for(xsuaa_emulator, "bob@example.com")
    carol = token_for(xsuaa_emulator, "carol@example.com")

    answer = client.get("/orders/list", headers=bearer(alice))
    assert answer.status_code == 200
    assert answer.json["read"]
    assert answer.json["admin"]
    assert not answer.json["openid"]  # not a local scope of this app
    assert answer.json["scope_claim"] == [
        "openid",
        prefix + "Read",
        prefix + "Write",
        prefix + "Admin",
    ]
    assert client.get("/write", headers=bearer(alice)).status_code == 200
    assert client.get("/all", headers=bearer(alice)).status_code == 200

    answer = client.get("/orders/list", headers=bearer(carol))
    assert answer.json["scopes"] == sorted(["openid", prefix + "Read"])
    assert_refused(client.get("/write", headers=bearer(carol)), f"{prefix}Write {prefix}Admin")
    assert client.get("/orders/list", headers=bearer(bob)).json["admin"] is False
    # groups first: Bob is not in Admins
    answer = client.get("/all", headers=bearer(bob))
    assert_refused(answer, "Admins")


def test_blueprint_scope_refused_with_the_prefixed_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with IASEmulator(users={"dave@example.com": {"scopes": ["Other"]}}) as ias:
        client = scopes_app(ias, monkeypatch)
        token = ias.issue_public_token()
        answer = client.get("/orders/list", headers=bearer(token))
        assert_refused(answer, ias.xsuaa_binding["xsappname"] + ".Read")
        assert len(ias.xsuaa_exchanges) == 1
        # A bad token on a view with scope rules: 401, and no call to XSUAA.
        assert (
            client.get("/orders/list", headers=bearer(ias.foreign_key_token())).status_code == 401
        )
        assert len(ias.xsuaa_exchanges) == 1


def test_scope_checks_on_a_cache_hit_cost_no_call(
    xsuaa_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = scopes_app(xsuaa_emulator, monkeypatch)
    alice = token_for(xsuaa_emulator, "alice@example.com")
    carol = token_for(xsuaa_emulator, "carol@example.com")
    assert client.get("/write", headers=bearer(alice)).status_code == 200
    assert client.get("/write", headers=bearer(carol)).status_code == 403
    calls = len(xsuaa_emulator.calls)
    assert len(xsuaa_emulator.exchanges) == 2
    assert len(xsuaa_emulator.xsuaa_exchanges) == 2
    for _ in range(3):
        assert client.get("/write", headers=bearer(alice)).status_code == 200
        assert client.get("/orders/list", headers=bearer(alice)).status_code == 200
        assert client.get("/write", headers=bearer(carol)).status_code == 403
    assert len(xsuaa_emulator.calls) == calls


def test_emulator_scopes_setting_is_not_a_claim(xsuaa_emulator: IASEmulator) -> None:
    tokens = xsuaa_emulator.pkce_login(login_hint="bob@example.com")
    claims = jwt.get_unverified_claims(tokens["id_token"])
    assert claims["groups"] == ["Employees"]
    assert "scopes" not in claims
    assert "scopes" not in jwt.get_unverified_claims(xsuaa_emulator.issue_public_token())
    with pytest.raises(ValueError, match="list of strings"):
        IASEmulator(users={"eve@example.com": {"scopes": "Admin"}})
    with pytest.raises(ValueError, match="list of strings"):
        IASEmulator(users={"eve@example.com": {"scopes": ["Admin", 1]}})


def test_default_users_carry_groups() -> None:
    with IASEmulator() as emulator:
        alice = jwt.get_unverified_claims(emulator.pkce_login()["id_token"])
        bob = jwt.get_unverified_claims(
            emulator.pkce_login(login_hint="bob@example.com")["id_token"]
        )
    assert alice["groups"] == ["Employees", "Admins"]
    assert bob["groups"] == ["Employees"]
    assert alice["sub"] != bob["sub"]


# -- signals and logs ----------------------------------------------------------------------


def test_each_refusal_sends_a_signal_and_logs_a_line(
    groups_client: Any, ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[dict[str, Any]] = []

    def receiver(sender: Flask, **kwargs: Any) -> None:
        received.append(kwargs)

    token = ias_emulator.issue_public_token(groups=["Employees"])
    with signals.token_rejected.connected_to(receiver), caplog.at_level(logging.INFO):
        groups_client.get("/any", headers=bearer(token))
        groups_client.get("/any", headers=bearer(token))
    assert [(r["reason"], r["error"], r["status"]) for r in received] == [
        ("missing_group", "insufficient_scope", 403)
    ] * 2
    lines = [r.getMessage() for r in caplog.records if "Refused" in r.getMessage()]
    assert len(lines) == 2
    assert all("403 insufficient_scope, reason missing_group" in line for line in lines)
    assert all(token not in r.getMessage() for r in caplog.records)
    assert all(token.split(".")[1] not in r.getMessage() for r in caplog.records)


def test_scope_refusal_signal_reason(
    xsuaa_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = scopes_app(xsuaa_emulator, monkeypatch)
    received: list[str] = []

    def receiver(sender: Flask, *, reason: str, **extra: Any) -> None:
        received.append(reason)

    carol = token_for(xsuaa_emulator, "carol@example.com")
    with signals.token_rejected.connected_to(receiver):
        assert client.get("/write", headers=bearer(carol)).status_code == 403
    assert received == ["missing_scope"]


def test_error_class_is_an_http_exception() -> None:
    error = InsufficientScope("nope", reason="missing_group", needed=("A", "B"), realm="r")
    assert error.code == 403
    assert error.challenge() == (
        'Bearer realm="r", error="insufficient_scope", error_description="nope", scope="A B"'
    )
    assert InsufficientScope("nope", reason="missing_group").challenge() == (
        'Bearer realm="api", error="insufficient_scope", error_description="nope"'
    )
    assert json.loads(error.get_body()) == {
        "error": "insufficient_scope",
        "error_description": "nope",
    }
