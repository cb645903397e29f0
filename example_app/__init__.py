"""An example app for flask-ias-pkce: a protected API that public (PKCE) clients of SAP
Identity Authentication call, with a public health check and a downstream call.

``python -m example_app`` runs the whole story against a local IAS emulator; see
:mod:`example_app.demo`. ``flask --app example_app run`` serves the app: with a service
binding as on SAP BTP, or, for development only, against an emulator it starts itself.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from .browser import public_client
from .views import api, ias, public

#: Settings that are text as they stand: never parsed as JSON (a secret of digits stays text).
_TEXT_SETTINGS = frozenset(
    {
        "IAS_PKCE_IAS_URL",
        "IAS_PKCE_CLIENT_ID",
        "IAS_PKCE_CLIENT_SECRET",
        "IAS_PKCE_CERTIFICATE",
        "IAS_PKCE_KEY",
        "IAS_PKCE_APP_TID",
        "IAS_PKCE_XSUAA_CLIENT_ID",
        "IAS_PKCE_BINDING_NAME",
        "IAS_PKCE_CACHE_SECRET",
        "IAS_PKCE_CACHE_TYPE",
        "IAS_PKCE_CACHE_REDIS_URL",
        "IAS_PKCE_USE_TOKEN",
        "IAS_PKCE_PROTECT",
        "IAS_PKCE_REALM",
        "EXAMPLE_IAS_URL",
        "EXAMPLE_PUBLIC_CLIENT_ID",
    }
)


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``IAS_PKCE_*`` and ``EXAMPLE_*`` settings from the environment, as on Cloud Foundry
    (``cf set-env``) or Kubernetes. JSON values (lists, numbers, ``true``) are parsed;
    anything else, such as a CA file path, stays text."""
    config: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith(("IAS_PKCE_", "EXAMPLE_")):
            continue
        value: Any = text
        if name not in _TEXT_SETTINGS:
            try:
                value = json.loads(text)
            except ValueError:
                value = text
        config[name] = value
    return config


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The example app; ``config`` adds to (and wins over) the environment's settings."""
    app = Flask(__name__)
    app.config.update(config_from_env(os.environ))
    app.config.update(config or {})
    if _development_without_binding(app.config, os.environ):
        _start_development_services(app)
    app.register_blueprint(public)
    app.register_blueprint(api)
    app.register_blueprint(public_client)
    ias.init_app(app)
    return app


def _binding_present(config: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    if config.get("IAS_PKCE_IAS_URL") or config.get("IAS_PKCE_CLIENT_ID"):
        return True
    if environ.get("SERVICE_BINDING_ROOT"):
        return True
    text = environ.get("VCAP_SERVICES")
    if not text:
        return False
    try:
        services = json.loads(text)
    except ValueError:
        return True  # broken, but meant as a binding: the library reports it
    if not isinstance(services, dict):
        return True
    return "identity" in services or any(
        isinstance(entry, dict) and entry.get("label") == "identity"
        for entries in services.values()
        if isinstance(entries, list)
        for entry in entries
    )


def _development_without_binding(config: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    # Only under the flask CLI and off any platform: a deployment that lost its binding
    # must fail at start-up, never quietly trust a local emulator.
    return (
        not _binding_present(config, environ)
        and environ.get("FLASK_RUN_FROM_CLI") == "true"
        and "VCAP_APPLICATION" not in environ
        and "KUBERNETES_SERVICE_HOST" not in environ
    )


def _start_development_services(app: Flask) -> None:
    from flask_ias_pkce.testing import IASEmulator
    from flask_ias_pkce.testing.emulator import DEFAULT_REDIRECT_URIS

    from . import downstream
    from .demo import demo_environment

    # The browser page at /app/ calls IAS from Flask's development origins, and signs in
    # with itself as the redirect URI.
    origins = ("http://127.0.0.1:5000", "http://localhost:5000")
    emulator = IASEmulator(
        allowed_origins=origins,
        redirect_uris=(*DEFAULT_REDIRECT_URIS, *(f"{origin}/app/" for origin in origins)),
    ).start()
    atexit.register(emulator.stop)
    server = downstream.serve(downstream.for_emulator(emulator))
    atexit.register(server.shutdown)
    environment = demo_environment(emulator, f"http://127.0.0.1:{server.server_port}")
    # Into os.environ as well: the extension reads VCAP_SERVICES from there, and the
    # reloader's child process inherits it (and then sees a binding: no second emulator).
    os.environ.update(environment)
    app.config.update(config_from_env(environment))
    app.extensions["example_app_development"] = (emulator, server)
    app.logger.warning(
        "\n%s\nDEVELOPMENT ONLY: no IAS binding was found, so example_app started a local "
        "IAS emulator at %s\n(one IAS application, client id %r, PKCE S256; CA file %s) and "
        "a downstream service at http://127.0.0.1:%d.\nTokens of this emulator are worthless "
        "anywhere else. Bind an identity service (VCAP_SERVICES, SERVICE_BINDING_ROOT or "
        "IAS_PKCE_IAS_URL) for real use.\n%s",
        "!" * 78,
        emulator.url,
        emulator.client_id,
        emulator.ca_file,
        server.server_port,
        "!" * 78,
    )
