"""Reading and checking ``app.config`` once, at ``init_app``.

A wrong value is a :class:`ConfigError` that names the key and says what it must be,
raised when the app starts, never at its first request.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .bindings import Bindings
from .constants import (
    CACHE_BACKEND_DEFAULTS,
    CONFIG_DEFAULTS,
    PROTECT_MODES,
    USE_TOKEN_CHOICES,
)


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


class UnknownConfigKeyWarning(UserWarning):
    """An ``IAS_PKCE_*`` key of ``app.config`` that the extension does not read (most
    likely misspelt); the message names the closest known key."""


@dataclass(frozen=True)
class CacheSettings:
    """The token cache's own settings."""

    #: The ``CACHE_*`` configuration of the extension's own Flask-Caching backend: every
    #: ``IAS_PKCE_CACHE_<name>`` as ``CACHE_<name>``, over a default for every key that
    #: Flask-Caching and our backends read (so none of the host's ``CACHE_*`` gets in).
    backend_config: Mapping[str, Any]
    #: ``IAS_PKCE_CACHE_SECRET``: names entries and seals their values; ``None``: random.
    secret: str | bytes | None


@dataclass(frozen=True)
class Settings:
    """The extension's checked settings for one app."""

    enabled: bool
    protect: str
    realm: str
    leeway: int
    min_remaining: int
    resources: tuple[str, ...]
    max_token_bytes: int
    use_token: str
    passthrough: bool
    accepted_audiences: frozenset[str]
    xsuaa_client_id: str
    verify: bool | str
    timeout: tuple[float, float]
    retries: int
    negative_ttl: int
    l1_size: int
    cache: CacheSettings
    bindings: Bindings
    #: The ``app_tid`` values whose tokens are accepted; ``None``: any tenant's.
    tenants: frozenset[str] | None = None

    def cache_scope(self) -> str:
        """A short name of the settings that decide whether a token is accepted and which
        token an entry holds: part of every cache key, so that apps (or versions of one
        app) with other settings never serve each other's entries from a shared cache.

        It names every IAS binding in routing order: a token is routed to one binding by
        its ``aud`` alone, so under one scope a token's entry is always that binding's,
        and the cache hit needs no routing.
        """
        xsuaa = self.bindings.xsuaa
        material = json.dumps(
            [
                [
                    [identity.client_id, sorted(identity.domains), identity.url]
                    for identity in self.bindings.identities
                ],
                sorted(self.accepted_audiences),
                sorted(self.tenants) if self.tenants is not None else None,
                self.xsuaa_client_id,
                xsuaa.client_id if xsuaa is not None else None,
                self.use_token,
                self.passthrough,
                # A token exchanged for other resources is another token.
                sorted(self.resources),
            ]
        )
        return hashlib.sha256(material.encode()).hexdigest()[:12]


def _choice(config: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = config[key]
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}")
    return str(value)


def _integer(config: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} must be a whole number from {low} to {high}")
    return value


def _flag(config: Mapping[str, Any], key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be True or False")
    return value


def _timeout(config: Mapping[str, Any]) -> tuple[float, float]:
    value = config["IAS_PKCE_TIMEOUT"]
    pair = (value, value) if isinstance(value, int | float) else value
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        or not all(0 < v <= 120 for v in pair)
    ):
        raise ConfigError(
            "IAS_PKCE_TIMEOUT must be seconds, or a (connect, read) pair, each in (0, 120]"
        )
    return float(pair[0]), float(pair[1])


def _verify(config: Mapping[str, Any]) -> bool | str:
    value = config["IAS_PKCE_VERIFY"]
    if value is True:
        return True
    if isinstance(value, str | os.PathLike) and os.path.exists(value):
        return os.fspath(value)
    # False is refused on purpose: without TLS verification, whoever sits between us and
    # IAS receives every user's token.
    raise ConfigError("IAS_PKCE_VERIFY must be True or the path of an existing CA bundle")


def _audiences(config: Mapping[str, Any], default: str) -> frozenset[str]:
    value = config["IAS_PKCE_ACCEPTED_AUDIENCES"]
    if value is None:
        return frozenset((default,))
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple | set | frozenset)
        or not items
        or not all(isinstance(item, str) and item for item in items)
    ):
        raise ConfigError("IAS_PKCE_ACCEPTED_AUDIENCES must be a client id or a list of them")
    return frozenset(items)


_RESOURCE = re.compile(r"urn:[\x21-\x7e]{1,250}")


def _resources(config: Mapping[str, Any]) -> tuple[str, ...]:
    value = config["IAS_PKCE_RESOURCES"]
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(
        isinstance(item, str) and _RESOURCE.fullmatch(item) for item in items
    ):
        raise ConfigError(
            "IAS_PKCE_RESOURCES must be a resource URN (urn:..., no spaces) or a list of them"
        )
    return tuple(dict.fromkeys(items))


def _tenants(config: Mapping[str, Any]) -> frozenset[str] | None:
    value = config["IAS_PKCE_TENANTS"]
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset) or not all(
        isinstance(item, str) and item for item in items
    ):
        raise ConfigError("IAS_PKCE_TENANTS must be an app_tid or a list of them")
    return frozenset(items)


def is_enabled(config: Mapping[str, Any]) -> bool:
    """``IAS_PKCE_ENABLED``, checked: read before anything else, as off means that no
    binding is looked up."""
    return _flag({"IAS_PKCE_ENABLED": config.get("IAS_PKCE_ENABLED", True)}, "IAS_PKCE_ENABLED")


