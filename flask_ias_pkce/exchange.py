"""The jwt-bearer exchange at IAS (RFC 7523): a public token in, a token for the app out."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import requests

from . import transport
from .bindings import IdentityBinding
from .constants import DISCOVERY_TTL_SECONDS, JWT_BEARER_GRANT
from .credentials import ClientIdentity, Credentials, identity_credentials
from .errors import IASRefused, InvalidToken

logger = logging.getLogger("flask_ias_pkce")

# SAP/cloud-sdk-java#1186: IAS has answered a valid jwt-bearer request with this error
# once and accepted it on an immediate retry.
_TRANSIENT_DESCRIPTION = "missing web session"
#: Token endpoints of this many issuers (tenants) are remembered.
_MAX_ENDPOINTS = 256


def _is_transient(answer: transport.Answer) -> bool:
    body = answer.json()
    if answer.status != 400 or not isinstance(body, dict):
        return False
    description = body.get("error_description")
    return (
        body.get("error") == "invalid_client"
        and isinstance(description, str)
        and _TRANSIENT_DESCRIPTION in description.lower()
    )


def _refuses_client(answer: transport.Answer) -> bool:
    return answer.status in (400, 401) and transport.error_code(answer) == "invalid_client"


class ExchangeClient:
    """Exchanges public tokens at IAS with the app's own binding.

    One keep-alive :class:`requests.Session` serves every exchange, so the TLS handshake
    (with the client certificate) is paid once per connection, not once per token.
    """

    def __init__(
        self,
        binding: IdentityBinding,
        *,
        policy: transport.HttpPolicy,
        use_token: str,
        session: requests.Session | None = None,
        resources: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        credentials: Credentials | None = None,
    ) -> None:
        self._binding = binding
        self._policy = policy
        self._use_token = use_token
        self._resources = resources
        self._clock = clock
        self._endpoints: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._endpoints_lock = threading.Lock()
        #: The certificate or secret in use; replaced when the binding's files rotate.
        self.credentials = credentials or identity_credentials(binding)
        self.session = session or transport.new_session(
            identity=self._identity, reread=self._reread
        )
        #: Reads the binding again (set by the extension); called once when IAS refuses
        #: our client or the TLS handshake fails, before the request is answered.
        self.reread: Callable[[], object] | None = None

    def exchange(self, assertion: str, *, issuer: str, app_tid: str | None) -> str:
        """Exchange ``assertion`` at the token endpoint of ``issuer`` and return the token
        named by ``IAS_PKCE_USE_TOKEN``.

        ``issuer`` must have passed the domains check: for a multi-tenant app it is the
        consumer's tenant, whose endpoint must answer (not the provider's binding URL).
        """
        form = [
            ("grant_type", JWT_BEARER_GRANT),
            ("client_id", self._binding.client_id),
            ("assertion", assertion),
            ("token_format", "jwt"),
            ("refresh_expiry", "0"),
        ]
        if app_tid:
            form.append(("app_tid", app_tid))
        # RFC 8707 and IAS: one resource parameter per URN, as @sap/xssec 4 sends them.
        form.extend(("resource", resource) for resource in self._resources)
        endpoint = self.token_endpoint(issuer)

        def send() -> transport.Answer:
            headers = {"Accept": "application/json"}
            credentials = self.credentials
            if credentials.identity is None:
                headers["Authorization"] = transport.basic_authorization(
                    self._binding.client_id, credentials.secret or ""
                )
            return transport.call(
                self.session,
                "POST",
                endpoint,
                policy=self._policy,
                what="exchange",
                retry_on=_is_transient,
                data=form,
                headers=headers,
            )

        answer = transport.call_rereading(self.credentials, self.reread, send, _refuses_client)
        return self._token_of(answer)

    def _identity(self) -> ClientIdentity | None:
        return self.credentials.identity

    def _reread(self) -> None:
        if self.reread is not None:
            self.reread()

    def token_endpoint(self, issuer: str) -> str:
        """The ``token_endpoint`` of ``issuer``'s discovery document, which must be on the
        issuer's own origin (kept for an hour per issuer)."""
        now = self._clock()
        known = self._endpoints.get(issuer)
        if known is not None and known[1] > now:
            return known[0]
        answer = transport.call(
            self.session,
            "GET",
            f"{issuer}/.well-known/openid-configuration",
            policy=self._policy,
            what="discovery",
            headers={"x-client_id": self._binding.client_id},
        )
        document = answer.json() if answer.status == 200 else None
        endpoint = document.get("token_endpoint") if isinstance(document, dict) else None
        if (
            not isinstance(endpoint, str)
            or not endpoint.startswith(issuer + "/")
            or not endpoint.isprintable()
            or any(character in endpoint for character in " \\#")
        ):
            # The assertion goes to the issuer we trust, nowhere else.
            raise IASRefused(
                "The identity service's discovery document is unusable", reason="discovery_bad"
            )
        with self._endpoints_lock:
            self._endpoints[issuer] = (endpoint, now + DISCOVERY_TTL_SECONDS)
            self._endpoints.move_to_end(issuer)
            if len(self._endpoints) > _MAX_ENDPOINTS:
                self._endpoints.popitem(last=False)
        return endpoint

    def _token_of(self, answer: transport.Answer) -> str:
        if answer.status == 200:
            token = transport.answer_token(answer, self._use_token)
            if token is not None:
                return token
            # Logged in detail here at DEBUG; the refusal's reason code reaches the log anyway.
            logger.debug("Exchange answer holds no usable %s", self._use_token)
            raise IASRefused(
                "The identity service's answer holds no usable token", reason="exchange_no_token"
            )
        code = transport.error_code(answer) or "unknown"
        if answer.status == 400 and code == "invalid_grant":
            raise InvalidToken(
                "The identity service does not accept this token", reason="ias_invalid_grant"
            )
        logger.debug("Exchange refused: IAS answered %d %s", answer.status, code)
        raise IASRefused(
            "The identity service refused to exchange the token",
            reason=f"exchange_refused_{code}",
        )

    def close(self) -> None:
        """Close the keep-alive connections."""
        self.session.close()
