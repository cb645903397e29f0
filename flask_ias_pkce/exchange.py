"""The jwt-bearer exchange at IAS (RFC 7523): a public token in, a token for the app out."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import requests

from . import http
from .bindings import IdentityBinding
from .constants import JWT_BEARER_GRANT
from .errors import IASRefused, InvalidToken

logger = logging.getLogger("flask_ias_pkce")

# SAP/cloud-sdk-java#1186: IAS has answered a valid jwt-bearer request with this error
# once and accepted it on an immediate retry.
_TRANSIENT_DESCRIPTION = "missing web session"


def _is_transient(answer: http.Answer) -> bool:
    body = answer.json()
    if answer.status != 400 or not isinstance(body, dict):
        return False
    description = body.get("error_description")
    return (
        body.get("error") == "invalid_client"
        and isinstance(description, str)
        and _TRANSIENT_DESCRIPTION in description.lower()
    )


class ExchangeClient:
    """Exchanges public tokens at IAS with the app's own binding.

    One keep-alive :class:`requests.Session` serves every exchange, so the TLS handshake
    (with the client certificate) is paid once per connection, not once per token.
    """

    def __init__(
        self,
        binding: IdentityBinding,
        *,
        policy: http.HttpPolicy,
        use_token: str,
        session: requests.Session | None = None,
    ) -> None:
        self._binding = binding
        self._policy = policy
        self._use_token = use_token
        self.session = session or (
            http.new_session(binding.certificate, binding.key)
            if binding.uses_certificate
            else http.new_session()
        )

    def exchange(self, assertion: str, *, issuer: str, app_tid: str | None) -> str:
        """Exchange ``assertion`` at the token endpoint of ``issuer`` and return the token
        named by ``IAS_PKCE_USE_TOKEN``.

        ``issuer`` must have passed the domains check: for a multi-tenant app it is the
        consumer's tenant, whose endpoint must answer (not the provider's binding URL).
        """
        form = {
            "grant_type": JWT_BEARER_GRANT,
            "client_id": self._binding.client_id,
            "assertion": assertion,
            "token_format": "jwt",
            "refresh_expiry": "0",
        }
        if app_tid:
            form["app_tid"] = app_tid
        headers = {"Accept": "application/json"}
        if not self._binding.uses_certificate:
            headers["Authorization"] = http.basic_authorization(
                self._binding.client_id, self._binding.client_secret or ""
            )
        answer = http.call(
            self.session,
            "POST",
            f"{issuer}/oauth2/token",
            policy=self._policy,
            what="exchange",
            retry_on=_is_transient,
            data=form,
            headers=headers,
        )
        return self._token_of(answer)

    def _token_of(self, answer: http.Answer) -> str:
        if answer.status == 200:
            body = answer.json()
            token = body.get(self._use_token) if isinstance(body, Mapping) else None
            if isinstance(token, str) and token.count(".") == 2:
                return token
            # Logged in detail here at DEBUG; the refusal's reason code reaches the log anyway.
            logger.debug("Exchange answer holds no usable %s", self._use_token)
            raise IASRefused(
                "The identity service's answer holds no usable token", reason="exchange_no_token"
            )
        code = http.error_code(answer) or "unknown"
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
