"""What every benchmark shares: the machine line, interleaved rounds, a plain table."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


def machine() -> str:
    """One line naming the machine and the interpreter."""
    return (
        f"{platform.node()} · {os.cpu_count()} CPUs · {platform.machine()} · "
        f"Python {platform.python_version()} · {time.strftime('%Y-%m-%d %H:%M')}"
    )


def per_call_seconds(run: Callable[[], None], calls: int) -> float:
    """Seconds one call of ``run`` takes, over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def interleaved_medians(
    variants: Mapping[str, Callable[[], None]], *, rounds: int, calls: int
) -> dict[str, float]:
    """Median per-call seconds of each variant; each round runs every variant once, in
    turn, so that a noisy neighbour on a shared machine hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            samples[name].append(per_call_seconds(run, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


@dataclass(frozen=True)
class Cost:
    """Seconds per call: CPU time of the calling thread, and wall-clock time."""

    cpu: float
    wall: float


def interleaved_costs(
    variants: Mapping[str, Callable[[], None]], *, rounds: int, calls: int
) -> dict[str, Cost]:
    """The least per-call cost of each variant over ``rounds``, CPU and wall clock.

    CPU time (:func:`time.thread_time`) leaves out the time the scheduler gives other
    processes, which on a shared machine swamps a difference of a few microseconds; it
    also leaves out waits for other processes (Redis), for which the wall clock is the
    figure. Each round runs every variant once, starting with another one each round (the
    first in line runs measurably faster), and the least of the rounds is the round least
    disturbed: noise only ever adds.
    """
    names = list(variants)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            run = variants[name]
            cpu_start, wall_start = time.thread_time(), time.perf_counter()
            for _ in range(calls):
                run()
            wall[name].append((time.perf_counter() - wall_start) / calls)
            cpu[name].append((time.thread_time() - cpu_start) / calls)
    return {name: Cost(min(cpu[name]), min(wall[name])) for name in names}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


class MissingProgramError(RuntimeError):
    """A program a benchmark drives (``wrk``, ``redis-server``) is not installed."""


def require_program(name: str, install_hint: str) -> str:
    """The path of ``name`` on ``PATH``, or :class:`MissingProgramError` saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise MissingProgramError(f"{name} not found: {install_hint}")
    return found


@dataclass(frozen=True)
class Figure:
    """One line of the report: what was measured, its value, and the target it is held to.

    ``met`` is ``None`` for a figure that has no target of its own (a baseline, a detail).
    """

    section: str
    name: str
    value: str
    target: str = ""
    met: bool | None = None


def ratio(value: float, digits: int = 2) -> str:
    """``1.23x``."""
    return f"{value:.{digits}f}x"


def verdict(met: bool | None) -> str:
    """``yes``, ``NO`` or empty, for the ``met`` column."""
    return "" if met is None else "yes" if met else "NO"


def report(title: str, figures: Sequence[Figure]) -> str:
    """The title, the machine line and one table of ``figures``."""
    rows = [
        (figure.section, figure.name, figure.value, figure.target, verdict(figure.met))
        for figure in figures
    ]
    return "\n".join(
        [title, machine(), table(["section", "figure", "value", "target", "met"], rows)]
    )


def quick_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--quick`` switch every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: few, short rounds; figures are rough"
    )
    return parser


def run_alone(
    title: str, figures: Callable[[bool], Sequence[Figure]], argv: list[str] | None
) -> None:
    """The ``main`` of a benchmark run on its own: parse ``--quick``, measure, print."""
    args = quick_parser(title).parse_args(argv)
    try:
        lines = figures(args.quick)
    except MissingProgramError as error:
        raise SystemExit(f"cannot run: {error}") from None
    print(report(title, lines), flush=True)
