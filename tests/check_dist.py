"""Check a built wheel and sdist: ``python tests/check_dist.py <dist folder>``.

Run by ``tox -e package`` after ``python -m build`` and ``twine check``. Each of the two
files is installed into a fresh virtual environment, without the checkout on the path,
and must import, carry its type marker and licence, and register the pytest plugin and
the ``flask ias-pkce`` commands. Exits non-zero with the reason when one does not.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import venv
from pathlib import Path

# Runs inside the fresh environment, from a temporary folder (not the checkout).
_PROBE = """
import importlib.metadata as md, pathlib, flask_ias_pkce
from flask_ias_pkce.testing import IASEmulator
package = pathlib.Path(flask_ias_pkce.__file__).parent
assert "site-packages" in str(package), package
assert (package / "py.typed").is_file(), "py.typed is missing"
dist = md.distribution("flask-ias-pkce")
assert dist.version == flask_ias_pkce.__version__, (dist.version, flask_ias_pkce.__version__)
assert dist.metadata["License"] == "Apache-2.0" or dist.metadata["License-Expression"]
licence = [f for f in dist.files if f.name == "LICENSE"]
assert licence and "Apache License" in licence[0].read_text(), "LICENSE is missing"
points = {(p.group, p.name) for p in dist.entry_points}
assert ("pytest11", "ias_pkce") in points and ("flask.commands", "ias-pkce") in points, points
with IASEmulator() as ias:
    assert ias.app_config()["IAS_PKCE_IAS_URL"] == ias.url
print("ok", dist.version, package)
"""


def check(artifact: Path) -> None:
    """Install ``artifact`` into a new virtual environment and probe it there."""
    with tempfile.TemporaryDirectory(prefix="check-dist-") as folder:
        environment = Path(folder, "venv")
        venv.create(environment, with_pip=True)
        python = environment / "bin" / "python"
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", artifact],
            check=True,
        )
        subprocess.run([python, "-c", _PROBE], check=True, cwd=folder)
    print(f"installed and checked {artifact.name}")


def main(dist: str) -> None:
    """Check the one wheel and the one sdist in ``dist``."""
    wheels = sorted(Path(dist).glob("*.whl"))
    sdists = sorted(Path(dist).glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.exit(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
    for artifact in (*wheels, *sdists):
        check(artifact)


if __name__ == "__main__":
    main(sys.argv[1])
