"""``python -m example_app``: the whole PKCE story on one command, against a local IAS.

It starts the IAS emulator (which also plays XSUAA), the downstream service and the
example app (on gunicorn when it is installed, else on Werkzeug's server), all on free
loopback ports; then it acts as the public client: it signs in with PKCE, calls the API a
few times, once with a tampered token, once on the public route, and prints what happened
at each step. Tokens are never printed: only claims such as the user and the audience.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests
from werkzeug.serving import make_server

from flask_ias_pkce.testing import IASEmulator

from . import downstream
from .client import SignInError, pkce_login, tampered

#: The folder that holds the ``example_app`` package: the app server's working directory.
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_READY_TIMEOUT = 15.0


@dataclass
class Step:
    """One step of the demo and whether it behaved as expected."""

    name: str
    expected_status: int
    status: int | None
    detail: str
    milliseconds: float
    as_expected: bool


@dataclass
class DemoResult:
    """What the demo saw; ``ok`` when every step behaved as expected."""

    server: str
    steps: list[Step] = field(default_factory=list)
    #: jwt-bearer exchanges at IAS whose assertion was the signed-in session's token.
    session_exchanges: int = 0
    ias_exchanges: int = 0
    xsuaa_exchanges: int = 0

    @property
    def ok(self) -> bool:
        """Every step as expected, and exactly one exchange for the session's token."""
        return (
            bool(self.steps)
            and all(step.as_expected for step in self.steps)
            and self.session_exchanges == 1
            and self.xsuaa_exchanges == 1
        )


def demo_environment(emulator: IASEmulator, downstream_url: str) -> dict[str, str]:
    """The environment the app gets, as a platform would give it: the bindings in
    ``VCAP_SERVICES``, plus what a local emulator and downstream service need."""
    return {
        "VCAP_SERVICES": json.dumps(emulator.vcap_services()),
        # The emulator's certificates come from its own CA, not from a public one.
        "IAS_PKCE_VERIFY": emulator.ca_file,
        # No IAS_PKCE_ACCEPTED_AUDIENCES: the mobile app signs in with the binding's own
        # client id (one IAS application), which is the default audience.
        "EXAMPLE_DOWNSTREAM_URL": downstream_url,
        # Where the browser page (/app/) signs in.
        "EXAMPLE_IAS_URL": emulator.url,
        "EXAMPLE_PUBLIC_CLIENT_ID": emulator.public_client_id,
    }


def _hermetic(environment: Mapping[str, str]) -> dict[str, str]:
    # Settings of the caller's shell must not leak into the demo's app.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("IAS_PKCE_", "EXAMPLE_"))
        and name not in ("VCAP_SERVICES", "SERVICE_BINDING_ROOT", "FLASK_RUN_FROM_CLI")
    }
    return {**inherited, **environment}


# -- the app server -----------------------------------------------------------------------


@contextlib.contextmanager
def _gunicorn(
    environment: Mapping[str, str], log: IO[bytes]
) -> Iterator[tuple[str, Callable[[], int | None]]]:
    # The listening socket is made here and handed over: no race for a free port.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"fd://{listener.fileno()}",
        # One process, so its in-process cache serves every call; several processes or
        # instances share a Redis cache instead (see deploy/gunicorn.conf.py).
        "--workers",
        "1",
        "--threads",
        "4",
        "--graceful-timeout",
        "2",
        "--log-level",
        "warning",
        "example_app:create_app()",
    ]
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        command,
        cwd=_PROJECT_ROOT,
        env=_hermetic(environment),
        pass_fds=(listener.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    listener.close()
    try:
        yield f"http://127.0.0.1:{port}", process.poll
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _werkzeug(
    environment: Mapping[str, str],
) -> Iterator[tuple[str, Callable[[], int | None]]]:
    from . import create_app

    # The extension reads VCAP_SERVICES from os.environ: set it only while the app is made.
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_hermetic(environment))
    try:
        app = create_app()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=downstream.QuietRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="example-app", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", lambda: None
    finally:
        server.shutdown()
        server.server_close()


