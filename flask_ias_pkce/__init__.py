"""flask-ias-pkce: let public (PKCE) clients of SAP Identity Authentication call a Flask
app whose downstream code expects tokens with the XSUAA audience.

::

    from flask_ias_pkce import IASPKCE, current_token

    ias = IASPKCE(app)

    @app.get("/api/me")
    def me():
        return {"sub": current_token.claims["sub"]}
"""

from .bindings import BindingError
from .config import ConfigError, UnknownConfigKeyWarning
from .context import TokenContext, current_token
from .errors import (
    IASPKCEError,
    IASRefused,
    IASTimeout,
    IASUnavailable,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
)
from .extension import IASPKCE
from .keys import KeyLimits

__all__ = [
    "IASPKCE",
    "BindingError",
    "ConfigError",
    "IASPKCEError",
    "IASRefused",
    "IASTimeout",
    "IASUnavailable",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "KeyLimits",
    "MissingToken",
    "TokenContext",
    "UnknownConfigKeyWarning",
    "current_token",
]
__version__ = "0.1.0"
