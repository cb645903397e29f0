"""The exchange itself: our keep-alive mTLS session against a new connection per exchange.

Run: ``python -m benchmarks.exchange [--quick]``. A cache miss costs one jwt-bearer call
to IAS. flask-ias-pkce sends every exchange over one keep-alive session whose TLS context
holds the client certificate (:class:`flask_ias_pkce.exchange.ExchangeClient`), so the
mTLS handshake is paid once per connection. The reference Node sample opens a new
connection (a new TLS handshake with the client certificate) for every exchange; here that
is a fresh ``requests.Session`` with ``cert=`` files per call. Both send the same form to
the emulator, each exchange with a new public token, taking turns; the figure is the ratio
of median latencies, and the emulator's connection count shows what each one opened.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import requests

from flask_ias_pkce.bindings import load_bindings
from flask_ias_pkce.exchange import ExchangeClient
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.transport import HttpPolicy

from ._common import Figure, ratio, run_alone
from .hot_path import ias_config

SECTION = "3 exchange (mTLS)"
KEEP_ALIVE = "keep-alive session (ours)"
NEW_CONNECTION = "new connection per exchange (Node sample)"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def keep_alive_exchange(ias: IASEmulator) -> tuple[Callable[[str], str], Callable[[], None]]:
    """Our exchange client as the extension builds it, and its ``close``."""
    binding = load_bindings(ias_config(ias), {}).identity
    client = ExchangeClient(binding, policy=HttpPolicy(verify=ias.ca_file), use_token="id_token")

    def exchange(public_token: str) -> str:
        return client.exchange(public_token, issuer=ias.issuer, app_tid=ias.app_tid)

    return exchange, client.close


def new_connection_exchange(ias: IASEmulator) -> Callable[[str], str]:
    """The same request on a new session, hence a new connection and TLS handshake."""
    certificate_files = ias.client_certificate_files

    def exchange(public_token: str) -> str:
        form = {
            "grant_type": JWT_BEARER,
            "client_id": ias.client_id,
            "assertion": public_token,
            "token_format": "jwt",
            "refresh_expiry": "0",
            "app_tid": ias.app_tid,
        }
        with requests.Session() as session:
            answer = session.post(
                ias.token_endpoint,
                data=form,
                headers={"Accept": "application/json"},
                cert=certificate_files,
                verify=ias.ca_file,
                timeout=(3.05, 10),
            )
        answer.raise_for_status()
        token: str = answer.json()["id_token"]
        return token

    return exchange


def measure(exchanges: int) -> dict[str, tuple[float, int]]:
    """``variant -> (median seconds per exchange, connections opened)``: ``exchanges`` timed
    exchanges each, after one warm-up exchange each (its connection counted, not its time)."""
    with IASEmulator() as ias:
        keep_alive, close = keep_alive_exchange(ias)
        try:
            variants = {KEEP_ALIVE: keep_alive, NEW_CONNECTION: new_connection_exchange(ias)}
            seconds: dict[str, list[float]] = {name: [] for name in variants}
            connections = dict.fromkeys(variants, 0)
            tokens = [ias.issue_public_token() for _ in range(exchanges + 1)]
            for turn, public_token in enumerate(tokens):
                for name, exchange in variants.items():
                    opened = ias.connections
                    start = time.perf_counter()
                    exchange(public_token)
                    elapsed = time.perf_counter() - start
                    connections[name] += ias.connections - opened
                    if turn:  # the first turn warms up (imports, TLS contexts): not timed
                        seconds[name].append(elapsed)
        finally:
            close()
    return {name: (statistics.median(seconds[name]), connections[name]) for name in variants}


def figures(quick: bool = False) -> Sequence[Figure]:
    """Median latency of each way to exchange, the ratio, and the connections each opened."""
    exchanges = 10 if quick else 100
    results = measure(exchanges)
    lines = [Figure(SECTION, "exchanges per variant (interleaved)", str(exchanges))]
    for name, (median, connections) in results.items():
        lines.append(
            Figure(
                SECTION,
                f"{name}: median ms, connections for {exchanges + 1} exchanges",
                f"{median * 1e3:.2f}, {connections}",
            )
        )
    faster = results[NEW_CONNECTION][0] / results[KEEP_ALIVE][0]
    # No target on loopback: the emulator signs in the same process, so its CPU time is
    # in both figures and the ratio says more about the machine than about connections.
    # The target is where the network is real: section 6, IAS 20 ms away.
    lines.append(
        Figure(
            SECTION, "new connection / keep-alive latency (loopback; see section 6)", ratio(faster)
        )
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    run_alone("The exchange: keep-alive mTLS against a new connection each time", figures, argv)


if __name__ == "__main__":
    main()
