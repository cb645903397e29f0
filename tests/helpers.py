"""Helpers for the tests: an app wired to the IAS emulator, a clock tests move."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from flask_ias_pkce import IASPKCE, KeyLimits, current_token
from flask_ias_pkce.testing import IASEmulator


class FakeClock:
    """Seconds since the epoch that move only when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def emulator_config(ias: IASEmulator, **overrides: Any) -> dict[str, Any]:
    """``app.config`` that points the extension at ``ias`` explicitly (no VCAP_SERVICES)."""
    config = ias.app_config(
        # Faults answer fast in tests; the defaults are for production.
        IAS_PKCE_TIMEOUT=(2.0, 2.0),
    )
    config.update(overrides)
    return config


def build_app(
    ias: IASEmulator,
    *,
    clock: Callable[[], float] | None = None,
    key_limits: KeyLimits | None = None,
    **config: Any,
) -> Flask:
    """A small host app: ``/api/me`` protected, ``/health`` exempt."""
    app = Flask("host_app")
    app.config.update(emulator_config(ias, **config))
    options: dict[str, Any] = {"clock": clock} if clock else {}
    if key_limits is not None:
        options["key_limits"] = key_limits
    extension = IASPKCE(**options)

    @app.get("/api/me")
    def me() -> dict[str, Any]:
        return {
            "sub": current_token.claims["sub"],
            "aud": current_token.claims["aud"],
            "from_cache": current_token.from_cache,
            "passthrough": current_token.passthrough,
        }

    @app.get("/health")
    @extension.exempt
    def health() -> str:
        return "ok"

    extension.init_app(app)
    app.extensions["test_extension"] = extension
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
