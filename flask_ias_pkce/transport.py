"""Calls to IAS: one keep-alive session per binding, mTLS without a key file left on disk,
explicit TLS verification, timeouts and bounded retries.

What can go wrong on the wire is mapped here, once, to the answers of DESIGN.md's error
table: a read timeout is a 504, anything that keeps us from talking to IAS is a 503 with
``Retry-After``, an answer we cannot use is a 502.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from .constants import (
    CORRELATION_HEADER,
    RETRY_AFTER_SECONDS,
    RETRY_BACKOFF_BASE_SECONDS,
    RETRY_BACKOFF_CAP_SECONDS,
    RETRY_STATUSES,
)
from .credentials import ClientIdentity, Credentials
from .errors import IASRefused, IASTimeout, IASUnavailable

logger = logging.getLogger("flask_ias_pkce")

#: Answers of IAS are small JSON documents; a larger body is not an answer we can use.
MAX_ANSWER_BYTES = 256 * 1024

Verify = bool | str

_CORRELATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def checked_correlation_id(value: str | None) -> str | None:
    """``value`` when it is a usable correlation id: a short token of safe characters
    (it goes into our headers and log lines), else ``None``."""
    if value is not None and _CORRELATION_ID.fullmatch(value):
        return value
    return None


def new_correlation_id() -> str:
    """A fresh correlation id, for calls that no incoming request names."""
    return str(uuid.uuid4())


#: When the answer of the call under way must be in, headers and body (time.monotonic()).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "ias_pkce_deadline", default=None
)


class _DeadlineHTTPSConnection(urllib3.connection.HTTPSConnection):
    """A connection whose answer head must arrive before the call's deadline.

    The socket's read timeout bounds each wait for bytes only: an IAS (or a proxy) that
    sends its status line at once and then a header byte now and then would hold the
    request for as long as it likes. A timer cuts the connection at the deadline instead.
    """

    def getresponse(self) -> Any:
        deadline = _DEADLINE.get()
        sock = self.sock
        if deadline is None or sock is None:
            return super().getresponse()
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            # The plain socket's shutdown: the reading thread keeps its TLS state.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

        timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
        timer.daemon = True
        timer.start()
        try:
            response = super().getresponse()
        finally:
            timer.cancel()
            if expired.is_set():
                # Whatever the cut connection gave (an error, or a head cut short).
                raise TimeoutError("the answer's head took too long")
        return response


class _DeadlineHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


def _with_deadlines(manager: Any) -> Any:
    manager.pool_classes_by_scheme = {
        **manager.pool_classes_by_scheme,
        "https": _DeadlineHTTPSConnectionPool,
    }
    return manager


class ClientCertificateAdapter(HTTPAdapter):
    """An adapter whose TLS contexts carry a client certificate, read at send time.

    ``requests`` can only load a client certificate from files, on every new connection.
    Here the PEM text is loaded once per certificate and trust setting into an
    :class:`ssl.SSLContext` and the files it passed through are removed at once, so the
    private key lives in memory only. The context is handed to urllib3 through the
    documented ``build_connection_pool_key_attributes`` hook; it is part of the pool key,
    so a rotated certificate gets connections of its own at the next call.

    :param identity: gives the client identity to present now (``None``: none).
    :param reread: reads the binding again; called once when a TLS handshake fails, so a
        rotated certificate is picked up before the call is given up.
    """

    def __init__(
        self,
        identity: Callable[[], ClientIdentity | None] = lambda: None,
        *,
        reread: Callable[[], object] | None = None,
        pool_connections: int = 4,
        pool_maxsize: int = 32,
    ) -> None:
        self._identity = identity
        self.reread = reread
        self._contexts: dict[Verify, ssl.SSLContext] = {}
        self._contexts_lock = threading.Lock()
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _with_deadlines(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return _with_deadlines(super().proxy_manager_for(proxy, **proxy_kwargs))

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if host_params.get("scheme") != "https":
            return host_params, pool_kwargs
        # The context carries trust and identity: no other TLS keyword may override it.
        return host_params, {"ssl_context": self.context(verify)}

    def identity(self) -> ClientIdentity | None:
        """The client identity the next connection presents."""
        return self._identity()

    def context(self, verify: Verify) -> ssl.SSLContext:
        """The TLS context for ``verify`` with the identity in use now."""
        identity = self.identity()
        cache = identity.contexts if identity is not None else self._contexts
        lock = identity.contexts_lock if identity is not None else self._contexts_lock
        with lock:
            context = cache.get(verify)
            if context is None:
                context = cache[verify] = _new_context(verify, identity)
            return context


def _new_context(verify: Verify, identity: ClientIdentity | None) -> ssl.SSLContext:
    if verify is False:
        # Never reached through our settings (they refuse False); kept as a hard stop.
        raise ValueError("TLS verification cannot be turned off")
    bundle = DEFAULT_CA_BUNDLE_PATH if verify is True else verify
    try:
        if os.path.isdir(bundle):
            context = ssl.create_default_context(capath=bundle)
        else:
            context = ssl.create_default_context(cafile=bundle)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if identity is not None:
            identity.load_into(context)
    except OSError as error:  # ssl.SSLError included
        # A CA bundle removed or damaged after start-up (it is read at the first call,
        # not at init_app) is a TLS failure like any other: a 503 for the user, not a
        # 500. Nothing is cached, so the next call tries the file again.
        raise requests.exceptions.SSLError(f"TLS set-up failed: {type(error).__name__}") from None
    return context


def new_session(
    certificate: str | None = None,
    key: str | None = None,
    *,
    identity: Callable[[], ClientIdentity | None] | None = None,
    reread: Callable[[], object] | None = None,
) -> requests.Session:
    """A keep-alive session for IAS; with ``certificate`` and ``key`` (or ``identity``, read
    at every call, for credentials that rotate), it authenticates by mTLS. ``reread`` is
    called once when a TLS handshake fails (see :class:`ClientCertificateAdapter`)."""
    if identity is None:
        fixed = ClientIdentity(certificate, key) if certificate and key else None
        identity = lambda: fixed  # noqa: E731
    session = requests.Session()
    # Nothing from the environment reaches a call to IAS by surprise: no .netrc credentials,
    # no REQUESTS_CA_BUNDLE in place of IAS_PKCE_VERIFY. Proxies still come from it, read
    # once per origin (_proxies_for), which also spares every call requests' own lookups.
    session.trust_env = False
    adapter = ClientCertificateAdapter(identity, reread=reread)
    session.mount("https://", adapter)
    # Plain HTTP is never used towards IAS: an http:// URL fails instead of leaking a token.
    session.mount("http://", _RefuseHTTP())
    return session


class _RefuseHTTP(HTTPAdapter):
    def send(self, *args: Any, **kwargs: Any) -> requests.Response:
        raise requests.exceptions.InvalidURL("only https:// URLs are used towards IAS")


@dataclass(frozen=True)
class HttpPolicy:
    """How we call IAS: TLS trust, timeouts, retries, and the injectable clock parts."""

    verify: Verify = True
    timeout: tuple[float, float] = (3.05, 10.0)
    retries: int = 2
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = field(default=random.random)
    #: The correlation id of the work at hand (the incoming request's, or a new one),
    #: sent as ``X-Correlation-ID`` with every call.
    correlation_id: Callable[[], str] = new_correlation_id

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): exponential, capped, jittered."""
        ceiling = min(RETRY_BACKOFF_CAP_SECONDS, RETRY_BACKOFF_BASE_SECONDS * 2.0**attempt)
        return ceiling * (0.5 + 0.5 * self.jitter())

    def worst_case_seconds(self) -> float:
        """The longest one call can take, retries and backoff included (for the docs)."""
        connect, read = self.timeout
        attempts = self.retries + 1
        waits = sum(
            min(RETRY_BACKOFF_CAP_SECONDS, RETRY_BACKOFF_BASE_SECONDS * 2.0**n)
            for n in range(self.retries)
        )
        return attempts * (connect + read) + waits


