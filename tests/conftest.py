"""Shared fixtures: an app wired to the IAS emulator, a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisServer

from helpers import build_app


@pytest.fixture
def app(ias_emulator: IASEmulator) -> Flask:
    return build_app(ias_emulator)


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port; tests may stop() and start() it again."""
    with RedisServer() as server:
        yield server
