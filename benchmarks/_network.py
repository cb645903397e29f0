"""A network with a round-trip time, on loopback only: the IAS emulator as if it were far.

Real IAS is 10 to 100 ms away; on loopback every exchange is nearly free of network time,
which hides what a new connection per exchange costs. :class:`DelayProxy` puts that time
back: a TCP proxy on loopback in front of the emulator that delays every byte by half the
round-trip time in each direction, and holds the first bytes of a connection for one more
round trip, as the TCP handshake would (``connect`` through the proxy returns at once).
Only IAS is far: Redis and the app's clients stay on plain loopback.

The kernel's way would be a network namespace of the benchmark's own whose loopback has a
``tc netem`` delay (root and the ``sch_netem`` qdisc needed). :func:`netem_refusal` probes
for it and the report names the result; the machines this project runs on have no netem
in their kernel, so the section runs on the proxy there, and a netem variant is not built.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Self

from flask_ias_pkce.testing import IASEmulator

_CHUNK = 65536


def netem_refusal() -> str | None:
    """``None`` if a namespace with a netem delay can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    ip, tc = shutil.which("ip"), shutil.which("tc")
    if ip is None or tc is None:
        return "iproute2 not installed"
    namespace = f"iaspkce-probe-{uuid.uuid4().hex[:8]}"
    if subprocess.run([ip, "netns", "add", namespace], capture_output=True, check=False).returncode:
        return "cannot create a network namespace"
    try:
        probe = subprocess.run(
            [ip, "netns", "exec", namespace, tc, "qdisc", "add", "dev", "lo", "root", "netem",
             "delay", "1ms"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
    finally:
        subprocess.run([ip, "netns", "delete", namespace], capture_output=True, check=False)
    if probe.returncode:
        return "this kernel has no netem qdisc (sch_netem)"
    return None


class _Pipe:
    """One direction of a proxied connection: bytes read now are written ``delay`` later."""

    def __init__(
        self, source: socket.socket, target: socket.socket, delay: float, done: Callable[[], None]
    ) -> None:
        self._source, self._target, self._delay, self._done = source, target, delay, done
        self._queue: list[tuple[float, int, bytes | None]] = []
        self._ready = threading.Condition()
        self._sequence = 0
        self.hold_until = 0.0  # nothing is delivered before this (the TCP handshake)

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _put(self, data: bytes | None) -> None:
        due = max(time.monotonic(), self.hold_until) + self._delay
        with self._ready:
            self._sequence += 1
            heapq.heappush(self._queue, (due, self._sequence, data))
            self._ready.notify()

    def _read(self) -> None:
        try:
            while data := self._source.recv(_CHUNK):
                self._put(data)
        except OSError:
            pass
        self._put(None)

    def _write(self) -> None:
        try:
            self._deliver()
        finally:
            self._done()

    def _deliver(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                due, _, data = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._ready.wait(wait)
                    continue
                heapq.heappop(self._queue)
            try:
                if data is None:
                    self._target.shutdown(socket.SHUT_WR)
                    return
                self._target.sendall(data)
            except OSError:
                with contextlib.suppress(OSError):
                    self._source.shutdown(socket.SHUT_RDWR)
                return


class DelayProxy:
    """A TCP proxy on ``127.0.0.1`` that forwards to ``127.0.0.1:<target_port>`` with a
    round-trip time of ``rtt`` seconds (half of it each way, plus one round trip before a
    new connection's first bytes, as TCP's handshake costs)."""

    def __init__(self, target_port: int, rtt: float) -> None:
        self._target_port = target_port
        self.rtt = rtt
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self.port = int(self._listener.getsockname()[1])
        self._open: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()

    def start(self) -> Self:
        threading.Thread(target=self._accept, daemon=True, name="delay-proxy").start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            accepted = time.monotonic()
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target_port))
            except OSError:
                client.close()
                continue
            for end in (client, upstream):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._open.add(pair)
            done = self._closer(pair)
            outbound = _Pipe(client, upstream, self.rtt / 2, done)
            outbound.hold_until = accepted + self.rtt
            outbound.start()
            _Pipe(upstream, client, self.rtt / 2, done).start()

    def _closer(self, pair: tuple[socket.socket, socket.socket]) -> Callable[[], None]:
        """Close both ends once both directions have delivered their last byte."""
        remaining = [2]

        def done() -> None:
            with self._lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
                self._open.discard(pair)
            for end in pair:
                end.close()

        return done

    def stop(self) -> None:
        """Stop accepting and close every proxied connection."""
        self._listener.close()
        with self._lock:
            pairs, self._open = self._open, set()
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


class DistantIAS(IASEmulator):
    """The IAS emulator reached through a :class:`DelayProxy`: its URL, its issuer and
    every endpoint it announces name the proxy's port, so every call (discovery, JWKS,
    exchange) pays the round-trip time."""

    def __init__(self, *, rtt: float, **options: Any) -> None:
        super().__init__(**options)
        self.rtt = rtt
        self._proxy: DelayProxy | None = None

    def start(self) -> Self:
        super().start()
        self._proxy = DelayProxy(self._running().port, self.rtt).start()
        # The tenant names its issuer after the port it serves on; here that is the proxy's.
        self._tenant.issuer = f"https://localhost:{self._proxy.port}"
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        super().stop()

    @property
    def url(self) -> str:
        """``https://localhost:<proxy port>``."""
        if self._proxy is None:
            return super().url
        return f"https://localhost:{self._proxy.port}"
