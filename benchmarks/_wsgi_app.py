"""The app the HTTP benchmark runs under gunicorn, configured through the environment.

The binding comes from ``VCAP_SERVICES`` and every other setting from ``BENCHAPP_``-prefixed
variables (JSON values), as a deployed app would get them. ``/bare`` and ``/api/me`` are
the same view in the same app; ``/bare`` is exempt, so the only difference between them is
the work flask-ias-pkce does for a protected request.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, request

from flask_ias_pkce import IASPKCE, current_token
from flask_ias_pkce.cache import Entry


def create_app() -> Flask:
    """The benchmark app: ``/bare`` (exempt), ``/api/me`` (protected), ``/health``."""
    app = Flask("benchmark_app")
    app.config.from_prefixed_env("BENCHAPP")
    ias = IASPKCE(app)
    if app.config.get("BENCHMARK_LIKE_THE_SAMPLE"):
        like_the_sample(app)

    @app.get("/bare")
    @ias.exempt
    def bare() -> str:
        # Reads the header as a protected view's framework work would, and answers the
        # same number of bytes as /api/me.
        return "someone" if request.headers.get("Authorization") else "nobody!"

    @app.get("/api/me")
    def me() -> str:
        return str(current_token.claims.get("sub"))[:7]

    @app.get("/health")
    @ias.exempt
    def health() -> str:
        return "ok"

    return app


def like_the_sample(app: Flask) -> None:
    """Make ``app`` exchange as the reference sample does, for comparison: no single flight
    (every cache miss exchanges, neither threads nor processes wait for one another) and a
    new connection, hence a new TCP and TLS handshake, for every call to IAS. Benchmarks
    only: by monkeypatching the running extension."""
    authenticator = app.extensions["ias_pkce"].authenticator

    def plain_compute(key: str, compute: Callable[[], Entry]) -> tuple[Entry, bool]:
        return compute(), True

    authenticator.cache.get_or_compute = plain_compute
    # The emulator closes a connection after answering a request that asks it to.
    authenticator.exchanger.session.headers["Connection"] = "close"
