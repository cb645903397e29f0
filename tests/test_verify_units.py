"""Reading a JWS, the time checks and a key set on their own: no Flask, no emulator, no
network; tables, and a clock the test moves."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest

from flask_ias_pkce import IASUnavailable, InvalidToken, KeyLimits
from flask_ias_pkce.keys import KeySet
from flask_ias_pkce.verify import check_times, read_jws

from helpers import FakeClock


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jws(header: Any, payload: Any = None, signature: bytes = b"s" * 256) -> str:
    claims = {"sub": "alice"} if payload is None else payload
    return f"{b64(header)}.{b64(claims)}.{b64(signature)}"


GOOD = {"alg": "RS256", "kid": "key-1"}
SIGNATURE = b64(b"s" * 256)
NAN_HEADER = b'{"alg": "RS256", "kid": "k", "n": NaN}'
DEEP: list[Any] = []
for _ in range(40):
    DEEP = [DEEP]
_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def non_canonical(token: str) -> str:
    """The same bytes spelt otherwise: a 256-byte signature's last character has 4 bits
    that decoding drops."""
    last = _BASE64URL.index(token[-1])
    return token[:-1] + _BASE64URL[last ^ 1]


#: (token, the reason it is refused, or None for a token whose form is right)
FORMS: list[tuple[str, str | None]] = [
    (jws(GOOD), None),
    (jws({**GOOD, "typ": "JWT"}), None),
    (jws({"alg": "none", "kid": "key-1"}), "alg_not_allowed"),
    (jws({"alg": "rs256", "kid": "key-1"}), "alg_not_allowed"),
    (jws({"alg": "HS256", "kid": "key-1"}), "alg_not_allowed"),
    (jws({"kid": "key-1"}), "alg_not_allowed"),
    (jws({**GOOD, "crit": ["exp"]}), "crit_header"),
    (jws({"alg": "RS256"}), "kid_bad"),
    (jws({"alg": "RS256", "kid": 7}), "kid_bad"),
    (jws({"alg": "RS256", "kid": "a b"}), "kid_bad"),
    (jws({"alg": "RS256", "kid": "k" * 129}), "kid_bad"),
    (jws(["RS256"]), "malformed_jwt"),
    (jws(GOOD, ["not", "an", "object"]), "malformed_jwt"),
    (f"{b64(b'not json')}.{b64({})}.{SIGNATURE}", "malformed_jwt"),
    (jws(GOOD, {"deep": DEEP}), "malformed_jwt"),
    (f"{b64(NAN_HEADER)}.{b64({})}.{SIGNATURE}", "malformed_jwt"),
    (non_canonical(jws(GOOD)), "not_canonical"),
    (f"{b64(GOOD)}=.{b64({})}.{SIGNATURE}", "not_canonical"),
]


@pytest.mark.parametrize(("token", "reason"), FORMS)
def test_read_jws(token: str, reason: str | None) -> None:
    if reason is None:
        signed = read_jws(token)
        assert (signed.kid, signed.claims) == ("key-1", {"sub": "alice"})
        return
    with pytest.raises(InvalidToken) as refused:
        read_jws(token)
    assert refused.value.reason == reason


NOW = 1_000_000.0

#: (claims, leeway, the reason they are refused, or None with the expiry returned)
TIMES: list[tuple[dict[str, Any], float, str | None]] = [
    ({"exp": NOW + 10}, 0, None),
    ({"exp": NOW - 30}, 60, None),  # expired, but within the leeway
    ({"exp": NOW - 60}, 60, "expired"),
    ({"exp": NOW}, 0, "expired"),
    ({}, 60, "exp_missing"),
    ({"exp": True}, 60, "exp_malformed"),
    ({"exp": "soon"}, 60, "exp_malformed"),
    ({"exp": float("nan")}, 60, "exp_malformed"),
    ({"exp": float("inf")}, 60, "exp_malformed"),
    ({"exp": 10**400}, 60, "exp_malformed"),
    ({"exp": NOW + 600, "nbf": NOW + 30}, 60, None),
    ({"exp": NOW + 600, "nbf": NOW + 61}, 60, "not_yet_valid"),
    ({"exp": NOW + 600, "iat": NOW + 61}, 60, "iat_in_future"),
    ({"exp": NOW + 600, "iat": "yesterday"}, 60, "iat_malformed"),
]


@pytest.mark.parametrize(("claims", "leeway", "reason"), TIMES)
def test_check_times(claims: dict[str, Any], leeway: float, reason: str | None) -> None:
    if reason is None:
        assert check_times(claims, now=NOW, leeway=leeway) == claims["exp"]
        return
    with pytest.raises(InvalidToken) as refused:
        check_times(claims, now=NOW, leeway=leeway)
    assert refused.value.reason == reason


class Source:
    """A key source that counts its calls and fails when told to."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = keys
        self.calls = 0
        self.failing = False

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.failing:
            raise IASUnavailable("down", reason="unreachable")
        return dict(self.keys)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


LIMITS = KeyLimits(ttl=100, refetch_interval=30, failure_backoff=5)

#: (seconds after the start, kid asked for, what is found, calls to the source so far)
UNKNOWN_KIDS: list[tuple[float, str, str | None, int]] = [
    (0, "a", "key-a", 1),
    (1, "b", None, 2),  # an unknown kid fetches again at once
    (10, "b", None, 2),  # and then not within the interval
    (20, "a", "key-a", 2),
    (31, "b", None, 3),  # after the interval: again
    (250, "a", "key-a", 4),  # past twice the lifetime: stale, fetched before it is used
]


def test_a_key_set_refetches_for_unknown_kids_at_most_once_per_interval(
    clock: FakeClock,
) -> None:
    source = Source({"a": "key-a"})
    key_set = KeySet("test", LIMITS)

    for at, kid, found, calls in UNKNOWN_KIDS:
        clock.now = NOW + at
        assert (key_set.key(kid, source, clock()), source.calls) == (found, calls), at


def test_a_source_that_never_served_keys_is_not_asked_again_within_the_backoff(
    clock: FakeClock,
) -> None:
    source = Source({"a": "key-a"})
    source.failing = True
    key_set = KeySet("test", LIMITS)

    outcomes = []
    for at in (0, 1, 4.9, 5):
        clock.now = NOW + at
        try:
            outcomes.append((key_set.key("a", source, clock()), source.calls))
        except IASUnavailable:
            outcomes.append(("unavailable", source.calls))
        source.failing = at < 4.9

    assert outcomes == [("unavailable", 1), ("unavailable", 1), ("unavailable", 1), ("key-a", 2)]


def test_a_failed_refresh_keeps_the_known_keys(clock: FakeClock) -> None:
    source = Source({"a": "key-a"})
    key_set = KeySet("test", LIMITS)
    key_set.key("a", source, clock())
    source.failing = True

    clock.advance(250)  # stale: refreshed in the request, and the refresh fails
    found = [key_set.key("a", source, clock()) for _ in range(5)]
    for thread in threading.enumerate():
        if thread.name == "ias-pkce-keys-refresh":
            thread.join(5)

    assert found == ["key-a"] * 5
    # The failed refresh, then one try behind the requests' back: not one per request.
    assert source.calls == 3
