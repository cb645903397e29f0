"""The example app as a newcomer meets it: ``python -m example_app`` tells the whole story
and exits 0; ``flask --app example_app run`` emulates IAS only when nothing is bound."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import example_app
from example_app import create_app
from example_app.demo import run_demo
from flask_ias_pkce import BindingError
from flask_ias_pkce.testing import IASEmulator

from helpers import bearer

ROOT = Path(example_app.__file__).resolve().parent.parent
# The start of every JWT's header ({"alg"... or {"typ"...): it must never be printed.
JWT_PREFIX = re.compile(r"eyJ[A-Za-z0-9_-]{10,}")


def test_demo_command_tells_the_story_and_exits_0() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    output = completed.stdout
    assert completed.returncode == 0, output + completed.stderr
    assert "gunicorn" in output
    assert re.search(r"^exchanges at IAS for the session's token: 1$", output, re.MULTILINE)
    assert re.search(r"^exchanges at XSUAA: 1$", output, re.MULTILINE)
    assert re.search(r"^result: OK \((\d+) of \1 steps as expected\)$", output, re.MULTILINE)
    # One IAS application: the mobile app's token names the binding's client id.
    assert re.search(
        r"^ +1\. sign in \(PKCE, S256\) .* ok  alice@example\.com, public token aud "
        r"\[backend-app-client-id\] \(the binding's client id\)$",
        output,
        re.MULTILINE,
    )
    assert "exchanged at IAS" in output
    assert output.count("cache hit") >= 2
    assert "tampered token" in output
    assert "invalid_token" in output
    assert not JWT_PREFIX.search(output + completed.stderr)


def test_demo_in_process_on_werkzeug() -> None:
    lines: list[str] = []

    result = run_demo(out=lines.append, use_gunicorn=False)

    assert result.ok, "\n".join(lines)
    assert result.session_exchanges == 1
    assert result.ias_exchanges == 2  # one per user: Alice's session and Bob's refused call
    assert result.xsuaa_exchanges == 1
    statuses = {step.name: step.status for step in result.steps}
    assert statuses["GET /api/me, tampered token"] == 401
    assert statuses["GET /health (public, no token)"] == 200
    # One user in the group Admins is let in, one who is not is refused.
    assert statuses["GET /api/admin as alice@example.com"] == 200
    assert statuses["GET /api/admin as bob@example.com"] == 403


def test_app_from_vcap_services(monkeypatch: pytest.MonkeyPatch, ias_emulator: IASEmulator) -> None:
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(ias_emulator.vcap_services()))
    monkeypatch.setenv("IAS_PKCE_VERIFY", ias_emulator.ca_file)
    client = create_app().test_client()
    token = ias_emulator.issue_public_token()

    first = client.get("/api/me", headers=bearer(token)).json
    second = client.get("/api/me", headers=bearer(token)).json

    assert first["served_by"] == "exchange"
    assert second["served_by"] == "cache"
    assert ias_emulator.xsuaa_client_id in first["aud"]
    assert client.get("/health").status_code == 200
    assert client.get("/api/orders", headers=bearer(token)).status_code == 503  # no downstream


def test_admin_view_needs_the_group(
    monkeypatch: pytest.MonkeyPatch, ias_emulator: IASEmulator
) -> None:
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(ias_emulator.vcap_services()))
    monkeypatch.setenv("IAS_PKCE_VERIFY", ias_emulator.ca_file)
    monkeypatch.setenv("IAS_PKCE_ACCEPTED_AUDIENCES", json.dumps([ias_emulator.public_client_id]))
    client = create_app().test_client()
    admin = ias_emulator.issue_public_token()  # Alice: Employees and Admins
    employee = ias_emulator.pkce_login(login_hint="bob@example.com")["id_token"]  # Employees

    allowed = client.get("/api/admin", headers=bearer(admin))
    refused = client.get("/api/admin", headers=bearer(employee))

    assert allowed.status_code == 200
    assert allowed.json["groups"] == ["Admins", "Employees"]
    assert refused.status_code == 403
    assert refused.json["error"] == "insufficient_scope"
    assert 'scope="Admins"' in refused.headers["WWW-Authenticate"]
    assert client.get("/api/admin").status_code == 401


@pytest.fixture
def no_binding(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # Development mode writes the emulator's settings into os.environ: give it a copy.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT", "VCAP_APPLICATION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return monkeypatch


def test_flask_run_without_binding_starts_the_emulator_loudly(
    no_binding: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_binding.setenv("FLASK_RUN_FROM_CLI", "true")

    with caplog.at_level("WARNING"):
        app = create_app()
    emulator, downstream = app.extensions["example_app_development"]
    try:
        client = app.test_client()
        assert any("DEVELOPMENT ONLY" in record.getMessage() for record in caplog.records)
        assert client.get("/health").status_code == 200
        assert client.get("/api/me").status_code == 401
        answer = client.get("/api/orders", headers=bearer(emulator.issue_public_token()))
        assert answer.status_code == 200
        assert answer.json["accepted_aud"] == emulator.xsuaa_client_id
    finally:
        downstream.shutdown()
        downstream.server_close()
        emulator.stop()


def test_no_emulator_outside_the_flask_cli(no_binding: pytest.MonkeyPatch) -> None:
    no_binding.delenv("FLASK_RUN_FROM_CLI", raising=False)

    with pytest.raises(BindingError):
        create_app()


def test_no_emulator_when_a_binding_is_present(
    no_binding: pytest.MonkeyPatch, ias_emulator: IASEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    no_binding.setenv("FLASK_RUN_FROM_CLI", "true")
    no_binding.setenv("VCAP_SERVICES", json.dumps(ias_emulator.vcap_services()))
    no_binding.setenv("IAS_PKCE_VERIFY", ias_emulator.ca_file)

    with caplog.at_level("WARNING"):
        app = create_app()

    assert not any("DEVELOPMENT ONLY" in record.getMessage() for record in caplog.records)
    binding = app.extensions["ias_pkce"].settings.bindings.identity
    assert binding.url == ias_emulator.url


def test_browser_command_prints_the_page_url_and_keeps_running() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app", "--browser"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(2)]
        page_url = printed[1].split()[-1]
        assert printed[1].startswith("  open ")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/app/", page_url)
        time.sleep(1)
        assert process.poll() is None  # still serving
        page = requests.get(page_url, timeout=10)
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        config = requests.get(page_url + "config.json", timeout=10).json()
        assert config["token_endpoint"].endswith("/oauth2/token")
        assert requests.get(page_url + "client.js", timeout=10).status_code == 200
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, errors
    assert "browser demo stopped" in rest


def test_the_page_says_when_it_is_not_configured(ias_emulator: IASEmulator) -> None:
    app = create_app(ias_emulator.app_config())
    client = app.test_client()
    assert client.get("/app/").status_code == 200  # exempt: the page is how one signs in
    answer = client.get("/app/config.json")
    assert answer.status_code == 503
    assert answer.json["error"] == "not_configured"
    assert client.get("/app/other.js").status_code == 404


def test_deploy_files_set_up_one_ias_application() -> None:
    # As SAP-samples/appgyver-auth-flows does: the mobile app and the backend share one
    # identity instance, so no separate public client id is configured anywhere.
    deploy = ROOT / "example_app" / "deploy"
    instance = json.loads((deploy / "ias-instance.json").read_text())
    oauth2 = instance["oauth2-configuration"]

    assert oauth2["public-client"] is True
    assert oauth2["grant-types"] == [
        "authorization_code_pkce_s256",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ]
    assert oauth2["credential-types"] == ["x509"]
    assert instance["xsuaa-cross-consumption"] is True
    for name in ("manifest.yml", "kyma.yaml"):
        settings = [
            line.strip()
            for line in (deploy / name).read_text().splitlines()
            if not line.strip().startswith("#")
        ]
        assert not [line for line in settings if "IAS_PKCE_ACCEPTED_AUDIENCES" in line], name
    assert 'credential-types: ["x509"]' in (deploy / "kyma.yaml").read_text()
