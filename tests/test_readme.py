"""Every Python block of the README runs as pasted, against the IAS emulator.

A block with ``def test_`` functions is a test module: it runs under pytest in a child
process with only the installed package (and its pytest plugin) to lean on. Any other
block runs as a script in an environment bound to the emulator, as a newcomer would run
it next to ``python -m flask_ias_pkce.testing``; an ``app`` it defines is then called.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from flask_ias_pkce.testing import IASEmulator

README = Path(__file__).parent.parent / "README.rst"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ``.. code-block:: python`` directives, dedented."""
    blocks: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        indent = len(line) - len(line.lstrip())
        body: list[str] = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        code = "\n".join(body).strip("\n")
        margin = min(len(x) - len(x.lstrip()) for x in code.splitlines() if x.strip())
        blocks.append("\n".join(x[margin:] for x in code.splitlines()) + "\n")
    return blocks


BLOCKS = python_blocks(README.read_text())
SCRIPTS = [block for block in BLOCKS if "def test_" not in block]
TEST_MODULES = [block for block in BLOCKS if "def test_" in block]


def test_the_readme_has_python_blocks_of_both_kinds() -> None:
    assert len(SCRIPTS) >= 1
    assert len(TEST_MODULES) >= 1


@pytest.mark.parametrize("block", SCRIPTS, ids=lambda block: block.splitlines()[-1][:40])
def test_a_script_block_runs_against_the_emulator(
    block: str, ias_emulator: IASEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    for name, value in ias_emulator.app_environment().items():
        monkeypatch.setenv(name, value)
    script = tmp_path / "readme_block.py"
    script.write_text(block)

    namespace = runpy.run_path(str(script), run_name="readme_block")

    app = namespace.get("app")
    if not isinstance(app, Flask):
        return
    client = app.test_client()
    urls = {rule.rule for rule in app.url_map.iter_rules()}
    if "/health" in urls:
        assert client.get("/health").status_code == 200
    if "/api/me" in urls:
        token = ias_emulator.issue_public_token()
        assert client.get("/api/me").status_code == 401
        answer = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.json
        assert ias_emulator.xsuaa_client_id in answer.json["aud"]
        assert len(ias_emulator.exchanges) == 1


@pytest.mark.parametrize("block", TEST_MODULES, ids=lambda block: block.splitlines()[0][:40])
def test_a_test_block_passes_under_pytest(block: str, tmp_path: Path) -> None:
    module = tmp_path / "test_readme_block.py"
    module.write_text(block)
    tests = block.count("\ndef test_") + block.startswith("def test_")

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{tests} passed" in done.stdout
