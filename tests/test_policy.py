"""Which endpoints ask for a token: exempt, protect, required, optional, marked mode."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.views import MethodView
from jose import jwt

from flask_ias_pkce import IASPKCE, current_token
from flask_ias_pkce.testing import IASEmulator

from helpers import bearer, emulator_config


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


def _app(ias: IASEmulator, **config: Any) -> tuple[Flask, IASPKCE]:
    app = Flask("policy_app", static_folder=None)
    app.config.update(emulator_config(ias, **config))
    return app, IASPKCE()


def _views(app: Flask, ias_ext: IASPKCE) -> None:
    public = Blueprint("public", __name__, url_prefix="/public")
    api = Blueprint("api", __name__, url_prefix="/api")
    inner = Blueprint("inner", __name__, url_prefix="/inner")
    open_inner = Blueprint("open_inner", __name__, url_prefix="/open")

    @public.get("/info")
    def info() -> str:
        return "public"

    @api.get("/data")
    def data() -> str:
        return "user " + current_token.claims["sub"]

    @inner.get("/deep")
    def deep() -> str:
        return "deep"

    @open_inner.get("/deep")
    def open_deep() -> str:
        return "open"

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    @app.get("/must")
    @ias_ext.required
    def must() -> str:
        return "must"

    @app.get("/maybe")
    @ias_ext.optional
    def maybe() -> dict[str, Any]:
        return {"user": current_token.claims["sub"] if current_token else None}

    @app.route("/custom-options", methods=["GET", "OPTIONS"])
    def custom_options() -> str:
        return "handled by the view"

    ias_ext.exempt(public)
    ias_ext.protect(api)
    ias_ext.exempt(open_inner)
    api.register_blueprint(inner)
    api.register_blueprint(open_inner)
    app.register_blueprint(public)
    app.register_blueprint(api)


@pytest.fixture
def all_mode(ias_emulator: IASEmulator) -> Any:
    app, ext = _app(ias_emulator)
    _views(app, ext)
    ext.init_app(app)
    return app.test_client()


@pytest.fixture
def marked_mode(ias_emulator: IASEmulator) -> Any:
    app, ext = _app(ias_emulator, IAS_PKCE_PROTECT="marked")
    _views(app, ext)
    ext.init_app(app)
    return app.test_client()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/public/info", 200),  # exempt blueprint
        ("/api/data", 401),  # protected blueprint
        ("/api/inner/deep", 401),  # nested blueprint follows its parent
        ("/api/open/deep", 200),  # a nested blueprint's own exemption wins
        ("/plain", 401),  # "all": everything else is protected
        ("/must", 401),
        ("/maybe", 200),  # optional without a token
        ("/nowhere", 404),  # never a challenge for a 404
    ],
)
def test_all_mode_without_token(all_mode: Any, path: str, status: int) -> None:
    assert all_mode.get(path).status_code == status


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/public/info", 200),
        ("/api/data", 401),
        ("/api/inner/deep", 401),
        ("/api/open/deep", 200),
        ("/plain", 200),  # "marked": only marked endpoints need a token
        ("/must", 401),
        ("/maybe", 200),
    ],
)
def test_marked_mode_without_token(marked_mode: Any, path: str, status: int) -> None:
    assert marked_mode.get(path).status_code == status


def test_protected_views_pass_with_token(all_mode: Any, ias_emulator: IASEmulator) -> None:
    headers = bearer(ias_emulator.issue_public_token())
    for path in ("/api/data", "/api/inner/deep", "/plain", "/must"):
        assert all_mode.get(path, headers=headers).status_code == 200, path
    assert len(ias_emulator.exchanges) == 1


def test_exempt_view_makes_no_call_to_ias(all_mode: Any, ias_emulator: IASEmulator) -> None:
    answer = all_mode.get("/public/info", headers=bearer(ias_emulator.issue_public_token()))
    assert answer.status_code == 200
    assert ias_emulator.calls == []


def test_optional_uses_a_token_when_sent(all_mode: Any, ias_emulator: IASEmulator) -> None:
    token = ias_emulator.issue_public_token()
    answer = all_mode.get("/maybe", headers=bearer(token))
    assert answer.json["user"] == jwt.get_unverified_claims(token)["sub"]
    assert len(ias_emulator.exchanges) == 1


def test_optional_refuses_a_bad_token(all_mode: Any, ias_emulator: IASEmulator) -> None:
    answer = all_mode.get("/maybe", headers=bearer(ias_emulator.foreign_key_token()))
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


def test_cors_preflight_is_not_challenged(all_mode: Any) -> None:
    answer = all_mode.options(
        "/api/data",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert answer.status_code == 200


def test_automatic_options_is_not_challenged(all_mode: Any) -> None:
    assert all_mode.options("/plain").status_code == 200


def test_options_handled_by_a_view_is_protected(all_mode: Any) -> None:
    assert all_mode.options("/custom-options").status_code == 401


def test_preflight_to_a_view_that_handles_options_is_protected(all_mode: Any) -> None:
    # The view runs for this OPTIONS (its author handles CORS there): a preflight-looking
    # request gets no pass.
    answer = all_mode.options(
        "/custom-options",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert answer.status_code == 401


def test_preflight_to_an_ordinary_view_is_answered_by_flask(all_mode: Any) -> None:
    answer = all_mode.options(
        "/plain",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert answer.status_code == 200
    assert answer.data == b""  # Flask's automatic OPTIONS, not the view
    assert "GET" in answer.headers["Allow"]


def test_static_files_are_not_challenged(ias_emulator: IASEmulator, tmp_path: Any) -> None:
    (tmp_path / "logo.txt").write_text("logo")
    app = Flask("static_app", static_folder=str(tmp_path), static_url_path="/static")
    app.config.update(emulator_config(ias_emulator))
    IASPKCE(app)
    assert app.test_client().get("/static/logo.txt").status_code == 200


def test_a_view_merely_named_static_is_protected(ias_emulator: IASEmulator, tmp_path: Any) -> None:
    (tmp_path / "logo.txt").write_text("logo")
    app = Flask("static_name_app", static_folder=str(tmp_path), static_url_path="/static")
    app.config.update(emulator_config(ias_emulator))
    files = Blueprint("files", __name__, url_prefix="/files")  # no static folder

    @files.get("/<name>")
    def static(name: str) -> str:
        return "secret " + name

    app.register_blueprint(files)
    IASPKCE(app)
    client = app.test_client()

    assert "files.static" in app.view_functions
    assert client.get("/files/report").status_code == 401
    assert client.get("/static/logo.txt").status_code == 200


def test_a_view_named_static_in_an_app_without_static_folder_is_protected(
    ias_emulator: IASEmulator,
) -> None:
    app, ext = _app(ias_emulator)  # static_folder=None
    app.add_url_rule("/static/<path:filename>", "static", lambda filename: "secret")
    ext.init_app(app)

    assert app.test_client().get("/static/x.txt").status_code == 401


def test_blueprint_static_files_are_not_challenged(
    ias_emulator: IASEmulator, tmp_path: Any
) -> None:
    (tmp_path / "style.css").write_text("body {}")
    app, ext = _app(ias_emulator)
    parent = Blueprint("parent", __name__, url_prefix="/parent")
    assets = Blueprint(
        "assets",
        __name__,
        url_prefix="/assets",
        static_folder=str(tmp_path),
        static_url_path="/static",
    )

    @assets.get("/page")
    def page() -> str:
        return "page"

    parent.register_blueprint(assets)
    app.register_blueprint(parent)
    ext.init_app(app)
    client = app.test_client()

    assert "parent.assets.static" in app.view_functions
    assert client.get("/parent/assets/static/style.css").status_code == 200
    assert client.get("/parent/assets/page").status_code == 401


def test_class_based_view_can_be_exempt(ias_emulator: IASEmulator) -> None:
    app, ext = _app(ias_emulator)

    class Status(MethodView):
        def get(self) -> str:
            return "up"

    app.add_url_rule("/status", view_func=ext.exempt(Status.as_view("status")))
    ext.init_app(app)
    assert app.test_client().get("/status").status_code == 200


def test_disabled_extension_lets_everything_through(ias_emulator: IASEmulator) -> None:
    app, ext = _app(ias_emulator, IAS_PKCE_ENABLED=False)
    _views(app, ext)
    ext.init_app(app)
    assert app.test_client().get("/plain").status_code == 200


def test_one_extension_serves_several_apps(ias_emulator: IASEmulator) -> None:
    ext = IASPKCE()
    first = Flask("first")
    second = Flask("second")
    first.config.update(emulator_config(ias_emulator))
    second.config.update(emulator_config(ias_emulator, IAS_PKCE_PROTECT="marked"))
    for app in (first, second):
        app.add_url_rule("/x", "x", lambda: "x")
        ext.init_app(app)

    assert first.test_client().get("/x").status_code == 401
    assert second.test_client().get("/x").status_code == 200
    assert first.extensions["ias_pkce"] is not second.extensions["ias_pkce"]


def test_marking_something_that_is_not_a_view_or_blueprint_is_an_error() -> None:
    ias = IASPKCE()

    with pytest.raises(TypeError, match="Blueprint"):
        ias.protect(lambda: "a view")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="view function or a Blueprint"):
        ias.exempt(42)


def test_outbound_session_needs_a_token(ias_emulator: IASEmulator) -> None:
    app, ias = _app(ias_emulator)

    @app.get("/health")
    @ias.exempt
    def health() -> str:
        ias.session().get("https://downstream.invalid/", timeout=1)
        return "unreachable"

    ias.init_app(app)
    app.testing = True  # let the view's error reach the test

    with pytest.raises(RuntimeError, match="No token in this request"):
        app.test_client().get("/health")


def test_token_context_shows_no_token(ias_emulator: IASEmulator) -> None:
    app, ias = _app(ias_emulator)

    @app.get("/api/context")
    def context() -> dict[str, Any]:
        return {"repr": repr(current_token), "public_aud": current_token.public_claims["aud"]}

    ias.init_app(app)
    token = ias_emulator.issue_public_token()

    answer = app.test_client().get("/api/context", headers=bearer(token))

    assert answer.json["public_aud"] == ias_emulator.public_client_id
    assert answer.json["repr"].startswith("<TokenContext sub=")
    assert "eyJ" not in answer.json["repr"]


def test_a_mark_made_after_the_first_request_takes_effect_at_once(
    ias_emulator: IASEmulator,
) -> None:
    app, ext = _app(ias_emulator, IAS_PKCE_PROTECT="marked")
    late = Blueprint("late", __name__, url_prefix="/late")

    @late.get("/data")
    def late_data() -> str:
        return "late"

    @app.get("/view")
    def view() -> str:
        return "view"

    app.register_blueprint(late)
    ext.init_app(app)
    client = app.test_client()
    assert client.get("/late/data").status_code == 200  # not marked yet: open
    assert client.get("/view").status_code == 200

    ext.protect(late)
    ext.required(view)

    assert client.get("/late/data").status_code == 401
    assert client.get("/view").status_code == 401
    ext.exempt(late)
    assert client.get("/late/data").status_code == 200


def test_init_app_twice_on_one_app_is_a_clear_error(ias_emulator: IASEmulator) -> None:
    app, ext = _app(ias_emulator)
    ext.init_app(app)
    hooks = list(app.before_request_funcs[None])

    with pytest.raises(RuntimeError, match="already initialised on this app"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="already initialised on this app"):
        IASPKCE().init_app(app)
    assert app.before_request_funcs[None] == hooks


def test_a_mark_after_an_app_is_gone_is_harmless(ias_emulator: IASEmulator) -> None:
    app, ext = _app(ias_emulator)
    ext.init_app(app)
    del app
    gc.collect()

    @ext.required
    def view() -> str:
        return "view"

    assert callable(view)
