"""What a view sees: the request's :class:`TokenContext`, through ``current_token``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flask import g
from werkzeug.local import LocalProxy

from .constants import G_ATTRIBUTE
from .verify import unverified_claims

if TYPE_CHECKING:
    from .cache import Entry


class TokenContext:
    """The token of the current request, after every check passed.

    :ivar token: the token for downstream, XSUAA-aware calls: the exchanged (private) JWT,
        or the public token itself when it already carried the XSUAA client id.
    :ivar from_cache: whether this request was served without an exchange.
    :ivar passthrough: whether the public token was used as it is.
    :ivar claims: the claims of :attr:`token`, verified when it was obtained (read-only).

    ``repr()`` never shows a token.
    """

    __slots__ = (
        "_public_token",
        "_xsuaa",
        "claims",
        "from_cache",
        "passthrough",
        "token",
    )

    def __init__(
        self,
        entry: Entry,
        *,
        public_token: str,
        from_cache: bool,
        xsuaa: Callable[[TokenContext], str] | None = None,
    ) -> None:
        self.token = entry.token
        # An attribute, not a property: views read it several times per request. The
        # entry decodes its claims once, for every request it serves.
        self.claims: Mapping[str, Any] = entry.claims
        self.passthrough = entry.passthrough
        self._public_token = public_token
        self.from_cache = from_cache
        self._xsuaa = xsuaa

    @property
    def public_claims(self) -> dict[str, Any]:
        """The claims of the public token the client sent (verified before its exchange)."""
        return unverified_claims(self._public_token)

    @property
    def expires_at(self) -> float:
        """When :attr:`token` expires (``exp``, seconds since the epoch)."""
        return float(self.claims["exp"])

    def xsuaa_token(self) -> str:
        """Exchange :attr:`token` for an XSUAA token (the optional second hop; cached)."""
        if self._xsuaa is None:
            raise RuntimeError("No XSUAA binding is configured for the second hop")
        return self._xsuaa(self)

    def __repr__(self) -> str:
        subject = self.claims.get("sub")
        return (
            f"<TokenContext sub={subject!r} expires_at={self.expires_at:.0f} "
            f"from_cache={self.from_cache} passthrough={self.passthrough}>"
        )


#: The object behind ``flask.g``, resolved in one step: ``g.get(...)`` resolves the proxy
#: for the attribute lookup and calls a method of Flask's besides. ``current_token`` is
#: read several times per request, so each step counts.
resolve_g: Callable[[], Any] = g._get_current_object


def _current() -> TokenContext | None:
    context: TokenContext | None = getattr(resolve_g(), G_ATTRIBUTE, None)
    return context


if TYPE_CHECKING:
    current_token: TokenContext
else:
    #: The request's :class:`TokenContext`; falsy (``None``) on an exempt endpoint, or on
    #: an ``optional`` one that was called without a token.
    current_token = LocalProxy(_current)
