"""Resolve the emulator's tenant host names in this process.

A multitenant app's subscriber tenants are ``https://<subscriber>.localhost:<port>`` on the
emulator. ``*.localhost`` resolves to the loopback address on many systems (RFC 6761
reserves the name, and systemd-resolved answers it) but not on every one, so tests that
talk to subscriber tenants wrap themselves in :func:`resolve_tenant_hosts`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

_LOOPBACK = "127.0.0.1"
_lock = threading.Lock()


def _wanted(host: Any, suffix: str) -> bool:
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    return isinstance(name, str) and name.rstrip(".").lower().endswith(suffix)


@contextlib.contextmanager
def resolve_tenant_hosts(suffix: str = ".localhost") -> Iterator[None]:
    """Within the block, every host name ending in ``suffix`` resolves to 127.0.0.1 in this
    process, whatever the system resolver says; other names resolve as before.

    It wraps :func:`socket.getaddrinfo`, which ``requests`` (through urllib3) and the
    standard library use for every connection, and restores it on exit. Blocks may nest;
    other processes (gunicorn workers started by the test) are not affected.
    """
    suffix = suffix.lower()
    with _lock:
        original = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if _wanted(host, suffix):
                return original(_LOOPBACK, port, *args, **kwargs)
            return original(host, port, *args, **kwargs)

        socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        with _lock:
            socket.getaddrinfo = original
