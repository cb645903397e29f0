"""``python -m flask_ias_pkce.testing``: the emulator by hand, as a separate process that a
plain ``requests`` client (or an app bound through the printed environment) talks to."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests
from jose import jwt

from flask_ias_pkce.testing import resolve_tenant_hosts
from flask_ias_pkce.testing.__main__ import main

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@contextmanager
def emulator_process(*arguments: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """The emulator in a child process; yields it with the lines it printed before serving
    (everything up to the blank line after the curl command, or the JSON line)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flask_ias_pkce.testing", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        printed: list[str] = []
        for line in process.stdout:
            printed.append(line.rstrip("\n"))
            if line.startswith(("curl ", "{")):
                break
        assert printed, process.stderr.read() if process.stderr else ""
        yield process, printed
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _exports(printed: list[str]) -> dict[str, str]:
    found = {}
    for line in printed:
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = shlex.split(value)[0]
    return found


def test_the_printed_binding_token_and_login_url_work(tmp_path: Path) -> None:
    with emulator_process() as (process, printed):
        url = printed[0].split()[3]
        ca_file = next(line.split()[-1] for line in printed if "CA file" in line)
        exports = _exports(printed)
        token = printed[printed.index(next(p for p in printed if "A public token" in p)) + 2]

        assert url.startswith("https://localhost:")
        assert exports["FLASK_IAS_PKCE_VERIFY"] == ca_file
        discovery = requests.get(
            url + "/.well-known/openid-configuration", verify=ca_file, timeout=10
        ).json()
        assert discovery["issuer"] == url
        # The printed token is the public client's, and the binding's certificate
        # exchanges it: the two halves of what an app does.
        credentials = json.loads(exports["VCAP_SERVICES"])["identity"][0]["credentials"]
        (tmp_path / "cert.pem").write_text(credentials["certificate"])
        (tmp_path / "key.pem").write_text(credentials["key"])
        assert jwt.get_unverified_claims(token)["iss"] == url
        exchanged = requests.post(
            discovery["token_endpoint"],
            data={
                "grant_type": JWT_BEARER,
                "client_id": credentials["clientid"],
                "assertion": token,
                "token_format": "jwt",
            },
            cert=(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")),
            verify=ca_file,
            timeout=10,
        )
        assert exchanged.status_code == 200, exchanged.text
        xsuaa = json.loads(exports["VCAP_SERVICES"])["xsuaa"][0]["credentials"]["clientid"]
        assert xsuaa in jwt.get_unverified_claims(exchanged.json()["id_token"])["aud"]

        # The login URL signs in (redirected at once for a non-browser client), and the
        # printed curl command's verifier redeems the code.
        registered = next(line for line in printed if "redirect URIs" in line)
        assert "http://localhost:5000/callback" in registered  # --redirect-uri's default
        login_url = next(line for line in printed if line.startswith(url + "/oauth2/authorize"))
        redirect = requests.get(login_url, allow_redirects=False, verify=ca_file, timeout=10)
        code = parse_qs(urlsplit(redirect.headers["Location"]).query)["code"][0]
        curl = shlex.split(printed[-1])
        fields = dict(curl[i + 1].split("=", 1) for i, word in enumerate(curl) if word == "-d")
        redeemed = requests.post(
            discovery["token_endpoint"], data={**fields, "code": code}, verify=ca_file, timeout=10
        )
        assert redeemed.status_code == 200, redeemed.text

        process.send_signal(signal.SIGINT)  # Ctrl-C
        rest, errors = process.communicate(timeout=15)
    assert process.returncode == 0, errors
    assert rest.strip().endswith("IAS emulator stopped")
    assert not os.path.exists(ca_file)  # its keys and certificates are gone


def test_secret_binding_users_and_port_as_json() -> None:
    with emulator_process("--secret", "--users", "bob@example.com,carol@example.com", "--json") as (
        process,
        printed,
    ):
        document = json.loads(printed[-1])
        port = int(document["url"].rsplit(":", 1)[1])
        credentials = document["vcap_services"]["identity"][0]["credentials"]
        assert credentials["credential-type"] == "SECRET"
        assert "key" not in credentials
        assert jwt.get_unverified_claims(document["public_token"])["email"] == "bob@example.com"
        exchanged = requests.post(
            document["url"] + "/oauth2/token",
            data={"grant_type": JWT_BEARER, "assertion": document["public_token"]},
            auth=(credentials["clientid"], credentials["clientsecret"]),
            verify=document["ca_file"],
            timeout=10,
        )
        assert exchanged.status_code == 200, exchanged.text
        process.terminate()
        process.communicate(timeout=15)
    assert process.returncode == 0
    # --port: the same port again, now that it is free
    with emulator_process("--port", str(port), "--json") as (process, printed):
        assert json.loads(printed[-1])["url"] == f"https://localhost:{port}"


def test_subscriber_tenants_are_served_and_printed() -> None:
    with (
        emulator_process("--subscriber", "customer", "--subscriber", "partner", "--json") as (
            process,
            printed,
        ),
        resolve_tenant_hosts(),
    ):
        document = json.loads(printed[-1])
        port = document["url"].rsplit(":", 1)[1]
        assert set(document["subscribers"]) == {"customer", "partner"}
        app_tids = set()
        for name, tenant in document["subscribers"].items():
            assert tenant["url"] == f"https://{name}.localhost:{port}"
            claims = jwt.get_unverified_claims(tenant["public_token"])
            assert (claims["iss"], claims["app_tid"]) == (tenant["url"], tenant["app_tid"])
            # The tenant answers for itself, with its own keys.
            discovery = requests.get(
                tenant["url"] + "/.well-known/openid-configuration",
                verify=document["ca_file"],
                timeout=10,
            ).json()
            assert discovery["issuer"] == tenant["url"]
            keys = requests.get(discovery["jwks_uri"], verify=document["ca_file"], timeout=10)
            kid = jwt.get_unverified_header(tenant["public_token"])["kid"]
            assert kid in {key["kid"] for key in keys.json()["keys"]}
            app_tids.add(tenant["app_tid"])
        assert (
            len(app_tids | {document["vcap_services"]["identity"][0]["credentials"]["app_tid"]})
            == 3
        )
        process.terminate()
        process.communicate(timeout=15)
    assert process.returncode == 0


def test_bad_arguments_are_refused_with_a_usage_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flask_ias_pkce.testing", "--users", " , "],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--users names no user" in done.stderr


class _Output(io.StringIO):
    """What main() prints; a SIGTERM to this process once it has printed its first flush."""

    def flush(self) -> None:
        super().flush()
        if "IAS emulator stopped" not in self.getvalue():
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()


def test_main_in_process_prints_and_stops_on_sigterm() -> None:
    # The same entry point in this process (the subprocess tests above are not measured
    # by coverage): it must stop on SIGTERM and give the previous handlers back.
    before = signal.getsignal(signal.SIGTERM)
    out = _Output()

    assert main(["--origin", "http://127.0.0.1:8000", "--subscriber", "customer"], out=out) == 0

    text = out.getvalue()
    assert "CORS origins    http://127.0.0.1:8000" in text
    # The subscriber's block comes before the sign-in, whose curl line ends the text.
    assert "  customer        https://customer.localhost:" in text
    assert text.index("Subscriber tenants") < text.index("Sign in with PKCE")
    assert "export VCAP_SERVICES=" in text
    assert text.rstrip().endswith("IAS emulator stopped")
    assert signal.getsignal(signal.SIGTERM) is before
