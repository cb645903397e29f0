"""Test helpers for apps that use flask-ias-pkce: a local IAS and pytest fixtures.

``IASEmulator`` runs a local SAP Identity Authentication tenant over real HTTPS and mTLS;
the pytest plugin (registered as ``ias_pkce``) offers the ``ias_emulator`` and
``public_token`` fixtures.
"""

from flask_ias_pkce.testing.emulator import Call, IASEmulator

__all__ = ["Call", "IASEmulator"]
