"""Shared test fixtures: where the read-only shared data and parity files live."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a pytest skip naming what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (shared test data lives next to the repository, in ../shared)")
    return p


@pytest.fixture
def golden():
    return lambda name: shared_path("golden", name)
