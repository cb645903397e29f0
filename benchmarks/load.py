"""A load run of the example app: several gunicorn workers sharing Redis, driven by wrk
with a pool of valid and a pool of invalid tokens at the same time.

Run: ``python -m benchmarks.load [--quick] [--seconds N] [--workers N]``. Needs ``wrk``
and ``redis-server``. It prints how many requests each pool sent, how many valid ones were
not answered 2xx (must be 0), how many answers were 5xx (must be 0), how many exchanges
the emulator saw (must be one per distinct valid token, whatever the concurrency), and the
workers' memory before and after. It exits 1 when any of those checks fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jose import jwt

from example_app.demo import demo_environment
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.gunicorn import GunicornServer
from flask_ias_pkce.testing.redis_server import RedisServer

from ._common import Figure, quick_parser, report, require_program

SECTION = "load (example app, gunicorn + Redis)"
SCRIPT = Path(__file__).with_name("load.lua")
REPOSITORY = Path(__file__).resolve().parent.parent
_LINE = re.compile(r"LOAD (.*)")
SECRET = "load-test-cache-secret-0123456789-0123456789"


@dataclass(frozen=True)
class Counts:
    """What one wrk run saw."""

    requests: int
    ok: int
    client_errors: int
    server_errors: int
    socket_errors: int
    p99_ms: float


def invalid_tokens(ias: IASEmulator) -> list[str]:
    """Tokens that must each be refused locally: the kinds attackers and bugs send."""
    valid = ias.issue_public_token()
    header, payload, signature = valid.split(".")
    claims = jwt.get_unverified_claims(valid)
    return [
        f"{header}.{payload}.{signature[::-1]}",  # signature of nothing
        ias.issue_public_token(exp=int(claims["iat"]) - 7200, iat=int(claims["iat"]) - 10800),
        ias.issue_public_token(aud="another-app"),
        ias.foreign_key_token(),
        ias.sign({**claims, "iss": "https://localhost.evil.example"}),
        "not-a-jwt",
        f"{header}.{payload}",
    ]


def worker_memory(master: int) -> dict[int, int]:
    """Resident memory (KiB) of each worker process of the gunicorn ``master``."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    memory: dict[int, int] = {}
    for child in children:
        status = Path(f"/proc/{child}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        if found:
            memory[int(child)] = int(found.group(1))
    return memory


def drive(wrk: str, url: str, tokens: Sequence[str], seconds: int, connections: int) -> Counts:
    """Run wrk against ``url`` for ``seconds`` with ``tokens`` in turn; count the answers."""
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as pool:
        pool.write("\n".join(tokens) + "\n")
    try:
        finished = subprocess.run(
            [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(SCRIPT), url],
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + 60,
            env={**os.environ, "LOAD_TOKENS": pool.name},
        )
    finally:
        os.unlink(pool.name)
    found = _LINE.search(finished.stdout)
    if finished.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed:\n{finished.stdout}{finished.stderr}")
    fields = dict(item.split("=") for item in found.group(1).split())
    return Counts(
        requests=int(fields["requests"]),
        ok=int(fields["2xx"]),
        client_errors=int(fields["4xx"]),
        server_errors=int(fields["5xx"]),
        socket_errors=int(fields["socket_errors"]),
        p99_ms=float(fields["p99_ms"]),
    )


def app_environment(ias: IASEmulator, redis: RedisServer) -> Mapping[str, str]:
    """The example app's environment, with the shared Redis cache."""
    return {
        **os.environ,
        **demo_environment(ias, "http://127.0.0.1:9"),
        "IAS_PKCE_CACHE_TYPE": "RedisCache",
        "IAS_PKCE_CACHE_REDIS_URL": redis.url,
        "IAS_PKCE_CACHE_SECRET": SECRET,
    }


def run(*, seconds: int, workers: int, valid_tokens: int) -> tuple[list[Figure], bool]:
    """Drive the app with both pools at once; return the figures and whether all held."""
    wrk = require_program("wrk", "install it with `apt-get install wrk`")
    with IASEmulator() as ias, RedisServer() as redis:
        valid = [ias.issue_public_token() for _ in range(valid_tokens)]
        invalid = invalid_tokens(ias)
        with GunicornServer(
            "example_app:create_app()",
            environment=app_environment(ias, redis),
            chdir=REPOSITORY,
            workers=workers,
        ) as server:
            assert server.process is not None
            before = worker_memory(server.process.pid)
            # Both pools at the same time: refusals must not disturb valid traffic.
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = {
                    "valid": pool.submit(drive, wrk, server.url, valid, seconds, 8),
                    "invalid": pool.submit(drive, wrk, server.url, invalid, seconds, 4),
                }
                runs = {name: future.result() for name, future in futures.items()}
            after = worker_memory(server.process.pid)
        exchanges = len(ias.exchanges)
    good, bad = runs["valid"], runs["invalid"]
    checks = {
        "valid not 2xx": good.requests - good.ok,
        "5xx": good.server_errors + bad.server_errors,
        "invalid answered 2xx": bad.ok,
        "socket errors": good.socket_errors + bad.socket_errors,
    }
    figures = [
        Figure(SECTION, "duration, workers", f"{seconds} s, {workers} sync workers"),
        Figure(SECTION, "requests with valid tokens (distinct)",
               f"{good.requests} ({valid_tokens})"),
        Figure(SECTION, "requests with invalid tokens (kinds)", f"{bad.requests} ({len(invalid)})"),
        Figure(SECTION, "valid requests not answered 2xx", str(checks["valid not 2xx"]), "0",
               checks["valid not 2xx"] == 0),
        Figure(SECTION, "5xx answers (both pools)", str(checks["5xx"]), "0", checks["5xx"] == 0),
        Figure(SECTION, "invalid requests answered 2xx", str(bad.ok), "0", bad.ok == 0),
        Figure(SECTION, "socket errors", str(checks["socket errors"]), "0",
               checks["socket errors"] == 0),
        Figure(SECTION, "exchanges seen by IAS", str(exchanges), f"{valid_tokens}",
               exchanges == valid_tokens),
        Figure(SECTION, "p99 latency, valid / invalid (ms)",
               f"{good.p99_ms:.1f} / {bad.p99_ms:.1f}"),
        Figure(SECTION, "worker memory before (KiB each)", ", ".join(map(str, before.values()))),
        Figure(SECTION, "worker memory after (KiB each)", ", ".join(map(str, after.values()))),
    ]  # fmt: skip
    return figures, all(figure.met is not False for figure in figures)


def main(argv: list[str] | None = None) -> None:
    parser = quick_parser(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--valid-tokens", type=int, default=50)
    args = parser.parse_args(argv)
    seconds = 3 if args.quick else args.seconds
    figures, held = run(seconds=seconds, workers=args.workers, valid_tokens=args.valid_tokens)
    print(report("flask-ias-pkce load run", figures), flush=True)
    raise SystemExit(0 if held else 1)


if __name__ == "__main__":
    main()
