"""The cost of a protected request on a cache hit, against the same route unprotected,
and against what users would otherwise run on every request.

Run: ``python -m benchmarks.hot_path [--quick]`` (starts the IAS emulator and a
redis-server). Every variant serves the same route with the same ``Authorization`` header
through Flask's test client; the figure that matters is the ratio to the bare route, and
the *added* cost of each protection (its time minus the bare route's), compared between
protections:

- this library on a cache hit, with its in-process cache, Redis with the in-process tier,
  and Redis only;
- a naive middleware: a ``before_request`` that verifies the public token with python-jose
  on every request (the JWKS fetched once), which is what hand-written Flask code does;
- a JSON view that reads ``current_token`` three times (``claims["aud"]``,
  ``claims.get("sub")``, ``from_cache``), against its unprotected twin, which builds the
  same JSON from the same values held in a plain dict: the cost of the hook plus the
  proxy reads a real view makes;
- SAP's ``sap-xssec`` (``create_security_context_ias``) validating the token on every
  request, its key cache warm. It is a benchmark-only dependency
  (``pip install -r benchmarks/requirements.txt``); without it that row is skipped.

sap-xssec trusts an issuer only as ``https://<tenant>.<domain>``; the emulator's issuer has
no tenant label, so sap-xssec's token also carries ``ias_iss = https://127.0.0.1:<port>``
(preferred to ``iss``; the emulator's certificate names 127.0.0.1) and its credentials name
the domain ``0.0.1:<port>``: it then runs every check it runs against a real tenant. That
token is the others' plus one claim (about 50 bytes more in the header).

Each figure is the CPU time of the benchmark's thread per request, the least of several
interleaved rounds (see :func:`benchmarks._common.interleaved_costs`): on a shared machine
the wall clock mostly measures the neighbours. Variants that wait for Redis are timed by
the wall clock instead, against the bare route's wall clock.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import os
import pstats
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask, abort, g, jsonify, request
from jose import jwt
from jose.exceptions import JOSEError

from flask_ias_pkce import IASPKCE, current_token
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.redis_server import RedisServer

from ._common import Figure, interleaved_costs, ratio, report

SECRET = "benchmark-cache-secret-0123456789-0123456789"
SECTION = "1 hot path (in-process)"
SAP_MISSING = "sap-xssec not installed: pip install -r benchmarks/requirements.txt"

BARE = "bare route (baseline)"
OURS = "protected, in-process cache"
OURS_GROUPS = "protected + require_groups, in-process cache"
OURS_REDIS_L1 = "protected, Redis + in-process tier"
OURS_REDIS_ONLY = "protected, Redis only (wall clock)"
NAIVE_JOSE = "naive middleware: python-jose verify on every request"
SAP_XSSEC = "SAP sap-xssec per-request IAS validation"
JSON_TWIN = "JSON view, 3 reads, unprotected twin"
JSON_OURS = "JSON view, 3 reads of current_token, protected"
#: Variants that wait for another process: their CPU time would leave the wait out.
WALL_CLOCK = {OURS_REDIS_ONLY}
#: Targets on a cache hit (in-process cache), against the baseline of the same run.
ADDED_MICROS_TARGET = 8.0
JSON_RATIO_TARGET = 1.10


def ias_config(ias: IASEmulator, **more: Any) -> dict[str, Any]:
    """Explicit ``IAS_PKCE_*`` settings for the emulator's binding, plus ``more``."""
    binding = ias.binding
    return {
        "IAS_PKCE_IAS_URL": binding["url"],
        "IAS_PKCE_CLIENT_ID": binding["clientid"],
        "IAS_PKCE_CERTIFICATE": binding["certificate"],
        "IAS_PKCE_KEY": binding["key"],
        "IAS_PKCE_DOMAINS": binding["domains"],
        "IAS_PKCE_XSUAA_CLIENT_ID": ias.xsuaa_client_id,
        "IAS_PKCE_ACCEPTED_AUDIENCES": [ias.public_client_id],
        "IAS_PKCE_VERIFY": ias.ca_file,
        **more,
    }


