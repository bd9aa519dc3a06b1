"""A multi-label sound set made at test time from real clips: each mixture holds 2-3 events of different ESC-10
classes (the loudest 1.5 s of a clip) at random offsets and gains; its labels are their union. Mixtures of folds
1-3 clips form fold 1, of fold 4 clips fold 4, so no source clip is heard on both sides of `--val-fold 4`."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")).resolve() / "data"
RATE = 16000
SECONDS = 5.0
EVENT_SECONDS = 1.5


def esc10_clips() -> dict[str, dict[str, list[Path]]]:
    """{fold side ("train" for folds 1-3, "val" for fold 4): {class: [clip paths]}} of ESC-10."""
    out: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}}
    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["esc10"] == "True":
                side = "val" if r["fold"] == "4" else "train"
                out[side].setdefault(r["category"], []).append(DATA / "esc50" / "audio" / r["filename"])
    return out


def loudest(y: np.ndarray, n: int) -> np.ndarray:
    """The `n`-sample stretch of `y` with the most energy."""
    if len(y) <= n:
        return np.pad(y, (0, n - len(y)))
    energy = np.convolve(y.astype(np.float64) ** 2, np.ones(RATE // 10), mode="same")
    hop = RATE // 20
    starts = np.arange(0, len(y) - n + 1, hop)
    best = starts[int(np.argmax([energy[s : s + n].sum() for s in starts]))]
    return y[best : best + n]


def build_mixtures(root: Path, n_train: int = 160, n_val: int = 80, seed: int = 0) -> Path:
    """Write `root/audio/*.wav` and `root/mixtures.csv` (path, labels, fold); returns the CSV."""
    rng = np.random.default_rng(seed)
    clips = esc10_clips()
    classes = sorted(clips["train"])
    (root / "audio").mkdir(parents=True, exist_ok=True)
    total, event = int(SECONDS * RATE), int(EVENT_SECONDS * RATE)
    cache: dict[Path, np.ndarray] = {}
    rows = []
    for side, count, fold in (("train", n_train, "1"), ("val", n_val, "4")):
        for i in range(count):
            k = int(rng.integers(2, 4))
            chosen = sorted(rng.choice(len(classes), k, replace=False))
            mix = np.zeros(total, dtype=np.float64)
            for c in chosen:
                pool = clips[side][classes[c]]
                path = pool[int(rng.integers(len(pool)))]
                if path not in cache:
                    y, sr = sf.read(path, dtype="float32")
                    assert sr == RATE
                    seg = loudest(y, event)
                    cache[path] = seg / (np.abs(seg).max() + 1e-9)
                gain = 10 ** (rng.uniform(-12, 0) / 20)
                start = int(rng.integers(0, total - event + 1))
                mix[start : start + event] += gain * cache[path]
            mix *= 0.9 / (np.abs(mix).max() + 1e-9)
            name = f"{side}_{i:04d}.wav"
            sf.write(root / "audio" / name, mix.astype(np.float32), RATE, subtype="PCM_16")
            rows.append({"path": f"audio/{name}", "labels": ";".join(classes[c] for c in chosen), "fold": fold})
    manifest = root / "mixtures.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "labels", "fold"])
        w.writeheader()
        w.writerows(rows)
    return manifest