def foreign_audiences(settings: Settings) -> list[str]:
    """The accepted audiences other than the binding's client id, sorted.

    IAS exchanges a token only for an application whose client id is in the token's
    ``aud`` (SAP's documentation of the jwt-bearer grant), and it adds no other
    application's id to the tokens of a public client: a token that carries only such an
    id passes our local checks and is then refused by IAS with ``invalid_grant``.
    """
    return sorted(settings.accepted_audiences - {settings.bindings.identity.client_id})


def foreign_audiences_warning(settings: Settings) -> str | None:
    """What ``init_app`` logs and ``flask ias-pkce check`` prints about
    :func:`foreign_audiences`; ``None`` when there are none."""
    foreign = foreign_audiences(settings)
    if not foreign:
        return None
    own = settings.bindings.identity.client_id
    return (
        f"IAS_PKCE_ACCEPTED_AUDIENCES holds {', '.join(map(repr, foreign))}, not the "
        f"binding's client id {own!r}: IAS refuses to exchange such tokens unless they also "
        f"carry {own!r}; make the mobile app and this backend one IAS application"
    )


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our keys of ``config``, with the defaults filled in."""
    return {key: config.get(key, default) for key, default in CONFIG_DEFAULTS.items()}


def _cache_settings(config: Mapping[str, Any]) -> CacheSettings:
    backend_config = dict(CACHE_BACKEND_DEFAULTS)
    for key, value in config.items():
        if key.startswith("IAS_PKCE_CACHE_") and key != "IAS_PKCE_CACHE_SECRET":
            backend_config[key.removeprefix("IAS_PKCE_")] = value
    secret = config.get("IAS_PKCE_CACHE_SECRET")
    if secret is not None and not isinstance(secret, str | bytes):
        raise ConfigError("IAS_PKCE_CACHE_SECRET must be text or bytes")
    return CacheSettings(backend_config, secret)


def warn_unknown_keys(config: Mapping[str, Any]) -> None:
    """Warn about ``IAS_PKCE_*`` keys that nothing reads: a misspelt key would otherwise
    leave its default in force without a word."""
    known = {*CONFIG_DEFAULTS, *(f"IAS_PKCE_{key}" for key in CACHE_BACKEND_DEFAULTS)}
    # Compared without the common prefix, which would make every key look alike.
    suffixes = {key.removeprefix("IAS_PKCE_"): key for key in known}
    for key in sorted(config):
        if not key.startswith("IAS_PKCE_") or key in known:
            continue
        closest = difflib.get_close_matches(key.removeprefix("IAS_PKCE_"), suffixes, n=1)
        hint = f"did you mean {suffixes[closest[0]]}?" if closest else "no known key is close"
        warnings.warn(
            f"flask-ias-pkce reads no config key {key}: {hint} (its value is ignored)",
            UnknownConfigKeyWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package
    (``IASPKCE(app)`` or ``init_app``, whichever the host app called)."""
    package = os.path.dirname(__file__)
    frame = sys._getframe(1)  # the function that warns
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level


def load_settings(config: Mapping[str, Any], bindings: Bindings) -> Settings:
    """Check every ``IAS_PKCE_*`` key and return the :class:`Settings`."""
    values = with_defaults(config)
    if len(bindings.identities) > 1 and values["IAS_PKCE_ACCEPTED_AUDIENCES"] is not None:
        # Tokens are routed by the binding's client id in their aud, the only audience IAS
        # exchanges a token for; another accepted audience could route nowhere.
        raise ConfigError(
            "IAS_PKCE_ACCEPTED_AUDIENCES applies to one IAS binding; with several, each "
            "accepts the tokens whose aud holds its client id"
        )
    realm = values["IAS_PKCE_REALM"]
    if not isinstance(realm, str) or not realm.isprintable() or '"' in realm or "\\" in realm:
        raise ConfigError("IAS_PKCE_REALM must be printable text without quotes")
    return Settings(
        enabled=_flag(values, "IAS_PKCE_ENABLED"),
        protect=_choice(values, "IAS_PKCE_PROTECT", PROTECT_MODES),
        realm=realm,
        leeway=_integer(values, "IAS_PKCE_LEEWAY", 0, 300),
        min_remaining=_integer(values, "IAS_PKCE_MIN_REMAINING", 0, 3600),
        resources=_resources(values),
        max_token_bytes=_integer(values, "IAS_PKCE_MAX_TOKEN_BYTES", 256, 65536),
        use_token=_choice(values, "IAS_PKCE_USE_TOKEN", USE_TOKEN_CHOICES),
        passthrough=_flag(values, "IAS_PKCE_PASSTHROUGH"),
        accepted_audiences=_audiences(values, bindings.identity.client_id),
        xsuaa_client_id=bindings.xsuaa_client_id,
        verify=_verify(values),
        timeout=_timeout(values),
        retries=_integer(values, "IAS_PKCE_RETRIES", 0, 5),
        negative_ttl=_integer(values, "IAS_PKCE_NEGATIVE_TTL", 1, 3600),
        l1_size=_integer(values, "IAS_PKCE_L1_SIZE", 0, 1_000_000),
        cache=_cache_settings(config),
        bindings=bindings,
        tenants=_tenants(values),
    )
