"""The token cache: an in-process tier in front of a Flask-Caching backend, single flight,
and negative entries.

An entry is found by a keyed hash (a MAC) of the public token (never the token), holds the exchanged
token and the instant it stops being served (``not_after``), and goes to the backend
sealed with AES-GCM under that key, so a shared store (Redis) sees neither tokens nor
claims, and what it gives back is trusted only when it opens.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from flask_caching.backends.base import BaseCache

from .authorization import claim_groups, claim_scopes
from .sealing import Sealer
from .verify import unverified_claims

if TYPE_CHECKING:
    from .redis_cache import SafeRedisCache

logger = logging.getLogger("flask_ias_pkce")

_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    """What we remember about one accepted public token (or about an exchanged token, for
    the second hop): ``token`` is the token to use downstream (the exchanged one, or the
    public one itself on passthrough), served until ``not_after``."""

    token: str = field(repr=False)
    not_after: float
    passthrough: bool = False

    @cached_property
    def claims(self) -> Mapping[str, Any]:
        """The claims of :attr:`token`, decoded once per entry (it was verified before it
        was stored) and read-only, since every request that hits this entry shares them."""
        return MappingProxyType(unverified_claims(self.token))

    @cached_property
    def groups(self) -> frozenset[str]:
        """The ``groups`` claim as a set, made once per entry (the authorization check of
        every request that hits this entry reads it)."""
        return claim_groups(self.claims)

    @cached_property
    def scopes(self) -> frozenset[str]:
        """The ``scope`` claim as a set (of an XSUAA token's entry), made once per entry."""
        return claim_scopes(self.claims)


@dataclass(frozen=True)
class Denial:
    """IAS refused a public token (``invalid_grant``): remembered until ``not_after``, so
    that the token is refused here instead of being sent to IAS again."""

    not_after: float


#: What the cache holds for a key.
Cached = Entry | Denial


def not_after(*expiries: float, margin: float, now: float) -> float:
    """Until when an entry for tokens that expire at ``expiries`` is served: the earliest
    expiry less ``margin`` (``IAS_PKCE_MIN_REMAINING``). The one rule of both hops: a token
    already within the margin of its expiry is kept until that expiry itself (never after
    it) rather than obtained again on every request of its last moments."""
    earliest = min(expiries)
    with_margin = earliest - margin
    return with_margin if with_margin > now else earliest


def to_bytes(cached: Cached) -> bytes:
    """The plaintext of ``cached``, before it is sealed."""
    # One format for both kinds, a denial being a token-less record flagged "d" (as
    # earlier versions wrote it), so that processes of two versions can share a cache.
    if isinstance(cached, Denial):
        token, passthrough = "", False
    else:
        token, passthrough = cached.token, cached.passthrough
    record = {
        "v": _FORMAT,
        "t": token,
        "n": cached.not_after,
        "d": isinstance(cached, Denial),
        "p": passthrough,
    }
    return json.dumps(record, separators=(",", ":")).encode()


def from_bytes(data: bytes) -> Cached | None:
    """What :func:`to_bytes` made of it, or ``None`` for anything else."""
    try:
        raw = json.loads(data)
        if raw["v"] != _FORMAT:
            return None
        not_after = float(raw["n"])
        if bool(raw["d"]):
            return Denial(not_after)
        return Entry(str(raw["t"]), not_after, bool(raw["p"]))
    except (ValueError, KeyError, TypeError):
        return None


def shared_backend(backend: BaseCache) -> SafeRedisCache | None:
    """``backend`` if it is our Redis backend, else ``None``.

    redis is an optional dependency: the module that needs it is looked for only among the
    loaded ones, since a SafeRedisCache cannot exist unless it was loaded.
    """
    module = sys.modules.get("flask_ias_pkce.redis_cache")
    if module is not None and isinstance(backend, module.SafeRedisCache):
        return cast("SafeRedisCache", backend)
    return None


class _Flight:
    __slots__ = ("done", "entry", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Cached | None = None
        self.error: BaseException | None = None


class TokenCache:
    """Two tiers of exchanged tokens with single flight per token.

    :param backend: the Flask-Caching backend (ours, or the host app's).
    :param sealer: names entries and seals their values.
    :param l1_size: entries kept in process; the oldest go first when it is full.
    :param clock: seconds since the epoch; injectable so tests control expiry.
    :param wait_timeout: how long a request waits for another one's exchange before it
        does its own (the exchange's own worst case).
    :param scope: names what the entries depend on besides the token (the settings that
        decide whether a token is accepted and which token is kept), so that apps or
        versions of one app with other settings never serve each other's entries from a
        shared cache.
    """

    def __init__(
        self,
        backend: BaseCache,
        sealer: Sealer,
        *,
        l1_size: int,
        clock: Callable[[], float],
        wait_timeout: float,
        scope: str = "",
    ) -> None:
        self.backend = backend
        self._scope = scope
        self._purposes: dict[str, str] = {}  # purpose -> purpose within this scope
        self.sealer = sealer
        self._l1: dict[str, Cached] = {}
        self._l1_size = max(0, l1_size)
        self._l1_lock = threading.Lock()
        self._clock = clock
        self._wait_timeout = wait_timeout
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._exchange_key = sealer.cache_keyer(self._scoped("exchange"))

    def key(self, token: str, *, purpose: str = "exchange") -> str:
        """The cache key of ``token`` for ``purpose``, within this cache's scope."""
        if purpose == "exchange":
            return self._exchange_key(token)
        return self.sealer.cache_key(token, purpose=self._scoped(purpose))

    def _scoped(self, purpose: str) -> str:
        scoped = self._purposes.get(purpose)
        if scoped is None:
            scoped = f"{purpose}-{self._scope}" if self._scope else purpose
            self._purposes[purpose] = scoped
        return scoped

    @property
    def has_in_process_tier(self) -> bool:
        """Whether entries are kept in process (``IAS_PKCE_L1_SIZE`` above 0)."""
        return self._l1_size > 0

    def in_process(self, token: str) -> Entry | None:
        """The exchange entry of ``token`` when the in-process tier holds a valid one, else
        ``None`` (a denial included): the request hook's fast path, one keyed hash and one
        dictionary lookup. On ``None`` the caller takes the full path (:meth:`get`, then
        :meth:`get_or_compute`), which also asks the shared backend."""
        entry = self._l1.get(self._exchange_key(token))
        if isinstance(entry, Entry) and entry.not_after > self._clock():
            return entry
        return None

    def get(self, key: str) -> Cached | None:
        """The entry for ``key`` if one is still valid now: in process first, then shared."""
        now = self._clock()
        entry = self._l1.get(key)
        if entry is not None:
            if entry.not_after > now:
                return entry
            self._l1.pop(key, None)
        sealed = self.backend.get(key)
        if sealed is None:
            return None
        entry = self._open(key, sealed)
        if entry is None or entry.not_after <= now:
            return None
        self._remember(key, entry)
        return entry

    def put(self, key: str, entry: Cached) -> None:
        """Store ``entry`` until its ``not_after``; an entry already due is not stored."""
        ttl = entry.not_after - self._clock()
        # Flask-Caching reads a timeout of 0 as "forever": never let one through.
        if ttl < 1:
            return
        self._remember(key, entry)
        sealed = self.sealer.seal(to_bytes(entry), associated=key.encode())
        self.backend.set(key, sealed, timeout=int(ttl))

    def _remember(self, key: str, entry: Cached) -> None:
        if not self._l1_size:
            return
        with self._l1_lock:
            while len(self._l1) >= self._l1_size:
                self._l1.pop(next(iter(self._l1)), None)
            self._l1[key] = entry

    def _open(self, key: str, sealed: Any) -> Cached | None:
        plaintext = (
            self.sealer.open(sealed, associated=key.encode()) if isinstance(sealed, bytes) else None
        )
        entry = from_bytes(plaintext) if plaintext is not None else None
        if entry is None:
            # Written by someone else, with another secret, or damaged: never trusted.
            logger.warning("A cache entry failed authentication; treated as a miss")
        return entry

    def get_or_compute(self, key: str, compute: Callable[[], Cached]) -> tuple[Cached, bool]:
        """The entry for ``key``, computing it at most once at a time per token, and
        storing what was computed (until its ``not_after``).

        Returns ``(entry, computed_here)``. Other threads of this process wait for the
        thread that computes; with a shared backend, other processes wait on a Redis lock.
        A waiter that waits longer than ``wait_timeout`` computes for itself rather than
        fail. An error of the computing thread is raised in its waiters too.
        """
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if flight.done.wait(self._wait_timeout):
                if flight.error is not None:
                    raise copy.copy(flight.error)
                if flight.entry is not None:
                    return flight.entry, False
            return self._compute_and_store(key, compute), True
        try:
            # The previous flight for this key may have ended between our miss and now.
            entry = self.get(key)
            if entry is not None:
                flight.entry = entry
                return entry, False
            entry, computed = self._compute_once_across_processes(key, compute)
            flight.entry = entry
            return entry, computed
        except BaseException as error:
            flight.error = error
            raise
        finally:
            flight.done.set()
            with self._flights_lock:
                self._flights.pop(key, None)

    def _compute_and_store(self, key: str, compute: Callable[[], Cached]) -> Cached:
        entry = compute()
        self.put(key, entry)
        return entry

    def _compute_once_across_processes(
        self, key: str, compute: Callable[[], Cached]
    ) -> tuple[Cached, bool]:
        backend = shared_backend(self.backend)
        if backend is None:
            return self._compute_and_store(key, compute), True
        lock_key = key + ":lock"
        # The lock outlives a stalled holder by little; keep_alive renews it meanwhile.
        lock = backend.lock(lock_key, ttl_ms=5000)
        if lock.acquire():
            try:
                # Another process may have finished between our miss and our lock.
                entry = self.get(key)
                if entry is not None:
                    return entry, False
                with lock.keep_alive():
                    return self._compute_and_store(key, compute), True
            finally:
                lock.release()
        sealed = backend.wait_for(key, self._wait_timeout, lock_key=lock_key)
        if sealed is not None:
            entry = self._open(key, sealed)
            if entry is not None and entry.not_after > self._clock():
                self._remember(key, entry)
                return entry, False
        return self._compute_and_store(key, compute), True
