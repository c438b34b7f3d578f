"""The README's set-up commands are the ones CI runs, and they install what the tests need."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> tuple[str, str]:
    """The install line (without its trailing `&& eqm train ...`) and the test line."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up: two commands\s+```bash\n(.*?)```", text, re.S)
    assert block, "README has no set-up block"
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and ln[0] != "#"]
    install, test = lines
    return install.split(" && eqm train")[0], test


def test_ci_runs_the_readme_install_and_test_commands_verbatim() -> None:
    install, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    ci_install = install.replace("pip install", "python -m pip install --quiet")
    assert ci_install in ci
    assert test in ci.splitlines()
    # nothing else is installed: exactly one pip line, the README's
    assert sum("pip install" in line for line in ci.splitlines() if line[:1] != "#") == 1


def test_the_test_extra_brings_every_optional_extra_the_tests_import() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    test_extra = re.search(r"^test = \[(.*)\]$", pyproject, re.M)
    assert test_extra, "pyproject.toml has no one-line test extra"
    brought = re.search(r"eqmcli\[([^\]]*)\]", test_extra.group(1))
    assert brought, "the test extra does not bring the optional extras"
    for name in ("onnx", "align", "tensorboard"):
        assert name in brought.group(1).split(",")
