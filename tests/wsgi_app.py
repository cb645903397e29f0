"""A host app for tests that run it in real processes (gunicorn, a second interpreter).

Configured the way a deployed app is: the binding from ``VCAP_SERVICES`` and everything
else from ``TESTAPP_``-prefixed environment variables (JSON values, Flask's
``from_prefixed_env``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask

from flask_ias_pkce import IASPKCE, current_token


def create_app() -> Flask:
    app = Flask("wsgi_test_app")
    app.config.from_prefixed_env("TESTAPP")
    ias = IASPKCE(app)

    @app.get("/api/me")
    def me() -> dict[str, Any]:
        return {
            "sub": current_token.claims["sub"],
            "from_cache": current_token.from_cache,
            "pid": os.getpid(),
        }

    @app.get("/health")
    @ias.exempt
    def health() -> dict[str, int]:
        return {"pid": os.getpid()}

    @app.get("/busy")
    @ias.exempt
    def busy() -> dict[str, int]:
        # Keeps a sync worker occupied, so concurrent calls find every worker that is up.
        time.sleep(0.2)
        return {"pid": os.getpid()}

    return app
