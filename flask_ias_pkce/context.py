"""What a view sees: the request's :class:`TokenContext`, through ``current_token``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flask import g
from werkzeug.local import LocalProxy

from .constants import G_ATTRIBUTE
from .verify import unverified_claims

if TYPE_CHECKING:
    from .cache import Entry
    from .xsuaa import XsuaaHop


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
        "_entry",
        "_public_token",
        "_xsuaa",
        "_xsuaa_entry",
        "claims",
        "from_cache",
        "passthrough",
        "token",
    )

    def __init__(
        self,
        entry: Entry,
        public_token: str,
        from_cache: bool,
        xsuaa: XsuaaHop | None = None,
    ) -> None:
        self._entry = entry
        self.token = entry.token
        # An attribute, not a property: views read it several times per request. The
        # entry decodes its claims once, for every request it serves.
        self.claims: Mapping[str, Any] = entry.claims
        self.passthrough = entry.passthrough
        self._public_token = public_token
        self.from_cache = from_cache
        self._xsuaa = xsuaa
        self._xsuaa_entry: Entry | None = None

    @property
    def public_claims(self) -> dict[str, Any]:
        """The claims of the public token the client sent (verified before its exchange)."""
        return unverified_claims(self._public_token)

    @property
    def expires_at(self) -> float:
        """When :attr:`token` expires (``exp``, seconds since the epoch)."""
        return float(self.claims["exp"])

    @property
    def groups(self) -> frozenset[str]:
        """The ``groups`` claim of :attr:`token`: IAS sends one group as a string and
        several as a list of strings; any other value counts as no groups."""
        return self._entry.groups

    def has_group(self, name: str) -> bool:
        """Whether the user is in the IAS group ``name`` (:attr:`groups`)."""
        return name in self._entry.groups

    def has_scope(self, name: str) -> bool:
        """Whether the XSUAA token of the second hop holds the local scope ``name``,
        written without the ``<xsappname>.`` prefix (as ``checkLocalScope`` of SAP's
        libraries takes it). Obtains the XSUAA token on first use, cached like
        :meth:`xsuaa_token`.

        :raises RuntimeError: no XSUAA binding, or one without ``xsappname``.
        """
        prefix = self._second_hop().scope_prefix
        if prefix is None:
            raise RuntimeError("The xsuaa binding names no xsappname: scopes cannot be compared")
        return prefix + name in self.xsuaa_scopes()

    def xsuaa_scopes(self) -> frozenset[str]:
        """The scopes of the XSUAA token as XSUAA writes them (``<xsappname>.Read``,
        ``openid``, ...); obtains the token on first use, cached like :meth:`xsuaa_token`."""
        return self._xsuaa_cache_entry().scopes

    def xsuaa_token(self) -> str:
        """Exchange :attr:`token` for an XSUAA token (the optional second hop; cached)."""
        return self._xsuaa_cache_entry().token

    def _second_hop(self) -> XsuaaHop:
        if self._xsuaa is None:
            raise RuntimeError("No XSUAA binding is configured for the second hop")
        return self._xsuaa

    def _xsuaa_cache_entry(self) -> Entry:
        # Once per request: later calls of the same request need no cache lookup.
        if self._xsuaa_entry is None:
            self._xsuaa_entry = self._second_hop().entry(self)
        return self._xsuaa_entry

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
    # Views read it several times per request: let the proxy call ``_current`` itself
    # rather than through werkzeug's wrapper for callables (two calls fewer per read).
    # ``_get_current_object`` is the proxy's documented way to the object; should a
    # werkzeug release keep it elsewhere, the proxy stays as werkzeug made it.
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(current_token, "_get_current_object", _current)