def protected_app(ias: IASEmulator, *, groups: tuple[str, ...] = (), **config: Any) -> Flask:
    """``/api/me`` protected by flask-ias-pkce (and ``require_groups(*groups)`` when
    given); its view reads the token's claims."""
    app = Flask("protected")
    app.config.update(ias_config(ias, **config))
    ias_pkce = IASPKCE(app)

    def me() -> str:
        return str(current_token.claims.get("sub"))

    app.get("/api/me")(ias_pkce.require_groups(*groups)(me) if groups else me)

    return app


def python_jose_app(ias: IASEmulator) -> Flask:
    """The hand-written alternative: the JWKS fetched once at start-up, then every request
    verifies the bearer token's signature, expiry, issuer and audience with python-jose."""
    app = Flask("python_jose")
    jwks = requests.get(ias.url + "/oauth2/certs", verify=ias.ca_file, timeout=10).json()
    keys = {key["kid"]: key for key in jwks["keys"]}

    @app.before_request
    def verify() -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            abort(401)
        try:
            key = keys[jwt.get_unverified_header(token)["kid"]]
            g.claims = jwt.decode(
                token, key, algorithms=["RS256"], audience=ias.public_client_id, issuer=ias.issuer
            )
        except (JOSEError, KeyError):
            abort(401)

    @app.get("/api/me")
    def me() -> str:
        return str(g.claims.get("sub"))

    return app


def sap_xssec_app(ias: IASEmulator) -> Flask | None:
    """SAP's library on every request, as its README shows it; ``None`` when sap-xssec is
    not installed. Its verification keys are fetched once and kept in its own cache."""
    try:
        xssec = importlib.import_module("sap.xssec")  # benchmark-only, untyped
    except ImportError:
        return None
    create_security_context_ias = xssec.create_security_context_ias
    app = Flask("sap_xssec")
    credentials = {
        # The audience it checks: the public client's id, as ours accepts.
        "clientid": ias.public_client_id,
        "domains": [sap_domain(ias)],
        "url": ias.url,
    }

    @app.before_request
    def verify() -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            abort(401)
        try:
            g.claims = create_security_context_ias(token, credentials).token_payload
        except (ValueError, RuntimeError):
            abort(401)

    @app.get("/api/me")
    def me() -> str:
        return str(g.claims.get("sub"))

    return app


def sap_domain(ias: IASEmulator) -> str:
    """The domain under which sap-xssec sees ``https://127.0.0.1:<port>`` as tenant ``127``."""
    return f"0.0.1:{urlsplit(ias.url).port}"


def sap_xssec_token(ias: IASEmulator) -> str:
    """A public token with the ``ias_iss`` sap-xssec needs to trust the emulator (see above)."""
    return ias.issue_public_token(ias_iss=f"https://127.0.0.1:{urlsplit(ias.url).port}")


@contextlib.contextmanager
def trusting_emulator_ca(ias: IASEmulator) -> Iterator[None]:
    """sap-xssec fetches keys with httpx, which trusts ``SSL_CERT_FILE``; our library passes
    its CA per request and is not affected."""
    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = ias.ca_file
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = before


def bare_app() -> Flask:
    """``/api/me`` with no protection: the baseline."""
    app = Flask("bare")

    @app.get("/api/me")
    def me() -> str:
        return "someone"

    return app


