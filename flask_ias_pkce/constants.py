"""Names and defaults in one place: configuration keys, protocol strings and limits."""

from __future__ import annotations

from typing import Any, Final

#: The extension's key in ``app.extensions``.
EXTENSION_NAME: Final = "ias_pkce"

#: The ``flask.g`` attribute that holds the request's :class:`~flask_ias_pkce.TokenContext`.
G_ATTRIBUTE: Final = "ias_pkce"

JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"

#: The only signature algorithm we accept (RFC 8725: pin the algorithm, never read it
#: from the token).
ALGORITHM: Final = "RS256"

#: Every configuration key with its default. ``None`` means "from the service binding" or
#: "not set". This mapping is the single source of truth for the documentation.
CONFIG_DEFAULTS: Final[dict[str, Any]] = {
    "IAS_PKCE_ENABLED": True,
    "IAS_PKCE_PROTECT": "all",
    "IAS_PKCE_BINDING_NAME": None,
    "IAS_PKCE_IAS_URL": None,
    "IAS_PKCE_CLIENT_ID": None,
    "IAS_PKCE_CLIENT_SECRET": None,
    "IAS_PKCE_CERTIFICATE": None,
    "IAS_PKCE_KEY": None,
    "IAS_PKCE_DOMAINS": None,
    "IAS_PKCE_APP_TID": None,
    "IAS_PKCE_XSUAA_CLIENT_ID": None,
    "IAS_PKCE_ACCEPTED_AUDIENCES": None,
    "IAS_PKCE_USE_TOKEN": "id_token",
    "IAS_PKCE_LEEWAY": 60,
    "IAS_PKCE_VERIFY": True,
    "IAS_PKCE_TIMEOUT": (3.05, 10.0),
    "IAS_PKCE_RETRIES": 2,
    "IAS_PKCE_CACHE_TYPE": "SimpleCache",
    "IAS_PKCE_CACHE_SECRET": None,
    "IAS_PKCE_PASSTHROUGH": True,
    "IAS_PKCE_MAX_TOKEN_BYTES": 8192,
    "IAS_PKCE_L1_SIZE": 1024,
    "IAS_PKCE_NEGATIVE_TTL": 30,
    "IAS_PKCE_REALM": "api",
}

PROTECT_MODES: Final = ("all", "marked")
USE_TOKEN_CHOICES: Final = ("id_token", "access_token")

#: JWKS kept this long before it is fetched again (SAP's Python library: 15 minutes).
JWKS_TTL_SECONDS: Final = 15 * 60
#: An unknown ``kid`` triggers a new JWKS fetch at most this often per issuer.
JWKS_REFETCH_INTERVAL_SECONDS: Final = 30.0
#: While an issuer has never served keys, a failed fetch is answered again for this long
#: instead of calling IAS for every request.
JWKS_FAILURE_BACKOFF_SECONDS: Final = 5.0
#: Exchanges retried on these statuses (and on connection errors).
RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
#: Backoff between retries: base * 2**attempt, capped, with jitter.
RETRY_BACKOFF_BASE_SECONDS: Final = 0.2
RETRY_BACKOFF_CAP_SECONDS: Final = 2.0
#: ``Retry-After`` sent with a 503 when IAS cannot be reached.
RETRY_AFTER_SECONDS: Final = 5