@dataclass(frozen=True)
class Answer:
    """An answer of IAS: status, headers and at most :data:`MAX_ANSWER_BYTES` of body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or ``None`` when it is not plain JSON (see :func:`loads_json`)."""
        return loads_json(self.body)


#: Deepest nesting of arrays and objects accepted in a token or an answer of IAS. Real
#: ones nest a few levels; how deep CPython's own parser goes differs by version (3.13
#: parses what 3.11 and 3.12 refuse with ``RecursionError``), so the limit is ours.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def loads_json(data: bytes | str) -> Any:
    """JSON of a token or of an answer of IAS, or ``None`` when it is not plain JSON.

    Refused, without a traceback: nesting deeper than :data:`MAX_JSON_DEPTH`, and
    ``NaN``/``Infinity``, which are no JSON (RFC 8259 section 6).
    """
    raw = data.encode() if isinstance(data, str) else data
    if _too_deep(raw):
        return None
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None


def _too_deep(raw: bytes) -> bool:
    # Nesting cannot exceed the number of openers: most documents are decided by two
    # counts, and only the others are scanned, with the strings (which may hold brackets)
    # taken out first.
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", raw)):
        if bracket in b"[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def answer_token(answer: Answer, name: str) -> str | None:
    """The token ``name`` of a token answer's JSON body (of IAS or XSUAA), if it has the
    form of a compact JWS (three parts; read_jws checks the rest), else ``None``."""
    body = answer.json()
    token = body.get(name) if isinstance(body, dict) else None
    return token if isinstance(token, str) and token.count(".") == 2 else None


