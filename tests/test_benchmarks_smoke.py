"""The CI smoke run of the benchmarks: ``python -m benchmarks --quick`` still works.

It checks that every benchmark runs and reports, not the figures: a shared CI machine is
too noisy for that (the full run, ``python -m benchmarks``, is for people to read).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
SECTIONS = (
    "1 hot path (in-process)",
    "2 over HTTP (gunicorn, 2 workers)",
    "3 exchange (mTLS)",
    "4 burst (one fresh token)",
    "5 growth (cached tokens)",
    "6 network (IAS 20 ms away)",
    "7 shared cache: hit cost per Redis topology",
    "8 forged tokens",
)


def test_quick_run_reports_every_section() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    assert "CPUs" in finished.stdout, output  # the machine line
    for section in SECTIONS:
        assert section in finished.stdout, f"{section!r} missing from:\n{output}"
    for figure in (
        "added cost, python-jose / ours",
        "JSON view reading current_token 3 times / unprotected twin",
        "function calls added per request",
        "protected / bare throughput",
        "new connection / keep-alive latency",
        "wave exchanges",
        "wave latency p50 / p99 ms",
        "NO single flight",
        "bytes per cached token",
        "TLS / plain; cluster / plain",
        "calls to IAS caused by",
    ):
        assert figure in finished.stdout, f"{figure!r} missing from:\n{output}"


def test_load_run_keeps_its_promises() -> None:
    # Unlike the figures above, the load run's checks are exact, so they are held here:
    # no valid request refused, no 5xx, one exchange per distinct valid token.
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--quick", "--workers", "2"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    assert "exchanges seen by IAS" in finished.stdout, output
    assert " NO" not in finished.stdout, output
