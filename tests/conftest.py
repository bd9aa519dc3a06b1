"""Shared test fixtures: real data from ../shared, one model cache per checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"
REFERENCE = SHARED / "reference"

# Tests never reach a model hub: weights come from the shared mirror, bundles are built once per checkout.
os.environ.setdefault("EARSHOT_MODEL_MIRROR", str(WEIGHTS))
os.environ.setdefault("EARSHOT_HOME", str(ROOT / ".cache" / "earshot"))


def esc50_clip(category: str, index: int = 0) -> Path:
    """The index-th ESC-50 clip (sorted by file name) of a category, from the shared subset."""
    import csv

    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as f:
        rows = sorted(r["filename"] for r in csv.DictReader(f) if r["category"] == category)
    return DATA / "esc50" / "audio" / rows[index]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; set EARSHOT_SHARED")
    return DATA


@pytest.fixture(scope="session")
def tagger():
    """The default pretrained tagger (mn04-as), bundle built once from the mirrored weights."""
    import earshot

    return earshot.load("mn04-as")