_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


def error_code(answer: Answer) -> str | None:
    """The RFC 6749 ``error`` of an answer, only if it looks like one: it goes to logs and
    reason codes, and IAS's other text might echo what we sent."""
    body = answer.json()
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def basic_authorization(client_id: str, secret: str) -> str:
    """An HTTP Basic ``Authorization`` value for an OAuth client (RFC 6749 2.3.1: id and
    secret are form-urlencoded before they are joined)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _retry_after(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


def call(
    session: requests.Session,
    method: str,
    url: str,
    *,
    policy: HttpPolicy,
    what: str,
    retry_on: Callable[[Answer], bool] | None = None,
    **kwargs: Any,
) -> Answer:
    """Send one request to IAS with the policy's timeouts and retries.

    Connection errors and 408/429/5xx answers are retried with backoff; a ``Retry-After``
    longer than the backoff cap ends the retries at once (IAS asked us to stay away). A
    read timeout is not retried: IAS took the request and the caller has waited long
    enough. ``retry_on`` names further answers worth one more try. ``what`` names the
    call in logs and errors; no URL parameter, header or body ever does.
    """
    last_status: int | None = None
    retry_after = RETRY_AFTER_SECONDS
    # One id for the call and its retries, so IAS's logs and ours tell one story.
    correlation = policy.correlation_id()
    kwargs["headers"] = {**(kwargs.get("headers") or {}), CORRELATION_HEADER: correlation}
    for attempt in range(policy.retries + 1):
        if attempt:
            policy.sleep(policy.backoff(attempt - 1))
        try:
            answer = _send_rereading(session, method, url, policy, **kwargs)
        except requests.exceptions.ConnectTimeout:
            logger.warning(
                "%s: connect timeout (attempt %d, correlation %s)", what, attempt + 1, correlation
            )
            continue
        except requests.exceptions.ReadTimeout:
            logger.warning(
                "%s: IAS did not answer within the timeout (correlation %s)", what, correlation
            )
            raise IASTimeout(
                "The identity service did not answer in time", reason=f"{what}_timeout"
            ) from None
        except requests.exceptions.SSLError:
            # Certificates do not mend themselves between attempts.
            logger.error("%s: TLS handshake failed (correlation %s)", what, correlation)
            raise IASUnavailable(
                "The identity service cannot be reached securely",
                reason=f"{what}_tls_error",
                retry_after=RETRY_AFTER_SECONDS,
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
            logger.warning(
                "%s: connection failed (attempt %d, correlation %s)", what, attempt + 1, correlation
            )
            continue
        except requests.exceptions.RequestException as error:
            logger.error(
                "%s: request failed: %s (correlation %s)", what, type(error).__name__, correlation
            )
            raise IASUnavailable(
                "The identity service cannot be reached",
                reason=f"{what}_unreachable",
                retry_after=RETRY_AFTER_SECONDS,
            ) from None
        transient = answer.status in RETRY_STATUSES
        if not transient and (retry_on is None or not retry_on(answer)):
            return answer
        if not transient and attempt == policy.retries:
            return answer  # the caller maps its own answers once retries are spent
        last_status = answer.status
        logger.warning(
            "%s: IAS answered %d (attempt %d, correlation %s)",
            what,
            answer.status,
            attempt + 1,
            correlation,
        )
        asked = _retry_after(answer.headers)
        if asked is not None:
            retry_after = max(1, asked)
            if asked > RETRY_BACKOFF_CAP_SECONDS:
                break
    reason = f"{what}_status_{last_status}" if last_status else f"{what}_unreachable"
    raise IASUnavailable(
        "The identity service is unavailable", reason=reason, retry_after=retry_after
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@functools.lru_cache(maxsize=64)
def _proxies_for(origin: str) -> dict[str, str]:
    # HTTPS_PROXY and NO_PROXY as requests reads them; the origins we call are few.
    return requests.utils.get_environ_proxies(origin)


def _send_rereading(
    session: requests.Session, method: str, url: str, policy: HttpPolicy, **kwargs: Any
) -> Answer:
    # A handshake that fails on our certificate may mean that it was rotated out: read the
    # binding again once and, if that brought another certificate, try with it.
    try:
        return _send(session, method, url, policy, **kwargs)
    except requests.exceptions.SSLError:
        adapter = session.get_adapter(url)
        if not isinstance(adapter, ClientCertificateAdapter) or adapter.reread is None:
            raise
        before = adapter.identity()
        adapter.reread()
        if adapter.identity() is before:
            raise
        logger.info("Retrying with the credentials read again after a TLS failure")
        return _send(session, method, url, policy, **kwargs)


def _send(
    session: requests.Session, method: str, url: str, policy: HttpPolicy, **kwargs: Any
) -> Answer:
    # The read timeout bounds each wait for bytes, not the whole answer: an IAS (or a
    # proxy) that trickles its head or body a byte at a time would hold the request for as
    # long as it likes. Head (_DeadlineHTTPSConnection) and body are therefore read against
    # one deadline per attempt, which keeps HttpPolicy.worst_case_seconds() true.
    deadline = time.monotonic() + sum(policy.timeout)
    if not session.trust_env:
        kwargs.setdefault("proxies", _proxies_for(_origin(url)))
    token = _DEADLINE.set(deadline)
    try:
        with session.request(
            method,
            url,
            verify=policy.verify,
            timeout=policy.timeout,
            allow_redirects=False,
            stream=True,
            **kwargs,
        ) as response:
            body = _read_body(response, deadline)
            return Answer(response.status_code, response.headers, body)
    finally:
        _DEADLINE.reset(token)


def _read_body(response: requests.Response, deadline: float) -> bytes:
    body = bytearray()
    try:
        # read1: at most one read of the socket per chunk, so the deadline is checked as
        # the bytes come (iter_content would block until a whole chunk has arrived).
        while chunk := response.raw.read1(16384, decode_content=True):
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise IASRefused(
                    "The identity service sent an oversized answer", reason="oversized_answer"
                )
            if time.monotonic() > deadline:
                raise requests.exceptions.ReadTimeout("the answer took too long")
    # urllib3's errors as requests would raise them (iter_content maps them the same way,
    # but a read timeout is a timeout here, not a connection error).
    except urllib3.exceptions.ReadTimeoutError:
        raise requests.exceptions.ReadTimeout("no answer within the read timeout") from None
    except urllib3.exceptions.SSLError:
        raise requests.exceptions.SSLError("TLS failed while reading the answer") from None
    except urllib3.exceptions.ProtocolError:
        raise requests.exceptions.ChunkedEncodingError("the answer was cut off") from None
    except urllib3.exceptions.DecodeError:
        raise requests.exceptions.ContentDecodingError("the answer cannot be decoded") from None
    return bytes(body)


def call_rereading(
    credentials: Credentials,
    reread: Callable[[], object] | None,
    send: Callable[[], Answer],
    refuses_client: Callable[[Answer], bool],
) -> Answer:
    """``send()``; when the answer refuses our client (``refuses_client``), read the binding
    again once (``reread``) and, if that brought other credentials, ``send()`` once more
    with them. Rotated credentials then cost no failed request, even before the binding
    watcher has seen the new files. (A failed TLS handshake is handled the same way by the
    session's :class:`ClientCertificateAdapter`.)"""
    before = credentials.identity, credentials.secret
    answer = send()
    if reread is None or not refuses_client(answer):
        return answer
    reread()
    if (credentials.identity, credentials.secret) == before:
        return answer
    logger.info("Retrying with the credentials read again after our client was refused")
    return send()
