"""Authorization rules: which groups (IAS) or scopes (XSUAA) a view needs, and what a
token holds. Knows nothing of Flask's request."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

GROUP: Final = "group"
SCOPE: Final = "scope"

# RFC 6749 section 3.3: the characters a scope-token may hold. A needed name outside it
# (an IAS group called "Sales Team", say) is still checked, but cannot be named in the
# space-separated ``scope`` attribute of the challenge.
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True)
class Requirement:
    """One rule: the token must hold one of ``names`` (all of them when ``every``).

    ``kind`` is :data:`GROUP` (the IAS token's ``groups`` claim) or :data:`SCOPE` (the
    XSUAA token's ``scope`` claim; ``names`` are then local, without the ``xsappname.``
    prefix, until :meth:`qualified` adds it).
    """

    kind: str
    names: tuple[str, ...]
    every: bool

    @classmethod
    def of(cls, kind: str, names: Iterable[object], every: bool) -> Requirement:
        """Check what a user passed to ``require_groups``/``require_scopes``/``protect``
        (``names`` a collection of names: a lone string is the caller's to wrap)."""
        listed = tuple(names)
        if not listed:
            raise ValueError(f"name at least one {kind}")
        for name in listed:
            if not isinstance(name, str) or not name:
                raise TypeError(f"each {kind} must be a non-empty string, not {name!r}")
        # Order kept for the challenge, duplicates dropped.
        return cls(kind, tuple(dict.fromkeys(cast("tuple[str, ...]", listed))), bool(every))

    def qualified(self, prefix: str) -> Requirement:
        """This rule with ``prefix`` (``"<xsappname>."``) before each name."""
        return Requirement(self.kind, tuple(prefix + name for name in self.names), self.every)

    def met_by(self, held: frozenset[str]) -> bool:
        """Whether a token holding ``held`` satisfies this rule."""
        if self.every:
            return held.issuperset(self.names)
        return not held.isdisjoint(self.names)

    @property
    def reason(self) -> str:
        """The refusal's reason code: ``missing_group`` or ``missing_scope``."""
        return f"missing_{self.kind}"

    def challenge_names(self) -> tuple[str, ...]:
        """The needed names that RFC 6750's ``scope`` attribute can carry."""
        return tuple(name for name in self.names if _SCOPE_TOKEN.fullmatch(name))


def claim_groups(claims: Mapping[str, Any]) -> frozenset[str]:
    """The ``groups`` claim: IAS sends one group as a string, several as a list of
    strings. Anything else (a number, an object, a list with a non-string) is no groups."""
    value = claims.get("groups")
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return frozenset()


def claim_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The ``scope`` claim of an XSUAA token: a list of strings (XSUAA), or one
    space-separated string (RFC 8693's form). Anything else is no scopes."""
    value = claims.get("scope")
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return frozenset()
