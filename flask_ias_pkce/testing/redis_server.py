"""A real ``redis-server`` on a free local port, for tests.

Tests of the shared cache run against the real thing, not a mock: a mock would not show
what a Redis restart does to pooled connections, or how ``PX`` expiry behaves. The server
keeps nothing on disk and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisServer", "RedisServerNotFoundError"]

_HOST: Final = "127.0.0.1"
_INSTALL_HINT: Final = "redis-server not found: install it with `apt-get install redis-server`"


class RedisServerNotFoundError(RuntimeError):
    """The ``redis-server`` binary is neither on ``PATH`` nor at ``$REDIS_SERVER``."""


def _free_port() -> int:
    # The port is free now; another process could take it before redis-server binds it,
    # in which case start() reports redis-server's own error.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _find_executable(executable: str | None) -> str:
    candidate = executable or os.environ.get("REDIS_SERVER") or "redis-server"
    found = shutil.which(candidate)
    if found is None:
        raise RedisServerNotFoundError(_INSTALL_HINT)
    return found


class RedisServer:
    """Start, stop and restart a private ``redis-server``; a context manager.

    ::

        with RedisServer() as server:
            client = server.client()
            server.stop()    # Redis goes away mid-test ...
            server.start()   # ... and comes back on the same port

    :param password: if given, clients must authenticate (``--requirepass``).
    :param executable: the binary; else ``$REDIS_SERVER``, else ``redis-server`` on PATH.
    :param startup_timeout: seconds to wait for the first PING answer.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        executable: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.password = password
        self.executable = _find_executable(executable)
        self.startup_timeout = startup_timeout
        self.host = _HOST
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None

    @property
    def port(self) -> int:
        """The TCP port; fixed at the first :meth:`start` and kept across restarts."""
        if self._port is None:
            raise RuntimeError("the Redis server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{credentials}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again on the same port after :meth:`stop`); wait for PING."""
        if self.running:
            return
        if self._port is None:
            self._port = _free_port()
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="flask-ias-pkce-redis-"))
        command = [
            self.executable,
            "--port",
            str(self._port),
            "--bind",
            _HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._directory),
            "--daemonize",
            "no",
        ]
        if self.password:
            command += ["--requirepass", self.password]
        log_path = self._directory / "redis.log"
        # A file, not a pipe: a pipe nobody reads would eventually block the server.
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own fixed arguments
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_until_ready(log_path)

    def _wait_until_ready(self, log_path: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        with self.client(socket_timeout=0.5, retries=0) as probe:
            while True:
                if self._process.poll() is not None:
                    output = log_path.read_text(errors="replace")[-2000:]
                    self._process = None
                    raise RuntimeError(f"redis-server exited at start:\n{output}")
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer PING within {self.startup_timeout} s"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server: terminate, then kill if it has not exited after 5 seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # A paused server would not act on SIGTERM until continued.
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted but nothing is answered.

        This is a slow Redis, as opposed to a stopped one; :meth:`resume` undoes it.
        """
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("the Redis server is not running")
        self._process.send_signal(signum)

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def client(self, *, socket_timeout: float = 2.0, retries: int = 1) -> redis.Redis:
        """A new ``redis.Redis`` for this server (bytes in, bytes out).

        :param retries: immediate retries on a connection error. redis-py's default (three,
            with backoff of seconds) would make a test against a stopped server slow.
        """
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
        )

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
