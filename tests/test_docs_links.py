"""The docs a user reads stay inside the repository: no pointer to a design file outside it,
and every `docs/<page>.md` that the README, the docs or a help text names exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked(*patterns: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    return [ROOT / name for name in listed]


def test_no_doc_code_or_recipe_sends_readers_to_a_file_outside_the_repository():
    offenders = [str(path.relative_to(ROOT)) for path in _tracked("*.md", "*.py", "*.yaml")
                 if path.name != Path(__file__).name
                 and re.search(r"DESIGN(\.md| §)|\.\./shared", path.read_text())]
    assert offenders == []


def test_every_docs_page_named_in_the_readme_docs_and_code_exists():
    named = set()
    for path in _tracked("*.md", "eqmcli/*.py", "recipes/*.yaml"):
        named |= set(re.findall(r"docs/[a-z0-9_-]+\.md", path.read_text()))
    missing = sorted(page for page in named if not (ROOT / page).is_file())
    assert named and missing == []


def test_every_test_named_in_the_reliability_page_exists():
    """docs/reliability.md cites a test for each case; each must be a test of the suite."""
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", (ROOT / "docs" / "reliability.md").read_text()))
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), re.MULTILINE))
    assert named and sorted(named - defined) == []
