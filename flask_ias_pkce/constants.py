"""Names and defaults in one place: configuration keys, protocol strings and limits."""

from __future__ import annotations

import hashlib
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
    "IAS_PKCE_BINDINGS": None,
    "IAS_PKCE_XSUAA_BINDING_NAME": None,
    "IAS_PKCE_TENANTS": None,
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
    "IAS_PKCE_MIN_REMAINING": 60,
    "IAS_PKCE_RESOURCES": None,
    "IAS_PKCE_VERIFY": True,
    "IAS_PKCE_TIMEOUT": (3.05, 10.0),
    "IAS_PKCE_RETRIES": 2,
    "IAS_PKCE_CACHE_TYPE": "SimpleCache",
    "IAS_PKCE_CACHE_REDIS_URL": None,
    "IAS_PKCE_CACHE_REDIS_CA": None,
    "IAS_PKCE_CACHE_REDIS_CERT": None,
    "IAS_PKCE_CACHE_REDIS_KEY": None,
    "IAS_PKCE_CACHE_REDIS_CLUSTER": None,
    "IAS_PKCE_CACHE_REDIS_SENTINELS": None,
    "IAS_PKCE_CACHE_REDIS_SENTINEL_MASTER": None,
    "IAS_PKCE_CACHE_REDIS_PASSWORD": None,
    "IAS_PKCE_CACHE_REDIS_SENTINEL_PASSWORD": None,
    "IAS_PKCE_CACHE_REDIS_SOCKET_TIMEOUT": 0.25,
    "IAS_PKCE_CACHE_REDIS_HEALTH_CHECK_INTERVAL": 10,
    "IAS_PKCE_CACHE_SECRET": None,
    "IAS_PKCE_PASSTHROUGH": True,
    "IAS_PKCE_MAX_TOKEN_BYTES": 8192,
    "IAS_PKCE_L1_SIZE": 1024,
    "IAS_PKCE_NEGATIVE_TTL": 30,
    "IAS_PKCE_REALM": "api",
}

