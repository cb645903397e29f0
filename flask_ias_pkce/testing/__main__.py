"""``python -m flask_ias_pkce.testing``: a local IAS in the foreground, to run an app by hand.

It starts an :class:`~flask_ias_pkce.testing.IASEmulator`, prints what an app needs to be
bound to it (the URL, the CA file, ``VCAP_SERVICES`` as shell ``export`` lines), a fresh
public token for ``curl`` and a login URL for a browser, and serves until Ctrl-C::

    python -m flask_ias_pkce.testing --port 8443
    python -m flask_ias_pkce.testing --secret --users alice@example.com,bob@example.com
    python -m flask_ias_pkce.testing --json      # one JSON object, for scripts
    python -m flask_ias_pkce.testing --subscriber customer   # a subscriber tenant too

For development and tests only: its tokens and certificates are worthless anywhere else.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlencode

from flask_ias_pkce.testing._tenant import s256
from flask_ias_pkce.testing.emulator import DEFAULT_REDIRECT_URIS, DEFAULT_USERS, IASEmulator

#: Where Flask's development server runs an app: allowed CORS origins and the redirect.
_DEFAULT_ORIGINS = ("http://localhost:5000", "http://127.0.0.1:5000")
_DEFAULT_REDIRECT = "http://localhost:5000/callback"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flask_ias_pkce.testing",
        description="Run the IAS emulator in the foreground until Ctrl-C and print how to "
        "bind an app to it. For development and tests only.",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="HTTPS port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--secret",
        action="store_true",
        help="a SECRET binding (client id and secret) instead of a client certificate",
    )
    parser.add_argument(
        "--users",
        default=",".join(DEFAULT_USERS),
        help="comma-separated e-mail addresses of the users who can sign in; the first is "
        "the default (default: %(default)s)",
    )
    parser.add_argument(
        "--origin",
        action="append",
        dest="origins",
        metavar="ORIGIN",
        help="an origin whose browser apps may call the token endpoint (CORS); repeatable "
        f"(default: {', '.join(_DEFAULT_ORIGINS)})",
    )
    parser.add_argument(
        "--redirect-uri",
        default=_DEFAULT_REDIRECT,
        help="redirect_uri of the printed login URL, registered for the public client "
        "besides the default (default: %(default)s)",
    )
    parser.add_argument(
        "--subscriber",
        action="append",
        dest="subscribers",
        default=[],
        metavar="NAME",
        help="a subscriber tenant of the (multitenant) application, served at "
        "https://NAME.localhost:<port> with its own keys and app_tid; repeatable",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (url, ca_file, vcap_services, environment, "
        "public_token, login_url, code_verifier, subscribers) instead of the text",
    )
    return parser


def _users(text: str) -> dict[str, dict[str, Any]]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--users names no user")
    # Known users keep their claims (names, groups); new ones get only their e-mail.
    return {name: dict(DEFAULT_USERS.get(name, {})) for name in names}


def _subscribers(emulator: IASEmulator) -> dict[str, dict[str, str]]:
    """Each subscriber tenant's URL, ``app_tid`` and a public token of its first user."""
    return {
        name: {
            "url": emulator.tenant_url(name),
            "app_tid": emulator.tenant_app_tid(name),
            "public_token": emulator.issue_public_token(tenant=name),
        }
        for name in emulator.subscribers
    }


def _login(emulator: IASEmulator, redirect_uri: str) -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    query = {
        "response_type": "code",
        "client_id": emulator.public_client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        "state": secrets.token_urlsafe(12),
        "scope": "openid email",
    }
    return f"{emulator.authorize_endpoint}?{urlencode(query)}", verifier


def _print_text(
    out: TextIO, emulator: IASEmulator, token: str, login_url: str, verifier: str, redirect: str
) -> None:
    method = "client secret" if emulator.credential_type == "SECRET" else "client certificate"
    lines = [
        f"IAS emulator at {emulator.url}  (Ctrl-C stops it; development and tests only)",
        f"  CA file         {emulator.ca_file}",
        f"  app client id   {emulator.client_id}  (authenticates by {method})",
        f"  public client   {emulator.public_client_id}",
        f"  XSUAA client    {emulator.xsuaa_client_id}",
        f"  users           {', '.join(emulator.users)}",
        f"  CORS origins    {', '.join(sorted(emulator.allowed_origins)) or '(none)'}",
        f"  redirect URIs   {', '.join(sorted(emulator.redirect_uris))}",
        "",
        "Bind an app to it (paste into the shell that runs the app; Flask's",
        "app.config.from_prefixed_env() reads the FLASK_IAS_PKCE_* lines):",
        "",
        *(
            f"export {name}={shlex.quote(value)}"
            for name, value in emulator.app_environment().items()
        ),
        "",
        f"A public token of {emulator.users[0]} (as the PKCE flow gives it):",
        "",
        token,
        "",
        *_subscriber_lines(emulator),
        "Sign in with PKCE in a browser (trust the CA file, or accept the certificate):",
        "",
        login_url,
        "",
        "then trade the code from the redirect for tokens:",
        "",
        f"curl --cacert {shlex.quote(emulator.ca_file)} {emulator.token_endpoint} "
        f"-d grant_type=authorization_code -d client_id={shlex.quote(emulator.public_client_id)} "
        f"-d redirect_uri={shlex.quote(redirect)} -d code_verifier={verifier} -d code=<CODE>",
        "",
    ]
    out.write("\n".join(lines) + "\n")


def _subscriber_lines(emulator: IASEmulator) -> list[str]:
    """The text's block on subscriber tenants (none without them)."""
    subscribers = _subscribers(emulator)
    if not subscribers:
        return []
    lines = [
        "Subscriber tenants (<name>.localhost is the loopback address on most systems,",
        "RFC 6761; where it is not, add it to /etc/hosts or use curl --resolve):",
        "",
    ]
    for name, tenant in subscribers.items():
        lines += [
            f"  {name:14}  {tenant['url']}  app_tid {tenant['app_tid']}",
            f"  {'':14}  public token: {tenant['public_token']}",
        ]
    return [*lines, ""]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM; return the exit status."""
    out = out or sys.stdout
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        users = _users(arguments.users)
        emulator = IASEmulator(
            credential_type="SECRET" if arguments.secret else "X509_GENERATED",
            users=users,
            allowed_origins=arguments.origins or _DEFAULT_ORIGINS,
            redirect_uris=(*DEFAULT_REDIRECT_URIS, arguments.redirect_uri),
            subscribers=arguments.subscribers,
            port=arguments.port,
        )
        emulator.start()
    except (ValueError, argparse.ArgumentTypeError, OSError) as error:
        parser.error(str(error))
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.signal(number, _stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        token = emulator.issue_public_token()
        login_url, verifier = _login(emulator, arguments.redirect_uri)
        if arguments.json:
            document = {
                "url": emulator.url,
                "ca_file": emulator.ca_file,
                "vcap_services": emulator.vcap_services(),
                "environment": emulator.app_environment(),
                "public_token": token,
                "login_url": login_url,
                "code_verifier": verifier,
                "redirect_uri": arguments.redirect_uri,
                "subscribers": _subscribers(emulator),
            }
            out.write(json.dumps(document) + "\n")
        else:
            _print_text(out, emulator, token, login_url, verifier, arguments.redirect_uri)
        out.flush()
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
    out.write("IAS emulator stopped\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
