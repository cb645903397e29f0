"""``flask ias-pkce check`` and ``flask ias-pkce exchange`` against the IAS emulator."""

from __future__ import annotations

import datetime
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import FlaskGroup

from flask_ias_pkce import IASPKCE
from flask_ias_pkce.cli import ias_pkce
from flask_ias_pkce.testing import IASEmulator

from helpers import build_app

TOKEN_PATH = "/oauth2/token"
WORDS = ("PASS", "FAIL", "SKIP")
# click < 8.2 mixes standard error into standard output unless told not to.
SEPARATE_STDERR = (
    {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
)


def run(app: Flask, *args: str, stdin: str | None = None) -> Result:
    return app.test_cli_runner(**SEPARATE_STDERR).invoke(ias_pkce, list(args), input=stdin)


def output(result: Result) -> str:
    return result.stdout + result.stderr


def lines(result: Result, word: str) -> dict[str, str]:
    """``{step: line}`` of the report lines that start with ``word`` (PASS, FAIL, SKIP, WARN)."""
    found = {}
    for line in output(result).splitlines():
        if line.startswith(word + " "):
            step = line[len(word) :].strip().split("  ")[0].strip()
            found[step] = line
    return found


def assert_no_secret(output: str, binding: dict[str, Any]) -> None:
    for name in ("clientsecret", "key", "certificate"):
        if name in binding:
            assert binding[name].strip() not in output
    assert "-----BEGIN" not in output


def test_check_passes_with_mtls(ias_emulator: IASEmulator) -> None:
    result = run(build_app(ias_emulator), "check")

    assert result.exit_code == 0, output(result)
    passed = {"binding", "certificate", "tls", "discovery", "jwks", "client auth"}
    assert set(lines(result, "PASS")) == passed
    assert not lines(result, "FAIL")
    assert "identity from app.config, authenticates by mTLS" in output(result)
    assert "client certificate expires on 20" in lines(result, "PASS")["certificate"]
    assert "key='***'" in output(result)  # the masked binding is shown
    assert ias_emulator.current_kid in lines(result, "PASS")["jwks"]
    assert "invalid_grant" in lines(result, "PASS")["client auth"]
    assert output(result).rstrip().endswith("result: OK (6 passed)")
    assert_no_secret(output(result), ias_emulator.binding)
    # The test assertion reached the token endpoint, authenticated by the certificate.
    [call] = ias_emulator.exchanges
    assert call.auth_method == "tls_client_auth"
    assert call.status == 400


def test_check_warns_of_an_audience_ias_will_not_exchange() -> None:
    with IASEmulator(public_client_id="mobile-app-public-client") as ias:
        app = build_app(ias, IAS_PKCE_ACCEPTED_AUDIENCES=["mobile-app-public-client"])
        result = run(app, "check")

    assert result.exit_code == 0, output(result)  # a warning, not a failure
    [warning] = lines(result, "WARN").values()
    assert warning.startswith("WARN  audience")
    assert "'mobile-app-public-client'" in warning
    assert repr(ias.client_id) in warning
    assert output(result).rstrip().endswith("result: OK (6 passed, 1 warned)")


def test_check_passes_with_client_secret_and_masks_it() -> None:
    with IASEmulator(credential_type="SECRET") as ias:
        result = run(build_app(ias), "check")

        assert result.exit_code == 0, output(result)
        assert "authenticates by client secret" in output(result)
        assert "client_secret='***'" in output(result)
        assert_no_secret(output(result), ias.binding)


def test_check_fails_with_a_wrong_client_secret() -> None:
    with IASEmulator(credential_type="SECRET") as ias:
        result = run(build_app(ias, IAS_PKCE_CLIENT_SECRET="not-the-secret"), "check")

    assert result.exit_code == 1
    failed = lines(result, "FAIL")
    assert list(failed) == ["client auth"]
    assert "invalid_client" in failed["client auth"]
    assert "check the binding's credentials" in output(result)
    assert "not-the-secret" not in output(result)
    assert "result: FAILED (4 passed, 1 failed)" in output(result)


def test_check_fails_with_a_certificate_ias_does_not_know(ias_emulator: IASEmulator) -> None:
    certificate, key = ias_emulator.make_foreign_client_certificate()
    app = build_app(ias_emulator, IAS_PKCE_CERTIFICATE=certificate, IAS_PKCE_KEY=key)

    result = run(app, "check")

    # The emulator refuses an unknown client certificate in the handshake itself.
    assert result.exit_code == 1
    assert list(lines(result, "FAIL")) == ["tls"]
    assert "IAS's certificate is trusted, but IAS refused our client certificate" in (
        output(result)
    )


def test_check_fails_at_tls_with_a_wrong_ca(ias_emulator: IASEmulator) -> None:
    with IASEmulator() as other:
        app = build_app(ias_emulator, IAS_PKCE_VERIFY=other.ca_file)
        result = run(app, "check")

        assert result.exit_code == 1
        assert list(lines(result, "FAIL")) == ["tls"]
        assert "tls_error" in lines(result, "FAIL")["tls"]
        assert f"IAS's certificate is not signed by a CA in {other.ca_file}" in output(result)
        assert set(lines(result, "SKIP")) == {"discovery", "jwks", "client auth"}
    assert ias_emulator.calls == []


def test_check_fails_at_discovery_when_ias_answers_503(ias_emulator: IASEmulator) -> None:
    app = build_app(ias_emulator, IAS_PKCE_RETRIES=0)
    ias_emulator.inject("/.well-known/openid-configuration", status=503)

    result = run(app, "check")

    assert result.exit_code == 1
    assert "discovery_status_503" in lines(result, "FAIL")["discovery"]
    assert "tls" in lines(result, "PASS")
    assert "jwks" in lines(result, "SKIP")
    assert "client auth" in lines(result, "PASS")


def test_check_fails_when_the_app_has_no_extension() -> None:
    result = Flask("bare").test_cli_runner(**SEPARATE_STDERR).invoke(ias_pkce, ["check"])

    assert result.exit_code == 1
    assert output(result).startswith("FAIL  extension")


def test_commands_come_with_every_app_through_the_entry_point(
    ias_emulator: IASEmulator,
) -> None:
    # How `flask --app ...` finds them: Flask loads the "flask.commands" entry points.
    app = build_app(ias_emulator)
    cli = FlaskGroup(create_app=lambda: app)

    result = app.test_cli_runner(**SEPARATE_STDERR).invoke(cli, ["ias-pkce", "check"])

    assert result.exit_code == 0, output(result)
    assert "result: OK" in output(result)


def test_exchange_prints_the_claims_and_never_a_token(ias_emulator: IASEmulator) -> None:
    public_token = ias_emulator.issue_public_token()

    result = run(build_app(ias_emulator), "exchange", stdin=public_token + "\n")

    assert result.exit_code == 0, output(result)
    claims = json.loads(result.stdout)
    assert ias_emulator.xsuaa_client_id in claims["aud"]
    assert claims["sub"]
    assert "exchanged at IAS" in result.stderr
    assert len(ias_emulator.exchanges) == 1
    # No token of any kind: every compact JWS starts with the base64 of '{"'.
    assert public_token not in output(result)
    assert "eyJ" not in output(result)


def test_exchange_accepts_an_authorization_header_value(ias_emulator: IASEmulator) -> None:
    token = ias_emulator.issue_public_token(
        aud=[ias_emulator.public_client_id, ias_emulator.xsuaa_client_id]
    )

    result = run(build_app(ias_emulator), "exchange", stdin=f"Bearer {token}")

    assert result.exit_code == 0, output(result)
    assert json.loads(result.stdout)["aud"] == [
        ias_emulator.public_client_id,
        ias_emulator.xsuaa_client_id,
    ]
    assert "passed through" in result.stderr
    assert ias_emulator.exchanges == []


def test_exchange_of_a_bad_token_fails_cleanly(ias_emulator: IASEmulator) -> None:
    token = ias_emulator.foreign_key_token()

    result = run(build_app(ias_emulator), "exchange", stdin=token)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("refused: 401 invalid_token, reason ")
    assert "Traceback" not in output(result)
    assert token not in output(result)
    assert ias_emulator.exchanges == []


def test_exchange_of_a_token_ias_refuses(ias_emulator: IASEmulator) -> None:
    ias_emulator.inject(TOKEN_PATH, status=400, body={"error": "invalid_grant"})

    result = run(build_app(ias_emulator), "exchange", stdin=ias_emulator.issue_public_token())

    assert result.exit_code == 1
    assert "reason ias_invalid_grant" in result.stderr


def test_exchange_without_a_token_is_a_usage_error(ias_emulator: IASEmulator) -> None:
    result = run(build_app(ias_emulator), "exchange", stdin="  \n")

    assert result.exit_code == 2
    assert "no token on standard input" in output(result)


def test_check_warns_of_a_certificate_that_expires_soon(ias_emulator: IASEmulator) -> None:
    soon = ias_emulator.rotate_client_certificate(valid_for=datetime.timedelta(hours=36))
    app = build_app(
        ias_emulator, IAS_PKCE_CERTIFICATE=soon["certificate"], IAS_PKCE_KEY=soon["key"]
    )

    result = run(app, "check")

    assert result.exit_code == 0, output(result)  # a warning alone does not fail the check
    warning = lines(result, "WARN")["certificate"]
    assert "expires on" in warning
    assert "(in 1.5 days): renew the binding" in warning


def _unbound_app() -> Flask:
    app = Flask("unbound")
    IASPKCE(app)  # raises: nothing is bound
    return app


def test_check_without_a_binding_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT"):
        monkeypatch.delenv(name, raising=False)
    cli = FlaskGroup(create_app=_unbound_app)

    result = CliRunner(**SEPARATE_STDERR).invoke(cli, ["ias-pkce", "check"])

    assert result.exit_code == 1
    assert result.stderr == ""
    assert "Traceback" not in result.stdout
    fail = lines(result, "FAIL")["binding"]
    assert "No IAS (identity) service binding found" in fail
    assert "VCAP_SERVICES" in fail
    assert "SERVICE_BINDING_ROOT=(unset)" in fail
    assert result.stdout.rstrip().endswith("result: FAILED (1 failed)")


def test_check_with_a_wrong_setting_fails_on_one_line(ias_emulator: IASEmulator) -> None:
    def factory() -> Flask:
        return build_app(ias_emulator, IAS_PKCE_LEEWAY=-1)

    result = CliRunner(**SEPARATE_STDERR).invoke(
        FlaskGroup(create_app=factory), ["ias-pkce", "check"]
    )

    assert result.exit_code == 1
    assert "IAS_PKCE_LEEWAY must be" in lines(result, "FAIL")["config"]


def test_check_of_a_disabled_extension_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    app = Flask("off")
    app.config["IAS_PKCE_ENABLED"] = False
    IASPKCE(app)

    result = run(app, "check")

    assert result.exit_code == 1
    assert "IAS_PKCE_ENABLED = False" in lines(result, "FAIL")["extension"]


def test_check_without_a_binding_from_the_flask_command(tmp_path: Path) -> None:
    # As a user runs it: the flask executable, an app module, an environment without bindings.
    (tmp_path / "unbound_app.py").write_text(
        "from flask import Flask\nfrom flask_ias_pkce import IASPKCE\n"
        "app = Flask(__name__)\nIASPKCE(app)\n"
    )
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT") and not name.startswith("IAS_")
    }
    flask = Path(sys.executable).with_name("flask")
    command = [str(flask), "--app", "unbound_app", "ias-pkce", "check"]
    done = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 1
    assert done.stdout.startswith("FAIL  binding      No IAS (identity) service binding found")
    assert "Looked in:" in done.stdout
    assert done.stderr == ""


def test_tls_failure_reports_every_step_on_stdout(ias_emulator: IASEmulator) -> None:
    with IASEmulator() as other:
        result = run(build_app(ias_emulator, IAS_PKCE_VERIFY=other.ca_file), "check")

    assert result.stderr == ""
    steps = [line.split()[:2] for line in result.stdout.splitlines() if line[:4] in WORDS]
    assert steps == [
        ["PASS", "binding"],
        ["PASS", "certificate"],
        ["FAIL", "tls"],
        ["SKIP", "discovery"],
        ["SKIP", "jwks"],
        ["SKIP", "client"],
    ]
