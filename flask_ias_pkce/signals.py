"""Signals of the request hook, in flask-ias-pkce's own :mod:`blinker` namespace.

Each signal is sent with the Flask app as sender and keyword arguments only. None of
them ever carries a token (public or exchanged), a secret or a key: connect a receiver to
count, time or audit what the extension does without handling credentials::

    from flask_ias_pkce import signals

    @signals.token_rejected.connect_via(app)
    def count_refusal(sender, *, reason, status, duration, **extra):
        metrics.increment("ias_pkce.rejected", tags={"reason": reason})

Receivers run inside the request, before the view, so keep them fast; an exception in a
receiver propagates as it would from the view. Accept ``**extra`` in receivers: later
versions may send more keyword arguments.

``duration`` is always the seconds the extension spent on the request (bearer parsing,
cache, verification and any calls to IAS), measured with :func:`time.perf_counter`.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "cache_hit",
    "credentials_expiring",
    "exchange_failed",
    "token_exchanged",
    "token_rejected",
]

_signals = Namespace()

#: A token was obtained for this request: exchanged at IAS, or passed through because it
#: already carried the XSUAA client id. Sent once per exchange, by the request that made
#: it (requests that waited for it send :data:`cache_hit`).
#:
#: :param sender: the Flask app.
#: :param subject: the ``sub`` claim of the token now in use (verified).
#: :param issuer: ``https://host[:port]`` of the IAS tenant that issued it.
#: :param passthrough: ``True`` when no exchange took place.
#: :param duration: seconds spent on the request by the extension, the exchange included.
token_exchanged = _signals.signal("token-exchanged")

#: A request was served without an exchange of its own: from the cache, or by waiting for
#: a concurrent request's exchange of the same token.
#:
#: :param sender: the Flask app.
#: :param subject: the ``sub`` claim of the token in use (verified when it was obtained).
#: :param passthrough: whether the cached token is the public token itself.
#: :param duration: seconds spent on the request by the extension.
cache_hit = _signals.signal("cache-hit")

#: The request's credentials were refused (an answer of 400, 401 or 403): no token, a
#: malformed ``Authorization`` header, a token that failed a local check, one IAS
#: refused (``invalid_grant``, also when that refusal is remembered in the cache), or a
#: valid token without the group or scope the view needs (403 ``insufficient_scope``).
#:
#: :param sender: the Flask app.
#: :param reason: the stable reason code (:attr:`~flask_ias_pkce.IASPKCEError.reason`),
#:     such as ``missing_token``, ``expired``, ``signature``, ``ias_invalid_grant``,
#:     ``missing_group`` or ``missing_scope``.
#: :param error: the RFC 6750 error code of the answer (``invalid_token``, ...).
#: :param status: the HTTP status of the answer.
#: :param duration: seconds spent on the request by the extension.
token_rejected = _signals.signal("token-rejected")

#: IAS could not be used to authenticate the request (an answer of 502, 503 or 504):
#: discovery, JWKS or the exchange failed, timed out, or gave an unusable answer.
#:
#: :param sender: the Flask app.
#: :param reason: the stable reason code (:attr:`~flask_ias_pkce.IASPKCEError.reason`),
#:     such as ``exchange_unreachable``, ``exchange_timeout`` or
#:     ``exchange_refused_invalid_client``.
#: :param error: the error code of the JSON body (``temporarily_unavailable``, ...).
#: :param status: the HTTP status of the answer.
#: :param duration: seconds spent on the request by the extension, waits for IAS included.
exchange_failed = _signals.signal("exchange-failed")

#: The client certificate in use expires within 3 days: sent at ``init_app`` and whenever
#: credentials are loaded (a rotation, :meth:`~flask_ias_pkce.IASPKCE.reload_credentials`),
#: with the WARNING log line "... expires on <date> ...". The expiry is the earlier of the
#: certificate's own ``notAfter`` and the binding's ``certificate_expires_at``.
#: Not sent from a request: receivers run wherever the credentials were loaded (the
#: binding watcher's thread included).
#:
#: :param sender: the Flask app.
#: :param binding: where the binding was found (such as ``SERVICE_BINDING_ROOT/ias``).
#: :param expires_at: the expiry, seconds since the epoch.
#: :param remaining: seconds left until then (0 or less: expired).
credentials_expiring = _signals.signal("credentials-expiring")
