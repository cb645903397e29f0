"""init_app as a host app meets it: bindings from each source, through a real exchange,
and every wrong setting refused when the app starts, never at its first request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_ias_pkce import (
    IASPKCE,
    BindingError,
    ConfigError,
    UnknownConfigKeyWarning,
    current_token,
)
from flask_ias_pkce.testing import IASEmulator

from helpers import bearer, emulator_config


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was (faults and calls are per test): one
    emulator serves the whole session."""
    return shared_ias_emulator


def _serve(app: Flask, ias: IASEmulator) -> int:
    app.add_url_rule("/x", "x", lambda: "x")
    return app.test_client().get("/x", headers=bearer(ias.issue_public_token())).status_code


def _minimal_config(ias: IASEmulator) -> dict[str, Any]:
    return {"IAS_PKCE_VERIFY": ias.ca_file}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_binding_from_vcap_services(
    ias_emulator: IASEmulator, clean_environment: pytest.MonkeyPatch
) -> None:
    clean_environment.setenv("VCAP_SERVICES", json.dumps(ias_emulator.vcap_services()))
    app = Flask("vcap")
    app.config.update(_minimal_config(ias_emulator))
    IASPKCE(app)

    assert _serve(app, ias_emulator) == 200
    assert ias_emulator.exchanges[0].client_cn == ias_emulator.client_id


def test_binding_from_service_binding_root(
    ias_emulator: IASEmulator, clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, binding in (
        ("my-ias", ias_emulator.binding),
        ("my-xsuaa", ias_emulator.xsuaa_binding),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "type").write_text("identity" if name == "my-ias" else "xsuaa")
        for key, value in binding.items():
            text = json.dumps(value) if isinstance(value, list) else str(value)
            (folder / key).write_text(text)
    clean_environment.setenv("SERVICE_BINDING_ROOT", str(tmp_path))
    app = Flask("kyma")
    app.config.update(_minimal_config(ias_emulator))
    IASPKCE(app)

    assert _serve(app, ias_emulator) == 200
    assert len(ias_emulator.exchanges) == 1


def test_no_binding_fails_at_init_app_naming_every_place(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    app = Flask("unbound")
    with pytest.raises(BindingError) as raised:
        IASPKCE(app)
    message = str(raised.value)
    for place in ("IAS_PKCE_IAS_URL", "VCAP_SERVICES", "SERVICE_BINDING_ROOT"):
        assert place in message


def test_incomplete_binding_names_the_missing_key(
    ias_emulator: IASEmulator, clean_environment: pytest.MonkeyPatch
) -> None:
    vcap = ias_emulator.vcap_services()
    del vcap["identity"][0]["credentials"]["clientid"]
    clean_environment.setenv("VCAP_SERVICES", json.dumps(vcap))
    with pytest.raises(BindingError, match="clientid"):
        IASPKCE(Flask("incomplete"))


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("IAS_PKCE_VERIFY", False, "IAS_PKCE_VERIFY"),
        ("IAS_PKCE_VERIFY", "/no/such/ca.pem", "IAS_PKCE_VERIFY"),
        ("IAS_PKCE_PROTECT", "some", "IAS_PKCE_PROTECT"),
        ("IAS_PKCE_USE_TOKEN", "refresh_token", "IAS_PKCE_USE_TOKEN"),
        ("IAS_PKCE_LEEWAY", -1, "IAS_PKCE_LEEWAY"),
        ("IAS_PKCE_LEEWAY", "60", "IAS_PKCE_LEEWAY"),
        ("IAS_PKCE_TIMEOUT", (0, 10), "IAS_PKCE_TIMEOUT"),
        ("IAS_PKCE_TIMEOUT", "fast", "IAS_PKCE_TIMEOUT"),
        ("IAS_PKCE_RETRIES", 10, "IAS_PKCE_RETRIES"),
        ("IAS_PKCE_ACCEPTED_AUDIENCES", [], "IAS_PKCE_ACCEPTED_AUDIENCES"),
        ("IAS_PKCE_ENABLED", "yes", "IAS_PKCE_ENABLED"),
        ("IAS_PKCE_REALM", 'a"b', "IAS_PKCE_REALM"),
        ("IAS_PKCE_MAX_TOKEN_BYTES", 10, "IAS_PKCE_MAX_TOKEN_BYTES"),
        ("IAS_PKCE_CACHE_SECRET", 12345, "IAS_PKCE_CACHE_SECRET"),
        ("IAS_PKCE_CACHE_TYPE", "redis", "RedisCache"),
        # Redis chosen, but neither a URL nor a bound Redis service to use.
        ("IAS_PKCE_CACHE_TYPE", "RedisCache", "IAS_PKCE_CACHE_REDIS_URL"),
    ],
)
def test_wrong_setting_fails_at_init_app(
    ias_emulator: IASEmulator, key: str, value: Any, named: str
) -> None:
    app = Flask("misconfigured")
    app.config.update(emulator_config(ias_emulator, **{key: value}))
    with pytest.raises(ConfigError, match=named):
        IASPKCE(app)


