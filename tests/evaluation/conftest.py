"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from pair_files import write_pairs_missing_an_image


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    """`pair_files.PAIRS` pairs over 6 images; image 3.jpg, named by the pairs in
    `pair_files.LACKING`, is gone."""
    return write_pairs_missing_an_image(tmp_path / "faces")
