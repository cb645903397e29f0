"""Every benchmark in one run, one table: ``python -m benchmarks [--quick]``.

Each section is also a module of its own (``python -m benchmarks.<name>``). A section that
cannot run (a missing program such as ``wrk``) is reported after the table and makes the
run fail, so that a CI smoke run notices.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from . import burst, exchange, forged, growth, hot_path, network, over_http, redis_topologies
from ._common import Figure, MissingProgramError, quick_parser, report

SECTIONS: dict[str, Callable[[bool], Sequence[Figure]]] = {
    "hot_path": hot_path.figures,
    "over_http": over_http.figures,
    "exchange": exchange.figures,
    "network": network.figures,
    "burst": burst.figures,
    "growth": growth.figures,
    "redis_topologies": redis_topologies.figures,
    "forged": forged.figures,
}


def main(argv: list[str] | None = None) -> int:
    """Run every section, print the table, and return the exit status."""
    args = quick_parser(__doc__.splitlines()[0]).parse_args(argv)
    started = time.monotonic()
    figures: list[Figure] = []
    failures: list[str] = []
    for name, section in SECTIONS.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            figures.extend(section(args.quick))
        except MissingProgramError as error:
            failures.append(f"{name}: {error}")
    title = "flask-ias-pkce benchmarks" + (" (--quick: smoke run, rough figures)" * args.quick)
    print(report(title, figures))
    print(f"took {time.monotonic() - started:.0f} s")
    missed = [figure for figure in figures if figure.met is False]
    if missed:
        print("targets missed: " + "; ".join(figure.name for figure in missed))
    for failure in failures:
        print(f"NOT RUN {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
