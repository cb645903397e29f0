"""The benchmark app under a real gunicorn, bound to the IAS emulator through the environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests

from flask_ias_pkce.testing import IASEmulator

REPOSITORY = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def app_environment(ias: IASEmulator, **config: Any) -> dict[str, str]:
    """The environment of a deployed app bound to ``ias``: VCAP_SERVICES and BENCHAPP_*."""
    environment = dict(os.environ)
    environment["VCAP_SERVICES"] = json.dumps(ias.vcap_services())
    settings: dict[str, Any] = {
        "IAS_PKCE_VERIFY": ias.ca_file,
        "IAS_PKCE_ACCEPTED_AUDIENCES": [ias.public_client_id],
        **config,
    }
    for key, value in settings.items():
        environment[f"BENCHAPP_{key}"] = json.dumps(value)
    return environment


class Gunicorn:
    """``benchmarks/_wsgi_app.py`` under gunicorn (sync workers) on a free loopback port."""

    def __init__(self, environment: dict[str, str], *, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._command = [
            sys.executable, "-m", "gunicorn",
            "--chdir", str(REPOSITORY),
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers),
            "--worker-class", "sync",
            "--graceful-timeout", "2",
            "--log-level", "warning",
            "benchmarks._wsgi_app:create_app()",
        ]  # fmt: skip
        self._environment = environment
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self._process = subprocess.Popen(self._command, env=self._environment)
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
