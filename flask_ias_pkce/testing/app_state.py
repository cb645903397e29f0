"""What a test may look at in an app that runs flask-ias-pkce, without reaching into
``app.extensions``: the token cache's backend and the key of a token's entry."""

from __future__ import annotations

from flask import Flask
from flask_caching.backends.base import BaseCache

from flask_ias_pkce.constants import EXTENSION_NAME
from flask_ias_pkce.extension import AppState


def _state(app: Flask) -> AppState:
    state: AppState | None = app.extensions.get(EXTENSION_NAME)
    if state is None:
        raise LookupError("flask-ias-pkce is not initialised (or is disabled) on this app")
    return state


def token_cache_backend(app: Flask) -> BaseCache:
    """The Flask-Caching backend that holds ``app``'s exchanged tokens: the extension's
    own (``IAS_PKCE_CACHE_*``) or the host's ``Cache`` passed to ``init_app``.

    :raises LookupError: flask-ias-pkce is not initialised on ``app``.
    """
    return _state(app).authenticator.cache.backend


def token_cache_key(app: Flask, public_token: str) -> str:
    """The key under which ``app``'s token cache keeps the entry of ``public_token`` (a MAC
    of the token, never the token): to look at, or plant, what a shared cache holds.

    :raises LookupError: flask-ias-pkce is not initialised on ``app``.
    """
    return _state(app).authenticator.cache.key(public_token)
