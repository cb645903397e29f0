"""``python -m example_app``: run the demo; the exit status is 0 only when every step
behaved as expected. ``python -m example_app --browser`` serves the public-client page
against a local IAS until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (or the browser demo) and return the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="The flask-ias-pkce demo against a local IAS emulator.",
    )
    parser.add_argument(
        "--browser",
        action="store_true",
        help="serve the public-client page, print its URL and keep running until Ctrl-C",
    )
    if parser.parse_args(argv).browser:
        from .browser import run_browser_demo

        return run_browser_demo()
    return 0 if run_demo().ok else 1


if __name__ == "__main__":
    sys.exit(main())