def request_of(app: Flask, token: str) -> Callable[[], None]:
    """One ``GET /api/me`` with ``token`` through ``app``'s test client; it must answer 200."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def run() -> None:
        answer = client.get("/api/me", headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"benchmark request failed: {answer.status_code}")

    run()  # the first request exchanges; every timed one is a cache hit
    return run


def redis_config(redis: RedisServer) -> dict[str, Any]:
    """Our safe Redis backend at ``redis``, with the shared secret it requires."""
    return {
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_URL": redis.url,
        "IAS_PKCE_CACHE_SECRET": SECRET,
    }


def json_view_runs(ias: IASEmulator, token: str) -> dict[str, Callable[[], None]]:
    """The three-read JSON view, protected (in-process cache) and its unprotected twin."""
    protected = Flask("json_protected")
    protected.config.update(ias_config(ias))
    IASPKCE(protected)

    @protected.get("/api/me")
    def me() -> Any:
        return jsonify(
            aud=current_token.claims["aud"],
            sub=current_token.claims.get("sub"),
            from_cache=current_token.from_cache,
        )

    runs = {JSON_OURS: request_of(protected, token)}
    # The twin answers the same JSON from the same values, read from a plain object.
    seen = protected.test_client().get("/api/me", headers={"Authorization": f"Bearer {token}"})
    held = _Held(seen.get_json())
    twin = Flask("json_twin")

    @twin.get("/api/me")
    def twin_me() -> Any:
        return jsonify(
            aud=held.claims["aud"], sub=held.claims.get("sub"), from_cache=held.from_cache
        )

    runs[JSON_TWIN] = request_of(twin, token)
    return runs


class _Held:
    """What the twin view reads: the protected view's answer, as plain attributes."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.claims = {"aud": answer["aud"], "sub": answer["sub"]}
        self.from_cache = answer["from_cache"]


def json_view_figures(micros: dict[str, float]) -> list[Figure]:
    """The three-read JSON view's ratio to its twin, against its target."""
    to_twin = micros[JSON_OURS] / micros[JSON_TWIN]
    return [
        Figure(
            SECTION,
            "JSON view reading current_token 3 times / unprotected twin (µs)",
            f"{ratio(to_twin, 3)} ({micros[JSON_OURS]:.1f} / {micros[JSON_TWIN]:.1f})",
            f"<= {JSON_RATIO_TARGET:.2f}x",
            to_twin <= JSON_RATIO_TARGET,
        )
    ]


@contextlib.contextmanager
def variants(ias: IASEmulator, redis: RedisServer) -> Iterator[dict[str, Callable[[], None]]]:
    """Every variant's request, warmed up (its first request has exchanged or fetched keys)."""
    token = ias.issue_public_token()
    shared = redis_config(redis)
    runs = {
        BARE: request_of(bare_app(), token),
        OURS: request_of(protected_app(ias), token),
        # The emulator's first user is in "Admins": the check passes on every request.
        OURS_GROUPS: request_of(protected_app(ias, groups=("Auditors", "Admins")), token),
        OURS_REDIS_L1: request_of(protected_app(ias, **shared), token),
        OURS_REDIS_ONLY: request_of(protected_app(ias, **shared, IAS_PKCE_L1_SIZE=0), token),
        NAIVE_JOSE: request_of(python_jose_app(ias), token),
        **json_view_runs(ias, token),
    }
    with trusting_emulator_ca(ias):
        sap = sap_xssec_app(ias)
        if sap is not None:
            runs[SAP_XSSEC] = request_of(sap, sap_xssec_token(ias))
        yield runs


def measure(rounds: int, calls: int) -> list[tuple[str, float, float]]:
    """``(variant, µs per request, ratio to bare)`` for each variant (no sap-xssec row
    when it is not installed): CPU time, but wall-clock time (against the bare route's)
    for the variants in :data:`WALL_CLOCK`."""
    with IASEmulator() as ias, RedisServer() as redis, variants(ias, redis) as runs:
        costs = interleaved_costs(runs, rounds=rounds, calls=calls)
    results = []
    for name, cost in costs.items():
        if name in WALL_CLOCK:
            seconds, base = cost.wall, costs[BARE].wall
        else:
            seconds, base = cost.cpu, costs[BARE].cpu
        results.append((name, seconds * 1e6, seconds / base))
    return results


