"""``python -m example_app``: run the demo; the exit status is 0 only when every step
behaved as expected."""

from __future__ import annotations

import sys

from .demo import run_demo


def main() -> int:
    """Run the demo and return the process exit status."""
    return 0 if run_demo().ok else 1


if __name__ == "__main__":
    sys.exit(main())
