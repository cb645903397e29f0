"""The benchmark app under a real gunicorn, bound to the IAS emulator through the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.gunicorn import GunicornServer, bound_environment

REPOSITORY = Path(__file__).resolve().parent.parent


def app_environment(ias: IASEmulator, **config: Any) -> dict[str, str]:
    """The environment of the benchmark app bound to ``ias``: VCAP_SERVICES and BENCHAPP_*."""
    return bound_environment(ias, prefix="BENCHAPP", **config)


class Gunicorn(GunicornServer):
    """``benchmarks/_wsgi_app.py`` under gunicorn (sync workers unless told) on a loopback
    port."""

    def __init__(
        self,
        environment: dict[str, str],
        *,
        workers: int = 2,
        threads: int = 1,
        worker_class: str | None = None,
    ) -> None:
        super().__init__(
            "benchmarks._wsgi_app:create_app()",
            environment=environment,
            chdir=REPOSITORY,
            workers=workers,
            threads=threads,
            worker_class=worker_class,
        )