def _wait_until_ready(api_url: str, exit_status: Callable[[], int | None]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        if exit_status() is not None:
            raise RuntimeError(f"the app server exited with status {exit_status()}")
        try:
            if requests.get(f"{api_url}/health", timeout=1, verify=True).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app did not answer /health within {_READY_TIMEOUT:.0f} s")
        time.sleep(0.05)


# -- the public client's calls --------------------------------------------------------------


class _Recorder:
    """Runs the steps, prints a line for each and keeps the result."""

    def __init__(self, result: DemoResult, out: Callable[[str], None]) -> None:
        self.result = result
        self.out = out

    def step(
        self,
        name: str,
        expected_status: int,
        call: Callable[[], requests.Response],
        describe: Callable[[dict[str, Any]], tuple[str, bool]] = lambda body: ("", True),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            answer = call()
            status: int | None = answer.status_code
            body = _json(answer)
        except requests.RequestException as error:
            status, body = None, {"error": type(error).__name__}
        milliseconds = (time.perf_counter() - started) * 1000
        detail, fine = describe(body)
        if status != expected_status:
            detail = f"{detail} {body.get('error', '')}".strip()
        self._record(name, expected_status, status, detail, milliseconds, fine)
        return body

    def _record(
        self,
        name: str,
        expected_status: int,
        status: int | None,
        detail: str,
        milliseconds: float,
        fine: bool,
    ) -> None:
        as_expected = status == expected_status and fine
        number = len(self.result.steps) + 1
        self.result.steps.append(
            Step(name, expected_status, status, detail, milliseconds, as_expected)
        )
        mark = "ok" if as_expected else f"UNEXPECTED (wanted {expected_status})"
        shown_status = status if status is not None else "---"
        self.out(
            f"{number:>3}. {name:<36} {shown_status:>3} {milliseconds:>5.0f} ms  {mark}  {detail}"
        )


def _json(answer: requests.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _who_and_how(body: dict[str, Any], served_by: str) -> tuple[str, bool]:
    audience = ", ".join(body.get("aud") or [])
    how = {"exchange": "exchanged at IAS", "cache": "cache hit"}.get(body.get("served_by", ""))
    detail = f"{body.get('email')}, aud [{audience}], {how or body.get('served_by')}"
    return detail, body.get("served_by") == served_by


def _run_client(
    emulator: IASEmulator, api_url: str, downstream_url: str, record: _Recorder
) -> str | None:
    """The public client's session; returns the token it signed in with."""
    started = time.perf_counter()
    try:
        tokens = pkce_login(emulator.url, emulator.public_client_id, verify=emulator.ca_file)
    except SignInError as error:
        record._record("sign in (PKCE, S256)", 200, None, str(error), 0, False)
        return None
    token: str = tokens["id_token"]
    public_claims = _claims(token)
    # One IAS application: the mobile app's token names the backend's own client id, the
    # only audience IAS exchanges for this backend.
    audience = public_claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    own_client = isinstance(audiences, list) and emulator.client_id in audiences
    record._record(
        "sign in (PKCE, S256)",
        200,
        200,
        f"{public_claims.get('email')}, public token aud [{audience}]"
        + (" (the binding's client id)" if own_client else ""),
        (time.perf_counter() - started) * 1000,
        own_client,
    )

    def get(path: str, bearer: str | None = None, base: str = api_url) -> requests.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return requests.get(base + path, headers=headers, timeout=10, verify=True)

    record.step(
        "GET /api/me", 200, lambda: get("/api/me", token), lambda b: _who_and_how(b, "exchange")
    )
    for _ in range(2):
        record.step(
            "GET /api/me", 200, lambda: get("/api/me", token), lambda b: _who_and_how(b, "cache")
        )

    def orders(body: dict[str, Any]) -> tuple[str, bool]:
        count = len(body.get("orders") or [])
        detail = f"{count} orders for {body.get('for')}, token had aud {body.get('accepted_aud')}"
        return detail, count > 0

    record.step(
        "GET /api/orders (calls downstream)", 200, lambda: get("/api/orders", token), orders
    )

    def xsuaa(body: dict[str, Any]) -> tuple[str, bool]:
        audience = ", ".join(body.get("aud") or [])
        zone = str(body.get("zid"))[:8]
        return f"{body.get('user_name')}, XSUAA token aud [{audience}], zid {zone}...", bool(
            audience
        )

    for _ in range(2):
        record.step(
            "GET /api/xsuaa-me (second hop)", 200, lambda: get("/api/xsuaa-me", token), xsuaa
        )

    def admin(body: dict[str, Any]) -> tuple[str, bool]:
        return f"{body.get('email')}, groups {body.get('groups')}", "Admins" in body["groups"]

    record.step(
        f"GET /api/admin as {public_claims.get('email')}",
        200,
        lambda: get("/api/admin", token),
        admin,
    )
    _refused_admin(emulator, get, record)

    forged = tampered(token, email="mallory@example.com")
    record.step(
        "GET /api/me, tampered token",
        401,
        lambda: get("/api/me", forged),
        lambda body: (f"refused: {body.get('error')}", body.get("error") == "invalid_token"),
    )
    record.step(
        "GET /api/me, no token",
        401,
        lambda: get("/api/me"),
        lambda body: ("refused: no credentials", True),
    )
    record.step(
        "public token straight to downstream",
        401,
        lambda: get("/orders", token, base=downstream_url),
        lambda body: (
            "refused: its aud lacks the XSUAA client id",
            body.get("error") == "invalid_token",
        ),
    )
    record.step(
        "GET /health (public, no token)",
        200,
        lambda: get("/health"),
        lambda body: (f"status {body.get('status')}", body.get("status") == "ok"),
    )
    return token


def _refused_admin(
    emulator: IASEmulator, get: Callable[[str, str | None], requests.Response], record: _Recorder
) -> None:
    """A second user, signed in the same way but not in the group ``Admins``: refused."""
    bob = "bob@example.com"
    try:
        tokens = pkce_login(
            emulator.url, emulator.public_client_id, verify=emulator.ca_file, login_hint=bob
        )
    except SignInError as error:
        record._record(f"sign in as {bob}", 200, None, str(error), 0, False)
        return
    record.step(
        f"GET /api/admin as {bob}",
        403,
        lambda: get("/api/admin", tokens["id_token"]),
        lambda body: (
            f"refused: {body.get('error')}, not in group Admins",
            body.get("error") == "insufficient_scope",
        ),
    )


def _claims(token: str) -> dict[str, Any]:
    from jose import jwt

    claims: dict[str, Any] = jwt.get_unverified_claims(token)
    return claims


def run_demo(*, out: Callable[[str], None] = print, use_gunicorn: bool | None = None) -> DemoResult:
    """Run the demo, print its account with ``out`` and return what it saw.

    :param use_gunicorn: serve the app with gunicorn (default: when it is installed) or
        with Werkzeug's server in a thread.
    """
    if use_gunicorn is None:
        use_gunicorn = importlib.util.find_spec("gunicorn") is not None
    server_name = "gunicorn, 1 worker" if use_gunicorn else "Werkzeug, in process"
    result = DemoResult(server=server_name)
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(IASEmulator())
        downstream_server = downstream.serve(downstream.for_emulator(emulator))
        stack.callback(downstream_server.server_close)
        stack.callback(downstream_server.shutdown)
        downstream_url = f"http://127.0.0.1:{downstream_server.server_port}"
        environment = demo_environment(emulator, downstream_url)
        log = stack.enter_context(tempfile.TemporaryFile())
        if use_gunicorn:
            api_url, exit_status = stack.enter_context(_gunicorn(environment, log))
        else:
            api_url, exit_status = stack.enter_context(_werkzeug(environment))
        out("flask-ias-pkce demo: a public client signs in with PKCE and calls a protected API")
        out(f"  IAS (emulated)   {emulator.url}  app authenticates by mTLS, XSUAA under /xsuaa")
        out(f"  API              {api_url}  ({server_name})")
        out(f"  downstream       {downstream_url}  (accepts aud {emulator.xsuaa_client_id} only)")
        out("")
        try:
            _wait_until_ready(api_url, exit_status)
        except RuntimeError as error:
            out(f"error: {error}")
            log.seek(0)
            out(log.read().decode(errors="replace")[-4000:])
            return result
        token = _run_client(emulator, api_url, downstream_url, _Recorder(result, out))
        result.ias_exchanges = len(emulator.exchanges)
        result.session_exchanges = sum(
            1 for call in emulator.exchanges if call.params.get("assertion") == token
        )
        result.xsuaa_exchanges = len(emulator.xsuaa_exchanges)
        if not result.ok:
            log.seek(0)
            server_log = log.read().decode(errors="replace").strip()
            if server_log:
                out("\napp server log (tail):\n" + server_log[-4000:])
    passed = sum(step.as_expected for step in result.steps)
    out("")
    out(f"exchanges at IAS for the session's token: {result.session_exchanges}")
    out(f"exchanges at XSUAA: {result.xsuaa_exchanges}")
    verdict = "OK" if result.ok else "FAILED"
    out(f"result: {verdict} ({passed} of {len(result.steps)} steps as expected)")
    return result