#: What each configuration key means, in reStructuredText; the documentation's
#: configuration table is built from this and :data:`CONFIG_DEFAULTS` (a test checks that
#: every key has a description).
CONFIG_DOCS: Final[dict[str, str]] = {
    "IAS_PKCE_ENABLED": "``False`` turns the extension off: ``init_app`` looks up no "
    "binding, the hook lets every request through and ``current_token`` is empty (for "
    "tests of the host app).",
    "IAS_PKCE_PROTECT": '``"all"``: every endpoint needs a token unless it is exempt. '
    '``"marked"``: only blueprints passed to ``ias.protect()`` and views decorated with '
    "``@ias.required`` do.",
    "IAS_PKCE_BINDING_NAME": "Which ``identity`` service bindings to use: a name (or "
    "instance name) or a list of them, in the order tokens are routed to them. Default: "
    "every binding of the first source that has any, in the order found. Needed when one "
    "IAS application is bound twice. See :doc:`multitenancy`.",
    "IAS_PKCE_BINDINGS": "Several IAS bindings given explicitly: a list of dicts shaped "
    "like the binding credentials (``clientid``, ``certificate`` and ``key`` or "
    "``clientsecret``, ``url``, ``domains``, ``app_tid``, ``credential-type``), each with "
    "a ``name``. Used before ``VCAP_SERVICES`` and ``$SERVICE_BINDING_ROOT``.",
    "IAS_PKCE_XSUAA_BINDING_NAME": "Which ``xsuaa`` binding gives the XSUAA client id and "
    "the second hop when several are bound. Default: the only one, else the one of plan "
    "``broker``, else the one of plan ``application``; else ``init_app`` fails naming them.",
    "IAS_PKCE_TENANTS": "Allow-list of tenant ids (``app_tid``, a string or a list): a "
    "token of any other tenant is refused with 401 ``invalid_token`` (reason "
    "``tenant_not_allowed``) before any call to IAS. Default: every tenant.",
    "IAS_PKCE_IAS_URL": "The IAS tenant's URL. Setting it (or ``IAS_PKCE_CLIENT_ID``) makes "
    "the configuration the binding: service bindings are then not read for IAS.",
    "IAS_PKCE_CLIENT_ID": "The client id of the app's own IAS application, the one that "
    "exchanges tokens.",
    "IAS_PKCE_CLIENT_SECRET": "Its client secret, when it authenticates by secret rather "
    "than by certificate. Overrides the binding's ``clientsecret``.",
    "IAS_PKCE_CERTIFICATE": "Its X.509 client certificate (PEM text or the path of a PEM "
    "file) for mTLS. With ``IAS_PKCE_KEY`` it selects mTLS whatever the binding says.",
    "IAS_PKCE_KEY": "The private key of that certificate (PEM text or a file path). Loaded "
    "into memory once; never logged.",
    "IAS_PKCE_DOMAINS": "Trusted IAS domains: a token's issuer must be one of them or one "
    "label below (its tenant). Default: the binding's ``domains``, else the URL's host.",
    "IAS_PKCE_APP_TID": "The IAS tenant id sent as ``app_tid`` with exchanges of the "
    "binding's own tenant's tokens when they carry none (never for a subscriber's token). "
    "Default: the binding's ``app_tid``.",
    "IAS_PKCE_XSUAA_CLIENT_ID": "The XSUAA client id the exchanged token's ``aud`` must "
    "hold. Default: the ``clientid`` of the bound ``xsuaa`` service.",
    "IAS_PKCE_ACCEPTED_AUDIENCES": "Client ids (a string or a list) a token's ``aud`` must "
    "hold one of. Default: the binding's client id, the only one IAS exchanges tokens for: "
    "the mobile app signs in with it (one IAS application). Any other id is logged as a "
    "warning at ``init_app``. With several IAS bindings it cannot be set: each binding "
    "accepts its own client id.",
    "IAS_PKCE_USE_TOKEN": "Which token of the exchange answer is used downstream: "
    '``"id_token"`` or ``"access_token"``.',
    "IAS_PKCE_LEEWAY": "Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat`` "
    "(0 to 300). How long before its expiry a cached token stops being served is "
    "``IAS_PKCE_MIN_REMAINING``.",
    "IAS_PKCE_MIN_REMAINING": "Seconds (0 to 3600) an exchanged token (and an XSUAA token) "
    "must still be valid to be served from the cache; a token closer to its expiry is "
    "exchanged again. Separate from the clock leeway.",
    "IAS_PKCE_RESOURCES": "Resource URNs (a string or a list, each ``urn:...``) sent as "
    "``resource=`` with every exchange, for IAS application dependencies such as "
    "``urn:sap:identity:application:provider:name:<name>``. Part of the cache scope.",
    "IAS_PKCE_VERIFY": "TLS verification of IAS: ``True`` (the system's CA bundle) or the "
    "path of a CA bundle. ``False`` is refused. Passed per request, so "
    "``REQUESTS_CA_BUNDLE`` cannot override it.",
    "IAS_PKCE_TIMEOUT": "Seconds to connect to IAS and to wait for its answer: one number "
    "or a ``(connect, read)`` pair, each in (0, 120].",
    "IAS_PKCE_RETRIES": "Retries (0 to 5) of a call to IAS on 408, 429, 5xx and connection "
    "errors, with exponential backoff.",
    "IAS_PKCE_CACHE_TYPE": 'The token cache\'s Flask-Caching backend. ``"RedisCache"`` '
    "selects flask-ias-pkce's own Redis backend, which never unpickles; Flask-Caching's "
    "pickling Redis backends are refused. Other ``IAS_PKCE_CACHE_*`` keys are passed on "
    "as ``CACHE_*``; the host app's ``CACHE_*`` keys are never read.",
    "IAS_PKCE_CACHE_REDIS_URL": "The Redis URL for ``RedisCache``: ``redis://`` or "
    "``rediss://`` (TLS, the server's certificate and host name always verified; TLS "
    "settings in the URL such as ``ssl_cert_reqs`` are refused). Default: the bound "
    "``redis-cache`` service.",
    "IAS_PKCE_CACHE_REDIS_CA": "Path of a CA bundle that signs the Redis server's "
    "certificate (a private CA), instead of the system's. Needs ``rediss://``.",
    "IAS_PKCE_CACHE_REDIS_CERT": "Path of a client certificate (PEM) for a Redis that asks "
    "for one (``tls-auth-clients``).",
    "IAS_PKCE_CACHE_REDIS_KEY": "Path of that certificate's private key (PEM), unless the "
    "certificate file holds it.",
    "IAS_PKCE_CACHE_REDIS_CLUSTER": "``True``: the URL names a node of a Redis Cluster; "
    "redis-py's cluster client follows ``MOVED``/``ASK`` and failovers, and an entry and "
    "its lock share a hash slot. Default: the ``redis-cache`` binding's ``cluster_mode``.",
    "IAS_PKCE_CACHE_REDIS_SENTINELS": "Redis Sentinels (a list of ``host:port``) that "
    "name the master; a failover is followed without a restart. Replaces the URL.",
    "IAS_PKCE_CACHE_REDIS_SENTINEL_MASTER": "The service name the Sentinels monitor the "
    "master under (``sentinel monitor <name> ...``); required with Sentinels.",
    "IAS_PKCE_CACHE_REDIS_PASSWORD": "The Redis password, when the URL has none (always "
    "with Sentinels).",
    "IAS_PKCE_CACHE_REDIS_SENTINEL_PASSWORD": "The Sentinels' own password, if they require one.",
    "IAS_PKCE_CACHE_REDIS_SOCKET_TIMEOUT": "Seconds a Redis call may take (connecting "
    "included) before it counts as a miss; keeps an outage or a failover from slowing "
    "requests down.",
    "IAS_PKCE_CACHE_REDIS_HEALTH_CHECK_INTERVAL": "Seconds after which an idle pooled Redis "
    "connection is checked with a PING before use.",
    "IAS_PKCE_CACHE_SECRET": "Key of the keyed BLAKE2b that names cache entries and of the AES-GCM "
    "sealing of their values. Random per process by default; required, and the same in "
    "every process, when the cache is shared.",
    "IAS_PKCE_PASSTHROUGH": "Use a token that already carries the XSUAA client id as it is, "
    "without an exchange (it still passes every local check).",
    "IAS_PKCE_MAX_TOKEN_BYTES": "Longer ``Authorization`` values are refused with 400 "
    "before any parsing (256 to 65536).",
    "IAS_PKCE_L1_SIZE": "Entries of the in-process cache tier in front of the backend; 0 "
    "turns it off.",
    "IAS_PKCE_NEGATIVE_TTL": "Seconds (1 to 3600) an ``invalid_grant`` answer of IAS is "
    "remembered, so a refused token is not sent to IAS again.",
    "IAS_PKCE_REALM": "The ``realm`` of the ``WWW-Authenticate`` challenge.",
}

