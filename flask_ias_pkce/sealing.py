"""Authenticated encryption of cache values and keyed names for cache keys.

Whatever we put into a shared cache (Redis) can be read by anyone who can read that cache,
and whatever we read back may have been written by someone else. So a cache value is
sealed with AES-256-GCM (confidential and authenticated), and a cache key is a keyed
BLAKE2b of the token (a MAC like an HMAC, with one hash pass instead of two nested ones),
so that neither a token nor a claim ever appears in clear in the cache.

Both keys are derived from one secret (``IAS_PKCE_CACHE_SECRET``) with HKDF, under
distinct labels, so that the key that names entries can never decrypt them.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_PREFIX", "KEY_VERSION", "MIN_SECRET_BYTES", "Sealer"]

#: Every cache key made by :meth:`Sealer.cache_key` starts with this.
KEY_PREFIX: Final = "iaspkce:"

#: How cache keys are derived, named in every key: the derivation is part of the cache
#: format, so processes sharing a cache must run the same version. One of another version
#: only misses (and exchanges for itself); it can never read an entry under a wrong name.
#: Version 1 (keys ``iaspkce:<purpose>:...``) was an HMAC-SHA256; version 2 is a keyed
#: BLAKE2b-256 under a key of its own.
KEY_VERSION: Final = "v2"

#: A shorter secret would make the MAC of a token guessable offline.
MIN_SECRET_BYTES: Final = 32

# The first byte of a sealed value: a later format can be told apart (and refused) rather
# than misread.
_VERSION: Final = b"\x01"
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_MIN_SEALED_BYTES: Final = len(_VERSION) + _NONCE_BYTES + _TAG_BYTES

_HKDF_SALT: Final = b"flask-ias-pkce cache"
_VALUE_KEY_INFO: Final = b"flask-ias-pkce/v1 cache value AES-256-GCM"
_NAME_KEY_INFO: Final = b"flask-ias-pkce/v2 cache key BLAKE2b-256"
_NAME_DIGEST_BYTES: Final = 32

# A purpose becomes part of a cache key in clear, so it is kept to a small alphabet that
# cannot contain the key's separator.
_PURPOSE_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,32}")


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=info).derive(secret)


class Sealer:
    """Seal and open cache values, and name cache entries, with keys derived from a secret.

    :param secret: the shared cache secret, at least 32 bytes (UTF-8 for a ``str``). Every
        process that shares a cache must use the same secret.
    :param nonce_source: returns ``n`` random bytes; :func:`os.urandom` unless a test
        needs repeatable output. A nonce must never repeat under one key.

    The secret itself is not kept: only the two derived keys are.
    """

    __slots__ = ("_aead", "_keyers", "_name_key", "_nonce_source")

    def __init__(
        self, secret: str | bytes, *, nonce_source: Callable[[int], bytes] = os.urandom
    ) -> None:
        secret_bytes = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(secret_bytes) < MIN_SECRET_BYTES:
            # The length is safe to report; the secret is not.
            raise ValueError(
                f"the cache secret (IAS_PKCE_CACHE_SECRET) must be at least "
                f"{MIN_SECRET_BYTES} bytes long, got {len(secret_bytes)}; generate one with "
                f'`python -c "import secrets; print(secrets.token_urlsafe(48))"`'
            )
        self._aead = AESGCM(_derive(secret_bytes, _VALUE_KEY_INFO))
        self._name_key = _derive(secret_bytes, _NAME_KEY_INFO)
        # Per purpose, the function that names an entry (see cache_keyer).
        self._keyers: dict[str, Callable[[str], str]] = {}
        self._nonce_source = nonce_source

    @classmethod
    def random(cls) -> Sealer:
        """A sealer with a fresh random secret, good for one process only.

        This is the default when ``IAS_PKCE_CACHE_SECRET`` is not set: entries then cannot
        be shared with (or read by) any other process.
        """
        return cls(secrets.token_bytes(MIN_SECRET_BYTES))

    def cache_key(self, token: str, *, purpose: str = "exchange") -> str:
        """The cache key for ``token``: ``"iaspkce:v2:<purpose>:<hex keyed BLAKE2b-256>"``.

        The token cannot be recovered from the key, keys differ between secrets, and the
        same token gets unrelated keys for different purposes.

        :param purpose: what the entry holds, e.g. ``"exchange"`` or ``"negative"``:
            lowercase letters, digits, ``_`` and ``-``.
        """
        keyer = self._keyers.get(purpose)
        if keyer is None:
            keyer = self.cache_keyer(purpose)
        return keyer(token)

    def cache_keyer(self, purpose: str) -> Callable[[str], str]:
        """:meth:`cache_key` for one ``purpose``, as a function of the token alone: what
        the request hook calls on every request, without looking the purpose up.

        :raises ValueError: ``purpose`` is not lowercase letters, digits, ``_`` and ``-``.
        """
        known = self._keyers.get(purpose)
        if known is not None:
            return known
        if not _PURPOSE_PATTERN.fullmatch(purpose):
            raise ValueError(
                f"cache key purpose must match {_PURPOSE_PATTERN.pattern}, got {purpose!r}"
            )
        prefix = f"{KEY_PREFIX}{KEY_VERSION}:{purpose}:"
        base = hashlib.blake2b(key=self._name_key, digest_size=_NAME_DIGEST_BYTES)
        # The NUL byte separates purpose and token, so no (purpose, token) pair can
        # collide with another.
        base.update(purpose.encode("ascii") + b"\x00")

        def cache_key(token: str) -> str:
            # A copy of the keyed state already fed with the purpose: a copy, one update
            # and a digest per key.
            mac = base.copy()
            mac.update(token.encode("utf-8", "surrogatepass"))
            return prefix + mac.hexdigest()

        # Two threads may build a keyer for the same purpose at once; both are identical.
        self._keyers[purpose] = cache_key
        return cache_key

    def seal(self, plaintext: bytes, *, associated: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``.

        :param associated: authenticated but not encrypted; pass the cache key, so that a
            value copied under another key no longer opens.
        :returns: version byte, 12-byte nonce, then the AES-GCM ciphertext and tag.
        """
        nonce = self._nonce_source(_NONCE_BYTES)
        if len(nonce) != _NONCE_BYTES:
            raise ValueError(f"nonce_source must return {_NONCE_BYTES} bytes")
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: object, *, associated: bytes) -> bytes | None:
        """The plaintext of a value made by :meth:`seal`, or ``None``.

        ``None`` whenever the value cannot be trusted: another format version, too short,
        not bytes, altered, sealed with another secret or for other associated data. It
        never raises, because what comes back from a shared cache is untrusted input.
        """
        if not isinstance(sealed, bytes | bytearray | memoryview):
            return None
        sealed = bytes(sealed)
        if len(sealed) < _MIN_SEALED_BYTES or sealed[:1] != _VERSION:
            return None
        nonce = sealed[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES :], associated)
        except (InvalidTag, ValueError, OverflowError, TypeError):
            return None