def calls_per_request(run: Callable[[], None], requests: int = 200) -> float:
    """Python function calls one request of ``run`` makes (cProfile's count): unlike a
    time, this does not depend on how busy the machine is."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(requests):
        run()
    profile.disable()
    return float(pstats.Stats(profile).total_calls) / requests


def call_count_figures() -> list[Figure]:
    """Function calls a cache hit adds to the bare route, and the three-read JSON view to
    its twin."""
    with IASEmulator() as ias:
        token = ias.issue_public_token()
        runs = {
            BARE: request_of(bare_app(), token),
            OURS: request_of(protected_app(ias), token),
            **json_view_runs(ias, token),
        }
        counts = {name: calls_per_request(run) for name, run in runs.items()}
    return [
        Figure(
            SECTION,
            "function calls added per request (cProfile): cache hit; JSON view vs twin",
            f"{counts[OURS] - counts[BARE]:.0f}; {counts[JSON_OURS] - counts[JSON_TWIN]:.0f}",
        )
    ]


def _sizes(quick: bool) -> tuple[int, int]:
    return (3, 300) if quick else (15, 1000)


def figures(
    quick: bool = False, *, rounds: int | None = None, calls: int | None = None
) -> list[Figure]:
    """The section's lines: each variant's median and ratio to bare, each protection's
    added cost per request, and how many times less ours adds than the alternatives."""
    default_rounds, default_calls = _sizes(quick)
    rounds = rounds or default_rounds
    calls = calls or default_calls
    results = measure(rounds, calls)
    micros = {name: value for name, value, _ in results}
    lines = [Figure(SECTION, "rounds x requests per variant", f"{rounds} x {calls}")]
    lines += [
        Figure(
            SECTION,
            f"{name}: µs/request, ratio to bare",
            f"{value:.1f}, {ratio(to_bare, 3)}",
            "<= 1.15x" if name == OURS else "",
            to_bare <= 1.15 if name == OURS else None,
        )
        for name, value, to_bare in results
        if name not in (JSON_TWIN, JSON_OURS)
    ]
    if SAP_XSSEC not in micros:
        print(SAP_MISSING, flush=True)
    added = {
        name: value - micros[BARE]
        for name, value in micros.items()
        if name not in (BARE, JSON_TWIN, JSON_OURS)
    }
    lines += [
        Figure(
            SECTION,
            f"added µs/request vs bare: {name}",
            f"{value:.1f}",
            f"<= {ADDED_MICROS_TARGET:.0f}" if name == OURS else "",
            value <= ADDED_MICROS_TARGET if name == OURS else None,
        )
        for name, value in added.items()
    ]
    lines.append(
        Figure(
            SECTION,
            "added µs/request by require_groups (vs protected)",
            f"{micros[OURS_GROUPS] - micros[OURS]:.1f}",
        )
    )
    lines += json_view_figures(micros)
    lines += call_count_figures()
    ours = added[OURS]
    jose_times = added[NAIVE_JOSE] / ours if ours > 0 else None
    lines.append(
        Figure(
            SECTION,
            "added cost, python-jose / ours (in-process)",
            ratio(jose_times) if jose_times is not None else "ours within noise of bare",
            ">= 5x",
            jose_times is None or jose_times >= 5,
        )
    )
    if SAP_XSSEC in added:
        sap_times = added[SAP_XSSEC] / ours if ours > 0 else None
        lines.append(
            Figure(
                SECTION,
                "added cost, sap-xssec / ours (in-process)",
                ratio(sap_times) if sap_times is not None else "ours within noise of bare",
                ">= 5x and > python-jose's",
                sap_times is None
                or (sap_times >= 5 and (jose_times is None or sap_times > jose_times)),
            )
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: rough figures")
    args = parser.parse_args(argv)
    print(
        report(
            "Hot path on a cache hit (least CPU time of interleaved rounds)",
            figures(args.quick, rounds=args.rounds, calls=args.calls),
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