def test_accepted_audience_defaults_to_the_binding_client_id(ias_emulator: IASEmulator) -> None:
    # One IAS application: the mobile app signs in with the binding's own client id.
    app = Flask("default_audience")
    app.config.update(emulator_config(ias_emulator))
    IASPKCE(app)
    app.add_url_rule("/x", "x", lambda: "x")
    client = app.test_client()

    own_client = client.get("/x", headers=bearer(ias_emulator.issue_public_token()))
    other_client = client.get(
        "/x", headers=bearer(ias_emulator.issue_public_token(aud="another-app"))
    )

    assert ias_emulator.public_client_id == ias_emulator.client_id
    assert own_client.status_code == 200
    assert other_client.status_code == 401
    assert len(ias_emulator.exchanges) == 1


def test_access_token_can_be_the_downstream_token(ias_emulator: IASEmulator) -> None:
    app = Flask("access_token")
    app.config.update(emulator_config(ias_emulator, IAS_PKCE_USE_TOKEN="access_token"))
    IASPKCE(app)
    assert _serve(app, ias_emulator) == 200


def test_disabled_extension_reads_no_binding(clean_environment: pytest.MonkeyPatch) -> None:
    # Nothing bound, nothing configured: with IAS_PKCE_ENABLED False that is not an error.
    app = Flask("disabled")
    app.config["IAS_PKCE_ENABLED"] = False
    ias = IASPKCE(app)

    @app.get("/api/me")
    def me() -> dict[str, bool]:
        return {"token": bool(current_token)}

    answer = app.test_client().get("/api/me", headers=bearer("not-even-a-token"))
    assert answer.status_code == 200
    assert answer.json == {"token": False}
    assert "ias_pkce" not in app.extensions
    with app.test_request_context(), pytest.raises(RuntimeError, match="No token"):
        ias.session().get("http://127.0.0.1:9/never-sent")


def test_disabled_takes_only_true_or_false(clean_environment: pytest.MonkeyPatch) -> None:
    app = Flask("disabled")
    app.config["IAS_PKCE_ENABLED"] = "false"
    # Refused before any binding is looked up: the error names the setting, not a binding.
    with pytest.raises(ConfigError, match="IAS_PKCE_ENABLED must be True or False"):
        IASPKCE(app)


def test_enabled_without_a_binding_still_fails_at_init_app(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    app = Flask("enabled")
    app.config["IAS_PKCE_ENABLED"] = True
    with pytest.raises(BindingError, match="No IAS"):
        IASPKCE(app)


@pytest.mark.parametrize(
    ("misspelt", "closest"),
    [
        ("IAS_PKCE_PROTCET", "IAS_PKCE_PROTECT"),
        ("IAS_PKCE_ACCEPTED_AUDIENCE", "IAS_PKCE_ACCEPTED_AUDIENCES"),
        ("IAS_PKCE_CACHE_REDIS_UR", "IAS_PKCE_CACHE_REDIS_URL"),
        ("IAS_PKCE_CACHE_DEFAULT_TIMOUT", "IAS_PKCE_CACHE_DEFAULT_TIMEOUT"),
    ],
)
def test_a_misspelt_key_warns_with_the_closest_known_key(
    ias_emulator: IASEmulator, misspelt: str, closest: str
) -> None:
    app = Flask("misspelt")
    app.config.update(emulator_config(ias_emulator, **{misspelt: "marked"}))
    with pytest.warns(UnknownConfigKeyWarning) as record:
        IASPKCE(app)

    assert len(record) == 1
    message = str(record[0].message)
    assert misspelt in message
    assert f"did you mean {closest}?" in message
    assert record[0].filename == __file__  # points at the caller's line


def test_a_key_like_no_other_warns_without_a_guess(ias_emulator: IASEmulator) -> None:
    app = Flask("unknown")
    app.config.update(emulator_config(ias_emulator, IAS_PKCE_ZZZ=1))
    with pytest.warns(UnknownConfigKeyWarning, match="IAS_PKCE_ZZZ: no known key is close"):
        IASPKCE().init_app(app)


def test_known_keys_and_other_prefixes_do_not_warn(
    ias_emulator: IASEmulator, recwarn: pytest.WarningsRecorder
) -> None:
    app = Flask("known")
    app.config.update(
        emulator_config(
            ias_emulator,
            IAS_PKCE_PROTECT="marked",
            IAS_PKCE_CACHE_DEFAULT_TIMEOUT=60,
            IAS_PKCE_CACHE_REDIS_SOCKET_TIMEOUT=0.5,  # read by our Redis backend
            CACHE_TYPE="NullCache",
            IAS_PKCEX="not ours",
        )
    )
    IASPKCE(app)
    assert not [w for w in recwarn if issubclass(w.category, UnknownConfigKeyWarning)]