#: Every ``CACHE_*`` key that Flask-Caching and the token cache's backends (SimpleCache,
#: NullCache, SafeRedisCache) read, with the value of the extension's own cache unless
#: ``IAS_PKCE_CACHE_<name>`` says otherwise. Flask-Caching starts from a copy of the host's
#: ``app.config``: setting every key it and our backends read keeps the host's ``CACHE_*``
#: (``CACHE_REDIS_SOCKET_TIMEOUT``, ``CACHE_KEY_PREFIX``, ...) out of our cache. A test
#: checks that no backend reads a key outside this mapping.
CACHE_BACKEND_DEFAULTS: Final[dict[str, Any]] = {
    "CACHE_DEFAULT_TIMEOUT": 300,
    "CACHE_IGNORE_ERRORS": False,
    "CACHE_THRESHOLD": 10_000,
    "CACHE_KEY_PREFIX": "",
    "CACHE_OPTIONS": None,
    "CACHE_ARGS": [],
    "CACHE_NO_NULL_WARNING": True,
    "CACHE_SOURCE_CHECK": False,
    "CACHE_SERIALIZER": None,
    "CACHE_ENABLE_SIGNALS": False,
    "CACHE_HASH_METHOD": hashlib.sha256,
    "CACHE_DIR": None,
    "CACHE_FILE_HASH_METHOD": hashlib.sha256,
    "CACHE_MEMCACHED_SERVERS": None,
    # CACHE_TYPE and the Redis backend's keys, with the defaults of their IAS_PKCE_ keys.
    **{
        key.removeprefix("IAS_PKCE_"): value
        for key, value in CONFIG_DEFAULTS.items()
        if key.startswith("IAS_PKCE_CACHE_") and key != "IAS_PKCE_CACHE_SECRET"
    },
}

PROTECT_MODES: Final = ("all", "marked")
USE_TOKEN_CHOICES: Final = ("id_token", "access_token")

#: JWKS kept this long before it is fetched again (SAP's Python library: 15 minutes), when
#: the source sends no ``Cache-Control: max-age``.
JWKS_TTL_SECONDS: Final = 15 * 60
#: A ``max-age`` from the source is honoured within these bounds: not below (a source
#: saying ``max-age=0`` would be asked on every request), not above (a rotation with a
#: removed key must not go unnoticed for long).
JWKS_MIN_TTL_SECONDS: Final = 5 * 60
JWKS_MAX_TTL_SECONDS: Final = 60 * 60
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
#: The header that carries the correlation id on every call to IAS and XSUAA (the SAP Java
#: library's name; @sap/xssec sends ``x-vcap-request-id``).
CORRELATION_HEADER: Final = "X-Correlation-ID"
#: Incoming headers whose value, when it is a short token of safe characters, becomes the
#: correlation id of the calls made for that request; first found wins.
INCOMING_CORRELATION_HEADERS: Final = ("X-Correlation-ID", "X-Vcap-Request-Id")
#: The token endpoint found in an issuer's discovery document is kept this long.
DISCOVERY_TTL_SECONDS: Final = 60 * 60
#: Binding folders under ``$SERVICE_BINDING_ROOT`` are looked at this often for new
#: credentials (a change is in use within this, well inside 10 seconds).
BINDING_POLL_SECONDS: Final = 2.0
#: A re-read of the bindings after IAS refused our client is skipped when one took place
#: less than this ago: a flood of refusals reads the files once, not once per request.
REREAD_MIN_INTERVAL_SECONDS: Final = 1.0
#: ``Retry-After`` sent with a 503 when IAS cannot be reached.
RETRY_AFTER_SECONDS: Final = 5
