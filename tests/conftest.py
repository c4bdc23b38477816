"""Shared fixtures. The real data in ../shared/data is required: without it tests fail, never skip."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (``/work/shared/data`` beside the repo); fails loudly when it is missing."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.fail(f"real test data not found at {SHARED_DATA}; it must sit beside the repository (see PREAMBLE)")
    return SHARED_DATA
