"""The emulator's transport: a threaded HTTPS server that tells its application who connected.

The TLS handshake runs in the connection's own thread (not in ``accept``), so a client that
fails it, or stalls in it, never blocks other clients.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: A client that connects and never completes the handshake gives up its thread after this.
_HANDSHAKE_TIMEOUT = 10.0
#: Idle keep-alive connections are closed after this, as real servers do.
_IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Request:
    """What the application needs to know about one HTTP request."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    client_cn: str | None  # subject CN of a client certificate the TLS layer verified
    connection_id: int
    client_certificate: bytes | None = None  # that certificate, DER


@dataclass
class Response:
    """The application's answer; ``drop`` closes the connection without one."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    #: Seconds between the bytes of the head after the status line (0: all at once).
    header_interval: float = 0.0


Application = Callable[[Request], Response]


def _common_name(peer: Any) -> str | None:
    # getpeercert() gives None without a certificate, else ((("commonName", cn),), ...)
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so benchmarks can tell reuse from handshakes
    timeout = _IDLE_TIMEOUT
    server: TLSServer

    def __init__(
        # connection_id has a default only to fit the handler-class signature TCPServer expects
        self,
        request: Any,
        client_address: Any,
        server: TLSServer,
        connection_id: int = 0,
    ) -> None:
        self.connection_id = connection_id
        super().__init__(request, client_address, server)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the emulator records calls instead, and a log line could carry a secret."""

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return
        if self.headers.get("Transfer-Encoding"):
            # No chunked bodies: IAS clients send form bodies with a length.
            self.send_error(411)
            return
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path,
            query=split.query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            client_cn=_common_name(self.connection.getpeercert()),
            connection_id=self.connection_id,
            client_certificate=self.connection.getpeercert(binary_form=True),
        )
        response = self.server.application(request)
        if response.drop:
            self.close_connection = True
            return
        self.send_response(response.status)
        if self.close_connection:
            # The client asked to close (or spoke HTTP/1.0): say so, as RFC 9112 9.6 asks,
            # so that it does not put the connection back into its pool.
            self.send_header("Connection", "close")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if response.header_interval > 0:
            self._send_head_slowly(response.header_interval)
        else:
            self.end_headers()
        self.wfile.write(response.body)

    def _send_head_slowly(self, interval: float) -> None:
        # The status line at once, then the headers a byte at a time: each byte comes well
        # within a client's read timeout, the whole head as late as the test likes.
        buffer: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]
        head = b"".join([*buffer, b"\r\n"])
        buffer.clear()
        status_line = head.index(b"\r\n") + 2
        self.wfile.write(head[:status_line])
        for index in range(status_line, len(head)):
            time.sleep(interval)
            self.wfile.write(head[index : index + 1])

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve  # noqa: N815 (stdlib names)


class TLSServer(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1, on a free port unless one is given; counts and tracks its
    connections."""

    daemon_threads = True
    # socketserver's backlog of 5 overflows under a burst of new connections (a test of
    # what happens without single flight); 128 is what production servers use.
    request_queue_size = 128

    def __init__(self, context: ssl.SSLContext, application: Application, port: int = 0) -> None:
        self.application = application
        self._context = context
        self._lock = threading.Lock()
        self._open: set[ssl.SSLSocket] = set()
        self.connections = 0
        super().__init__(("127.0.0.1", port), _RequestHandler)

    @property
    def port(self) -> int:
        """The port the OS chose."""
        return int(self.socket.getsockname()[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = self.port

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self.connections += 1
            connection_id = self.connections
        # An answer goes out as head and body in two sends; with Nagle's algorithm the body
        # would wait for the client's delayed ACK (about 40 ms per keep-alive call).
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request.settimeout(_HANDSHAKE_TIMEOUT)
        # wrap_socket takes over the descriptor and closes it itself if the handshake fails.
        tls = self._context.wrap_socket(request, server_side=True)
        with self._lock:
            self._open.add(tls)
        try:
            _RequestHandler(tls, client_address, self, connection_id)
        finally:
            with self._lock:
                self._open.discard(tls)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes (foreign CA, untrusting client) and hang-ups are what tests
        # provoke; only a bug in the emulator deserves a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Wake every handler thread blocked on an idle keep-alive connection so it ends."""
        with self._lock:
            open_sockets = list(self._open)
        for tls in open_sockets:
            # The plain socket's shutdown: SSLSocket.shutdown would drop its TLS state under
            # the feet of the thread still reading from it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(tls, socket.SHUT_RDWR)
