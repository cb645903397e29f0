"""The client credentials a binding authenticates with, and their rotation.

An X.509 binding's certificate lives 1 to 30 days and is renewed by re-binding; on Kyma the
SAP BTP service operator rewrites the binding's files in place. A :class:`Credentials`
holds the pair in use and swaps it for a new one only when the new one is whole: a
certificate and a key that parse, belong together and are valid now. Everything that
calls IAS or XSUAA reads the pair at send time, so the next call after a swap uses the
new one; nothing else changes.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .bindings import BindingError, Bindings, IdentityBinding, XsuaaBinding
from .constants import REREAD_MIN_INTERVAL_SECONDS

logger = logging.getLogger("flask_ias_pkce")

#: A certificate that expires within this many seconds is announced (log and signal).
EXPIRY_WARNING_SECONDS = 3 * 24 * 3600

Verify = bool | str


class ClientIdentity:
    """A client certificate and its private key, checked to belong together, and loaded
    into in-memory :class:`ssl.SSLContext` objects (one per trust setting).

    :raises ValueError: the certificate or key does not parse, or they do not match.
    """

    __slots__ = ("_key", "certificate", "contexts", "contexts_lock", "not_after", "thumbprint")

    def __init__(self, certificate: str, key: str) -> None:
        try:
            parsed = x509.load_pem_x509_certificate(certificate.encode())
            private = serialization.load_pem_private_key(key.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("the certificate or the key is not PEM we can read") from None
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if parsed.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
            raise ValueError("the key does not belong to the certificate")
        self.certificate = certificate
        self._key = key
        #: ``x5t#S256`` of the certificate (RFC 8705 3.1): what a bound token's ``cnf`` holds.
        self.thumbprint = thumbprint(parsed.public_bytes(serialization.Encoding.DER))
        #: The certificate's ``notAfter``, seconds since the epoch.
        self.not_after = parsed.not_valid_after_utc.timestamp()
        #: TLS contexts with this identity, by trust setting (filled by the HTTP layer).
        self.contexts: dict[Verify, ssl.SSLContext] = {}
        self.contexts_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ClientIdentity(thumbprint={self.thumbprint!r}, not_after={self.not_after!r})"

    def load_into(self, context: ssl.SSLContext) -> None:
        """Load the pair into ``context``; the key touches the disk only for an instant."""
        _load_identity(context, self.certificate, self._key)


def thumbprint(der: bytes) -> str:
    """The base64url SHA-256 of a DER certificate, without padding (``x5t#S256``)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _load_identity(context: ssl.SSLContext, certificate: str, key: str) -> None:
    # The ssl module reads a certificate chain only from files: write both into a private
    # folder (0700, files 0600), load them and remove them before anything else runs.
    folder = tempfile.mkdtemp(prefix="ias-pkce-")
    try:
        paths = []
        for name, text in (("certificate.pem", certificate), ("key.pem", key)):
            path = os.path.join(folder, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
            paths.append(path)
        context.load_cert_chain(certfile=paths[0], keyfile=paths[1])
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def expiry_date(not_after: float) -> str:
    """``not_after`` as an ISO 8601 UTC instant, for log lines and the CLI."""
    return datetime.fromtimestamp(not_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expires_at(value: str | None) -> float | None:
    """A binding's ``certificate_expires_at`` (ISO 8601) in seconds since the epoch, or
    ``None`` when it is absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class Credentials:
    """The credentials of one binding now in use: a client identity, or a client secret.

    Reading :attr:`identity` or :attr:`secret` is a plain attribute read, so the hot path
    pays nothing for rotation. :meth:`replace` swaps both at once.
    """

    def __init__(
        self,
        identity: ClientIdentity | None,
        secret: str | None,
        *,
        name: str,
        expires_at: float | None = None,
    ) -> None:
        self.identity = identity
        self.secret = secret
        self.name = name  #: the binding's source, for log lines
        #: From the binding's ``certificate_expires_at``, when it says so.
        self.expires_at = expires_at
        self._lock = threading.Lock()

    def replace(
        self, identity: ClientIdentity | None, secret: str | None, expires_at: float | None
    ) -> bool:
        """Use ``identity`` and ``secret`` from now on; ``True`` when they differ."""
        with self._lock:
            old = self.identity.thumbprint if self.identity is not None else None
            new = identity.thumbprint if identity is not None else None
            changed = old != new or self.secret != secret
            if changed:
                self.identity, self.secret, self.expires_at = identity, secret, expires_at
            return changed

    def expiry(self) -> float | None:
        """When the credentials in use stop working: the earlier of the certificate's
        ``notAfter`` and the binding's ``certificate_expires_at``; ``None`` for a secret."""
        if self.identity is None:
            return None
        known = [self.identity.not_after]
        if self.expires_at is not None:
            known.append(self.expires_at)
        return min(known)

    def check_expiry(self, now: float, announce: Callable[[float], None] | None = None) -> None:
        """Log a WARNING (and call ``announce`` with the expiry) when the certificate in
        use expires within :data:`EXPIRY_WARNING_SECONDS`."""
        expiry = self.expiry()
        if expiry is None or expiry - now > EXPIRY_WARNING_SECONDS:
            return
        logger.warning(
            "The client certificate of %s expires on %s (in %.1f hours): renew the binding",
            self.name,
            expiry_date(expiry),
            max(0.0, expiry - now) / 3600,
        )
        if announce is not None:
            announce(expiry)


def credentials_for(
    *,
    certificate: str | None,
    key: str | None,
    secret: str | None,
    uses_certificate: bool,
    name: str,
    expires_at: str | None = None,
) -> Credentials:
    """The :class:`Credentials` of a binding's fields.

    :raises ~flask_ias_pkce.bindings.BindingError: the binding's certificate and key do
        not make a usable pair.
    """
    identity = None
    if uses_certificate and certificate is not None and key is not None:
        try:
            identity = ClientIdentity(certificate, key)
        except ValueError as error:
            raise BindingError(f"{name}: {error}") from None
    return Credentials(identity, secret, name=name, expires_at=parse_expires_at(expires_at))


def tree_fingerprint(root: str) -> str:
    """A digest of every file under ``root`` (names, symlink targets and contents), so
    that any change, a Kubernetes ``..data`` swap or a file rewritten in place, shows."""
    digest = hashlib.sha256()
    for folder, folders, files in os.walk(root, followlinks=False):
        folders.sort()
        for name in sorted(files + [f for f in folders if os.path.islink(os.path.join(folder, f))]):
            path = os.path.join(folder, name)
            digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
            try:
                if os.path.islink(path):
                    digest.update(os.readlink(path).encode("utf-8", "surrogateescape"))
                elif os.path.getsize(path) <= _MAX_WATCHED_FILE_BYTES:
                    with open(path, "rb") as handle:
                        digest.update(handle.read())
            except OSError:
                digest.update(b"unreadable")  # half-replaced: looked at again next round
            digest.update(b"\0")
    return digest.hexdigest()


#: Binding files are small; a larger file is fingerprinted by name only.
_MAX_WATCHED_FILE_BYTES = 1024 * 1024


def _restart(watcher: weakref.ref[BindingWatcher]) -> None:
    alive = watcher()
    if alive is not None and not alive._stopped.is_set():
        alive._restart()


class BindingWatcher:
    """Polls a binding folder and calls ``reload`` when anything in it changed.

    A daemon thread per watched folder; it ends by itself once ``alive()`` says the owner
    is gone (the app's state is kept by weak reference, so the thread never holds an app).

    :param root: the folder (``$SERVICE_BINDING_ROOT``).
    :param reload: reads the bindings again and swaps whole, valid pairs in.
    :param alive: whether the owner still exists.
    :param interval: seconds between two looks.
    """

    def __init__(
        self,
        root: str,
        reload: Callable[[], object],
        *,
        alive: Callable[[], bool],
        interval: float,
    ) -> None:
        self._root = root
        self._reload = reload
        self._alive = alive
        self._interval = interval
        self._stopped = threading.Event()
        self._fingerprint = tree_fingerprint(root)
        self.thread = threading.Thread(
            target=self._run, name="ias-pkce-binding-watcher", daemon=True
        )

    def start(self) -> BindingWatcher:
        """Start polling, in this process and in every process forked from it later
        (gunicorn's ``--preload`` builds the app before it forks its workers, and threads
        do not survive a fork)."""
        self.thread.start()
        watcher = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart(watcher))
        return self

    def _restart(self) -> None:
        # The parent's Event may be mid-wait of a thread the fork left behind.
        self._stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name="ias-pkce-binding-watcher", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Stop polling (at the end of the current wait)."""
        self._stopped.set()

    def check(self) -> bool:
        """Look once; call ``reload`` when the files changed. ``True`` when they had."""
        fingerprint = tree_fingerprint(self._root)
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        self._reload()
        return True

    def _run(self) -> None:
        while not self._stopped.wait(self._interval) and self._alive():
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise on disk
                logger.exception("Watching the binding files of %s failed", self._root)


def identity_credentials(binding: IdentityBinding) -> Credentials:
    """The :class:`Credentials` of an IAS binding."""
    return credentials_for(
        certificate=binding.certificate,
        key=binding.key,
        secret=binding.client_secret,
        uses_certificate=binding.uses_certificate,
        name=binding.source,
        expires_at=binding.certificate_expires_at,
    )


def xsuaa_credentials(binding: XsuaaBinding) -> Credentials:
    """The :class:`Credentials` of an XSUAA binding (a certificate wins over a secret, as
    in SAP's libraries)."""
    return credentials_for(
        certificate=binding.certificate,
        key=binding.key,
        secret=binding.client_secret,
        uses_certificate=binding.certificate is not None and binding.key is not None,
        name=binding.source,
    )


class CredentialReloader:
    """Reads the bindings again and swaps in the credentials that are whole and valid.

    :param read_bindings: reads the bindings from where they were found.
    :param identities: the credentials in use of each IAS binding (matched to the bindings
        read again by where they were found).
    :param xsuaa: the XSUAA binding's, when the second hop uses them.
    :param clock: seconds since the epoch.
    :param announce: called with credentials whose certificate expires within
        :data:`EXPIRY_WARNING_SECONDS` and that expiry, after the WARNING line.
    """

    def __init__(
        self,
        read_bindings: Callable[[], Bindings],
        identities: Sequence[Credentials],
        xsuaa: Credentials | None,
        *,
        clock: Callable[[], float],
        announce: Callable[[Credentials, float], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_bindings = read_bindings
        self._identities = tuple(identities)
        self._xsuaa = xsuaa
        self._clock = clock
        self._announce = announce
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last_read = float("-inf")

    def check_expiry(self) -> None:
        """Warn (and announce) for every set of credentials that expires soon."""
        for credentials in (*self._identities, self._xsuaa):
            if credentials is not None:
                self._check(credentials)

    def _check(self, credentials: Credentials) -> None:
        credentials.check_expiry(self._clock(), lambda expiry: self._announce(credentials, expiry))

    def reload(self) -> bool:
        """Read the bindings again now; ``True`` when other credentials are in use after.

        A binding that cannot be read, a certificate and key that do not belong together
        (files half-written) or a certificate that is no longer valid change nothing: the
        credentials in use stay, and the next change of the files is read again.
        """
        with self._lock:
            self._last_read = self._monotonic()
            try:
                bindings = self._read_bindings()
                by_source = {identity.source: identity for identity in bindings.identities}
                fresh = [
                    (current, identity_credentials(by_source[current.name]))
                    for current in self._identities
                    if current.name in by_source
                ]
                if self._xsuaa is not None and bindings.xsuaa is not None:
                    fresh.append((self._xsuaa, xsuaa_credentials(bindings.xsuaa)))
            except BindingError as error:
                logger.warning(
                    "The bindings cannot be read again (%s); the credentials in use stay", error
                )
                return False
            changed = False
            for current, new in fresh:
                if new.identity is not None and new.identity.not_after <= self._clock():
                    logger.warning(
                        "The new client certificate of %s expired on %s; the one in use stays",
                        new.name,
                        expiry_date(new.identity.not_after),
                    )
                    continue
                if current.replace(new.identity, new.secret, new.expires_at):
                    changed = True
                    expiry = current.expiry()
                    logger.info(
                        "New credentials of %s in use%s",
                        current.name,
                        f" (certificate valid until {expiry_date(expiry)})" if expiry else "",
                    )
                    self._check(current)
            return changed

    def reread(self) -> bool:
        """:meth:`reload`, unless one took place a moment ago (then ``False``): what a call
        that IAS refused does before it is answered."""
        if self._monotonic() - self._last_read < REREAD_MIN_INTERVAL_SECONDS:
            # Whoever read them a moment ago swapped in what there was to find.
            return False
        return self.reload()
