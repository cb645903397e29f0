"""Test helpers for apps that use flask-ias-pkce: a local IAS and pytest fixtures.

``IASEmulator`` runs a local SAP Identity Authentication tenant (and, if asked, subscriber
tenants) over real HTTPS and mTLS; ``resolve_tenant_hosts`` makes the subscriber tenants'
``*.localhost`` names resolve in this process; the pytest plugin (registered as
``ias_pkce``) offers the ``ias_emulator``, ``public_token`` and ``ias_tenant_hosts``
fixtures; ``token_cache_backend`` and ``token_cache_key`` show what the app's token cache
holds.
"""

from flask_ias_pkce.testing.app_state import token_cache_backend, token_cache_key
from flask_ias_pkce.testing.emulator import Call, IASEmulator
from flask_ias_pkce.testing.hosts import resolve_tenant_hosts

__all__ = ["Call", "IASEmulator", "resolve_tenant_hosts", "token_cache_backend", "token_cache_key"]
