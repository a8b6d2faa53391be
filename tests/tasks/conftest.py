"""Shared helpers for the task tests: where the benchmark copies live (if anywhere)."""

from pathlib import Path

import pytest

# ../shared/data relative to the repository root; never copied into the repo.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The shared benchmark files; skips the test when they are absent."""
    if not (SHARED_DATA / "glue").is_dir() and not (SHARED_DATA / "superglue").is_dir():
        pytest.skip(f"no shared benchmark data at {SHARED_DATA}")
    return SHARED_DATA
