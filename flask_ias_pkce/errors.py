"""Errors as HTTP answers, shaped by RFC 6750 section 3.

Every error is a :class:`werkzeug.exceptions.HTTPException`, so Flask turns it into a
response by itself, and also werkzeug's class of its status (``Unauthorized``,
``Forbidden``, ...), so that a host app can reshape it with ``app.errorhandler(401)`` as
with ``app.errorhandler(IASPKCEError)``. The
texts are fixed sentences chosen here: none of them ever holds any part of a token, a
claim value taken from a token, or an answer of IAS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

from werkzeug.exceptions import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayTimeout,
    HTTPException,
    ServiceUnavailable,
    Unauthorized,
)

__all__ = [
    "IASPKCEError",
    "IASRefused",
    "IASTimeout",
    "IASUnavailable",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "MissingToken",
]


def _quoted(value: str) -> str:
    # RFC 7235 quoted-string; our texts never hold quotes or backslashes, but stay safe.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class IASPKCEError(HTTPException):
    """Base of every error this extension answers with.

    ``error`` is the RFC 6750 (or RFC 6749) error code of the body and, for 400 and 401,
    of the ``WWW-Authenticate`` challenge. ``reason`` is a short, stable code for logs,
    metrics and signals; it says more than ``error`` but never anything secret.
    """

    code: int = 401
    error: ClassVar[str] = "unauthorized"
    #: Whether the answer carries the ``error`` in a ``WWW-Authenticate`` challenge.
    challenge_error: ClassVar[bool] = True

    def __init__(self, description: str, *, reason: str, realm: str = "api") -> None:
        super().__init__(description)
        self.reason = reason
        self.realm = realm

    def __copy__(self) -> IASPKCEError:
        # Waiters of a single-flight exchange each raise their own copy of its error.
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        return clone

    def __str__(self) -> str:
        return f"{self.code} {self.error} ({self.reason}): {self.description}"

    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` value, or ``None`` for errors that are not ours to challenge."""
        if self.code not in (400, 401):
            return None
        params = [f"realm={_quoted(self.realm)}"]
        if self.challenge_error:
            params.append(f"error={_quoted(self.error)}")
            params.append(f"error_description={_quoted(self.description or '')}")
        return "Bearer " + ", ".join(params)

    def get_body(self, environ: Any = None, scope: Any = None) -> str:
        return json.dumps({"error": self.error, "error_description": self.description})

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        challenge = self.challenge()
        if challenge is not None:
            headers.append(("WWW-Authenticate", challenge))
        headers.extend(self.extra_headers())
        return headers

    def extra_headers(self) -> Iterable[tuple[str, str]]:
        """Headers a subclass adds (``Retry-After``)."""
        return ()


class MissingToken(IASPKCEError, Unauthorized):
    """401 without an error code: the request carried no Bearer credentials at all
    (RFC 6750 section 3.1: "the resource server SHOULD NOT include an error code")."""

    code = 401
    error = "unauthorized"
    challenge_error = False


class InvalidRequest(IASPKCEError, BadRequest):
    """400 ``invalid_request``: the Authorization header is malformed."""

    code = 400
    error = "invalid_request"


class InvalidToken(IASPKCEError, Unauthorized):
    """401 ``invalid_token``: a well-formed credential that is not a valid token of ours."""

    code = 401
    error = "invalid_token"


class InsufficientScope(IASPKCEError, Forbidden):
    """403 ``insufficient_scope``: the token is valid, but does not hold the group or the
    scope the view needs (RFC 6750 section 3.1). The challenge names what was needed in
    its ``scope`` attribute, space-separated.

    :ivar needed: the names the failed rule asked for (groups, or XSUAA scopes with their
        ``<xsappname>.`` prefix).
    """

    code = 403
    error = "insufficient_scope"

    def __init__(
        self,
        description: str,
        *,
        reason: str,
        needed: tuple[str, ...] = (),
        realm: str = "api",
    ) -> None:
        super().__init__(description, reason=reason, realm=realm)
        self.needed = needed

    def challenge(self) -> str:
        params = [
            f"realm={_quoted(self.realm)}",
            f"error={_quoted(self.error)}",
            f"error_description={_quoted(self.description or '')}",
        ]
        if self.needed:
            params.append(f"scope={_quoted(' '.join(self.needed))}")
        return "Bearer " + ", ".join(params)


class IASRefused(IASPKCEError, BadGateway):
    """502: IAS refused our client or gave an answer we cannot use."""

    code = 502
    error = "bad_gateway"


class IASTimeout(IASPKCEError, GatewayTimeout):
    """504: IAS accepted the connection but did not answer in time."""

    code = 504
    error = "gateway_timeout"


class IASUnavailable(IASPKCEError, ServiceUnavailable):
    """503 with ``Retry-After``: IAS cannot be reached, or kept failing after retries."""

    code = 503
    error = "temporarily_unavailable"

    def __init__(
        self, description: str, *, reason: str, realm: str = "api", retry_after: int = 5
    ) -> None:
        super().__init__(description, reason=reason, realm=realm)
        self.retry_after = retry_after

    def extra_headers(self) -> Iterable[tuple[str, str]]:
        return (("Retry-After", str(self.retry_after)),)
