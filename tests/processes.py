"""Real processes for tests: the test app under gunicorn, configured through the environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from flask_ias_pkce.testing import IASEmulator

TESTS = Path(__file__).parent


def app_environment(ias: IASEmulator, **config: Any) -> dict[str, str]:
    """The environment of a deployed app bound to ``ias`` (VCAP_SERVICES + TESTAPP_*)."""
    environment = dict(os.environ)
    environment["VCAP_SERVICES"] = json.dumps(ias.vcap_services())
    settings: dict[str, Any] = {
        "IAS_PKCE_VERIFY": ias.ca_file,
        "IAS_PKCE_ACCEPTED_AUDIENCES": [ias.public_client_id],
        "IAS_PKCE_TIMEOUT": [2.0, 2.0],
        **config,
    }
    for key, value in settings.items():
        environment[f"TESTAPP_{key}"] = json.dumps(value)
    return environment


class Gunicorn:
    """``tests/wsgi_app.py`` under gunicorn on a free loopback port."""

    def __init__(self, environment: dict[str, str], *, workers: int = 1, threads: int = 1):
        # The socket is bound here and handed over, so no other process can take the port
        # between choosing it and gunicorn binding it.
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._command = [
            sys.executable, "-m", "gunicorn",
            "--chdir", str(TESTS),
            "--bind", f"fd://{self._listener.fileno()}",
            "--workers", str(workers),
            "--threads", str(threads),
            "--worker-class", "gthread" if threads > 1 else "sync",
            "--graceful-timeout", "2",
            "--log-level", "warning",
            "wsgi_app:create_app()",
        ]  # fmt: skip
        self._environment = environment
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gunicorn:
        self._process = subprocess.Popen(
            self._command, env=self._environment, pass_fds=(self._listener.fileno(),)
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self._process.returncode}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("gunicorn did not start within 30 s")

    def wait_for_workers(self, count: int, *, timeout: float = 30) -> None:
        """Return once ``count`` different workers have answered (they boot one by one)."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(max_workers=2 * count) as pool:
            while len(seen) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(seen)} of {count} workers answered")
                answers = pool.map(
                    lambda _: requests.get(self.url + "/busy", timeout=5).json()["pid"],
                    range(2 * count),
                )
                seen.update(answers)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._listener.close()
