"""Shared test fixtures: real data from ../shared, one model cache per checkout."""

from __future__ import annotations

import csv
import os
import time
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


def fsdd_take(speaker: str, digit: int, index: int) -> Path:
    """One FSDD recording: the `index`-th take of `digit` by `speaker` (8 kHz WAV)."""
    return DATA / "fsdd" / "recordings" / f"{digit}_{speaker}_{index}.wav"


def fsdd_digits_csv(tmp_path: Path, takes: int, digits: tuple[int, ...]) -> str:
    """A CSV of FSDD takes (the first `takes` of each of `digits`) with fold and group = speaker: george, jackson
    and theo to train, nicolas to validate, lucas to hold out."""
    path = tmp_path / "digits.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold", "group"])
        for speaker in ("george", "jackson", "theo", "nicolas", "lucas"):
            for digit in digits:
                for index in range(takes):
                    w.writerow([fsdd_take(speaker, digit, index), digit, speaker, speaker])
    return str(path)


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory):
    """A spotter of four digits: 4 speakers (30 takes of each) train, theo validates, plus a _silence_ class.
    About 90 s on 2 cores; 0.99 on theo. (With three training speakers and 15 epochs the CNN reached only 0.43.)"""
    from earshot.training import train

    tmp = tmp_path_factory.mktemp("digits")
    manifest = tmp / "digits.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold", "group"])
        for speaker in ("george", "jackson", "lucas", "nicolas", "theo"):
            for digit in (1, 3, 7, 9):
                for index in range(30):
                    w.writerow([fsdd_take(speaker, digit, index), digit, speaker, speaker])
    t0 = time.time()
    bundle = train(manifest, tmp / "bundle", model="cnn", val_fold="theo", epochs=12, background=True, quiet=True)
    print(f"digits_bundle trained in {time.time() - t0:.0f} s")
    return bundle


def need_engine(engine: str) -> None:
    """Skip without the speech synthesiser `engine`; under CI (which installs them all) fail instead."""
    from earshot.training import synthesis

    if engine in synthesis.available_engines():
        return
    if os.environ.get("CI"):
        pytest.fail(f"speech synthesiser {engine} is not installed (.ci/run installs it)")
    pytest.skip(f"speech synthesiser {engine} is not installed")
