"""A real WSGI server for tests and load runs: gunicorn in a child process on loopback.

Tests of what several workers share (one exchange per token across processes, a Redis
cache) need real processes; this starts them the way a deployment does, with the binding in
``VCAP_SERVICES`` and settings in the environment (see :func:`bound_environment`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import requests

if TYPE_CHECKING:
    from .emulator import IASEmulator


def bound_environment(ias: IASEmulator, *, prefix: str, **settings: Any) -> dict[str, str]:
    """This process's environment plus what a deployed app bound to ``ias`` would see:
    ``VCAP_SERVICES`` with its bindings, and ``<prefix>_<key>`` variables holding the JSON
    of ``settings`` (read them with ``app.config.from_prefixed_env(prefix)``). The emulator's
    CA is trusted unless ``settings`` say otherwise."""
    return {**os.environ, **ias.app_environment(prefix, **settings)}


class GunicornServer:
    """``gunicorn <app>`` on a loopback port, started and stopped by a context manager.

    :param app: gunicorn's application spec, e.g. ``"wsgi_app:create_app()"``.
    :param environment: the child's environment (see :func:`bound_environment`).
    :param chdir: where gunicorn imports ``app`` from.
    :param workers: worker processes; ``threads`` > 1 selects the ``gthread`` worker.
    :param worker_class: gunicorn's ``--worker-class`` (``"sync"``, ``"gthread"``,
        ``"gevent"``, ...); by default chosen from ``threads`` as above. ``"gevent"``
        needs the gevent package.
    :param ready_path: a path that answers 2xx once a worker serves (exempt from tokens).

    The listening socket is bound here and handed to gunicorn, so no other process can
    take the port between choosing it and serving on it.
    """

    def __init__(
        self,
        app: str,
        *,
        environment: Mapping[str, str] | None = None,
        chdir: str | Path | None = None,
        workers: int = 1,
        threads: int = 1,
        worker_class: str | None = None,
        ready_path: str = "/health",
        startup_timeout: float = 30.0,
        extra_arguments: Sequence[str] = (),
    ) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._command = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"fd://{self._listener.fileno()}",
            "--workers", str(workers),
            "--threads", str(threads),
            "--worker-class", worker_class or ("gthread" if threads > 1 else "sync"),
            "--graceful-timeout", "2",
            "--log-level", "warning",
            *(["--chdir", str(chdir)] if chdir is not None else []),
            *extra_arguments,
            app,
        ]  # fmt: skip
        self._environment = dict(environment if environment is not None else os.environ)
        self._ready_url = self.url + ready_path
        self._startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start gunicorn and wait until ``ready_path`` answers."""
        self.process = subprocess.Popen(  # noqa: S603 - a command line of our own
            self._command,
            env=self._environment,
            pass_fds=(self._listener.fileno(),),
            # Its own process group: stop() ends the workers too, even if the master hangs.
            start_new_session=True,
        )
        # Also when the test run ends without stop() (an interrupted run, say).
        atexit.register(self.stop)
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"gunicorn exited with {code}")
            try:
                if requests.get(self._ready_url, timeout=1).ok:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                # Not up yet, or a worker still booting on a loaded machine: ask again.
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not serve {self._ready_url} within the timeout")

    def stop(self) -> None:
        """Stop gunicorn and its workers (TERM, then KILL after 10 s); close the socket."""
        process, self.process = self.process, None  # once only: a pgid may be reused later
        if process is not None:
            # The whole group, even when the master is gone and left workers behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
