"""RS256 signing keys and compact JWS, written against ``cryptography`` directly.

A JWT library would refuse to build the malformed headers hostile tests need (a ``kid``
removed, an ``alg`` that lies), so the emulator signs and verifies on its own.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


class InvalidTokenError(ValueError):
    """The token is not a valid RS256 JWS by one of the given keys; the message says why."""


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment):
        raise InvalidTokenError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class SigningKey:
    """An RSA-2048 key pair known by its ``kid``."""

    def __init__(self, kid: str, private_key: rsa.RSAPrivateKey) -> None:
        self.kid = kid
        self.private_key = private_key

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        """A new key; the kid is random unless given."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid or f"emulator-{secrets.token_hex(6)}", key)

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK, the way IAS lists it at ``/oauth2/certs``."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
        }

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """A compact JWS over ``claims``; ``headers`` add to or replace (``None``: remove)
        the default header ``{"alg": "RS256", "kid": ..., "typ": "JWT"}``."""
        header: dict[str, Any] = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        for name, value in (headers or {}).items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        signing_input = ".".join(b64url(_json_bytes(part)) for part in (header, claims))
        signature = self.private_key.sign(
            signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{b64url(signature)}"


def _json_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except RecursionError:
        # CPython 3.12's C encoder stops at a fixed depth whatever sys.getrecursionlimit()
        # says; tests of hostile nesting sign deeper documents, and the pure-Python
        # encoder (iterencode) follows the recursion limit the test sets.
        return "".join(json.JSONEncoder(separators=(",", ":")).iterencode(value)).encode()


def verify(token: str, keys: Mapping[str, SigningKey]) -> dict[str, Any]:
    """Check that ``token`` is an RS256 JWS by the key its ``kid`` names and return its claims.

    Only the signature is checked here; the caller judges the claims.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidTokenError("not a compact JWS")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTokenError("malformed token") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidTokenError("header and payload must be JSON objects")
    if header.get("alg") != "RS256":
        raise InvalidTokenError("alg must be RS256")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise InvalidTokenError("unknown kid")
    try:
        key.private_key.public_key().verify(
            signature, f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature as exc:
        raise InvalidTokenError("bad signature") from exc
    return claims
