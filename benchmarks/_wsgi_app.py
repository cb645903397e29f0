"""The app the HTTP benchmark runs under gunicorn, configured through the environment.

The binding comes from ``VCAP_SERVICES`` and every other setting from ``BENCHAPP_``-prefixed
variables (JSON values), as a deployed app would get them. ``/bare`` and ``/api/me`` are
the same view in the same app; ``/bare`` is exempt, so the only difference between them is
the work flask-ias-pkce does for a protected request.
"""

from __future__ import annotations

from flask import Flask, request

from flask_ias_pkce import IASPKCE, current_token


def create_app() -> Flask:
    """The benchmark app: ``/bare`` (exempt), ``/api/me`` (protected), ``/health``."""
    app = Flask("benchmark_app")
    app.config.from_prefixed_env("BENCHAPP")
    ias = IASPKCE(app)

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
