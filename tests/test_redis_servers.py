"""The Redis test helpers themselves: what they refuse and the states they report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flask_ias_pkce.testing import redis_server
from flask_ias_pkce.testing.redis_server import (
    RedisClusterServer,
    RedisServer,
    RedisServerNotFoundError,
)


def test_a_server_reports_its_state_and_refuses_what_it_cannot_do() -> None:
    server = RedisServer()
    with pytest.raises(RuntimeError, match="has not been started"):
        server.port  # noqa: B018
    with pytest.raises(RuntimeError, match="does not speak TLS"):
        server.tls  # noqa: B018
    assert server.log == ""
    with server:
        assert server.url.startswith("redis://127.0.0.1:")
        assert "Ready to accept connections" in server.log
        server.kill()
        assert not server.running
        with pytest.raises(RuntimeError, match="not running"):
            server.pause()
        server.start()
        assert server.client().ping()


def test_a_cluster_needs_three_masters() -> None:
    with pytest.raises(ValueError, match="at least 3 masters"):
        RedisClusterServer(masters=2)


def test_missing_redis_cli_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    server = shutil.which("redis-server")
    assert server is not None
    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(Path, "is_file", lambda self: False)
    with pytest.raises(RedisServerNotFoundError, match="apt-get install redis-tools"):
        redis_server._find_cli(server)
