"""Keyword spotting data: the keyword list (`--words`), the ``_unknown_`` class of the other words, and the
``_silence_`` background class, so that a keyword model answers "nothing" instead of forcing a guess.

- `parse_words`: ``"yes,no,sheila=shayla"`` → {label: word said}; the listed labels are the keywords.
- `words_manifest`: no recordings at all; the keywords come from `--words` alone, said by synthetic voices, with
  `FILLER_WORDS` said by them as ``_unknown_``.
- `prepare`: on a manifest, labels outside the keywords become ``_unknown_`` (at most `UNKNOWN_SHARE` times the
  median keyword class, drawn per fold), and a ``_silence_`` class is added: one-second crops of the layout's
  ``_background_noise_`` recordings when it has them, else generated backgrounds (digital silence, white, pink
  and brown noise, mains hum, each at a random level from -80 to -20 dBFS). Generated items live in memory as
  WAV bytes and are spread over the folds as the real items are, so validation scores them too.

The card lists both as ``background_labels``: timelines and streams never open events for them
(`earshot.events.EventTracker`). No torch here.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from earshot import audio
from earshot.errors import AudioError, DataError
from earshot.training.manifest import Item, Manifest

WORDS_LAYOUT = "words"  # no recordings: keywords from `--words` alone, said by synthetic voices
# Other words the synthetic voices say as _unknown_ when there are no recordings to take them from: everyday
# words of one to three syllables, none a homophone of a digit or of a common command.
FILLER_WORDS = (
    "apple", "basket", "bottle", "bread", "button", "camera", "candle", "castle", "chair", "chicken", "city",
    "coffee", "dinner", "doctor", "dragon", "family", "finger", "flower", "forest", "garden", "guitar", "hammer",
    "happy", "hello", "house", "island", "jacket", "kitchen", "ladder", "lemon", "letter", "little", "market",
    "mirror", "money", "morning", "mountain", "music", "number", "orange", "paper", "pencil", "people", "pillow",
    "planet", "pocket", "purple", "rabbit", "river", "rocket", "salad", "silver", "sister", "table", "thunder",
    "ticket", "tiger", "water", "window", "winter", "yellow", "bird", "book", "cat", "cup", "dog", "fish", "hat",
    "lamp", "milk", "moon", "road", "shoe", "star", "sun", "tree", "wall", "wind", "box", "car",
)
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
BACKGROUND_LABELS = (SILENCE, UNKNOWN)
NOISE_FOLDER = "_background_noise_"
SAMPLE_RATE = 16000
UNKNOWN_SHARE = 2.0
# From the words alone: the everyday words' takes, as a share of one keyword's. Real voices sound unlike any
# synthetic take, and a larger _unknown_ class drew them into it (FSDD digits: at 2.0, with every take at the full
# band, 20-30 % of the clips were answered _unknown_).
WORDS_UNKNOWN_SHARE = 1.0
MIN_SILENCE = 20
KINDS = ("silence", "white", "pink", "brown", "hum")


def parse_words(spec: str | Sequence[str] | Mapping[str, str] | None) -> dict[str, str] | None:
    """``"yes,no,sheila=shayla"`` (or a list of such entries, or a mapping) → {label: word}; None when empty."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()} or None
    entries = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, str] = {}
    for entry in entries:
        for part in str(entry).split(","):
            part = part.strip()
            if not part:
                continue
            label, _, word = part.partition("=")
            label, word = label.strip(), word.strip()
            if not label:
                raise DataError(f"--words entry {part!r} has no label", reason="bad_option")
            out[label] = word or label
    return out or None


def words_manifest() -> Manifest:
    """The data set of a keyword model trained from its words alone: no recordings (`prepare` adds the
    ``_silence_`` class, `earshot.training.additions` the synthetic takes of the keywords and of `FILLER_WORDS`)."""
    return Manifest(items=[], layout=WORDS_LAYOUT)


def filler_words(words: Mapping[str, str]) -> list[str]:
    """`FILLER_WORDS` less any that is a keyword or what a keyword says."""
    taken = {w.lower() for w in words} | {w.lower() for w in words.values()}
    return [w for w in FILLER_WORDS if w not in taken]


def background_labels(labels: Sequence[str]) -> list[str]:
    """The labels of `labels` that mean "no keyword"."""
    return [lab for lab in labels if lab in BACKGROUND_LABELS]


def prepare(manifest: Manifest, *, words: Mapping[str, str] | None = None, background: bool = True,
            silence_count: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Turn `manifest` into keyword-spotting data in place (see the module doc); returns the card's summary."""
    rng = np.random.default_rng(seed)
    summary: dict[str, Any] = {}
    if words and manifest.layout == WORDS_LAYOUT:
        summary.update(keywords=sorted(words), unknown={"n": 0})  # the synthetic voices say the other words
    elif words:
        present = {it.label for it in manifest.items}
        missing = sorted(set(words) - present)
        if missing:
            raise DataError(f"--words names labels the data does not have: {missing[:10]}", reason="bad_option")
        summary.update(keywords=sorted(words), **_relabel_unknown(manifest, set(words), rng))
    if background:
        counts = Counter(it.label for it in manifest.items)
        n = silence_count or max(MIN_SILENCE, int(np.median(list(counts.values()))) if counts else MIN_SILENCE)
        noise_dir = (manifest.root / NOISE_FOLDER) if manifest.root is not None else None
        if noise_dir is not None and noise_dir.is_dir() and any(audio.is_audio_name(p) for p in noise_dir.iterdir()):
            items, source = _noise_crops(noise_dir, n, rng), f"crops of {noise_dir}"
        else:
            items, source = _generated(manifest.root or Path("."), n, rng), "generated: " + ", ".join(KINDS)
        _spread_over_folds(manifest, items, rng)
        manifest.items.extend(items)
        summary["silence"] = {"n": len(items), "source": source}
    later = [UNKNOWN] if words and manifest.layout == WORDS_LAYOUT else []  # said by the synthetic voices
    summary["background_labels"] = background_labels(sorted({*manifest.labels, *later}))
    return summary


def _relabel_unknown(manifest: Manifest, keywords: set[str], rng: np.random.Generator) -> dict[str, Any]:
    """Non-keyword items → ``_unknown_``, at most UNKNOWN_SHARE x the median keyword count, drawn per fold."""
    others = [i for i, it in enumerate(manifest.items) if it.label not in keywords]
    if not others:
        return {"unknown": {"n": 0}}
    counts = Counter(it.label for it in manifest.items if it.label in keywords)
    cap = max(1, int(UNKNOWN_SHARE * np.median(list(counts.values()))))
    by_fold: dict[str | None, list[int]] = {}
    for i in others:
        by_fold.setdefault(manifest.items[i].fold, []).append(i)
    keep: set[int] = set()
    for fold_items in by_fold.values():
        share = max(1, round(cap * len(fold_items) / len(others)))
        keep.update(int(i) for i in rng.permutation(fold_items)[:share])
    words = Counter(manifest.items[i].label for i in others)
    for i in others:
        it = manifest.items[i]
        it.extra = {**it.extra, "word": it.label}
        it.label = UNKNOWN
    manifest.items[:] = [it for i, it in enumerate(manifest.items) if it.label != UNKNOWN or i in keep]
    return {"unknown": {"n": len(keep), "of": len(others), "words": dict(sorted(words.items()))}}


def _spread_over_folds(manifest: Manifest, items: list[Item], rng: np.random.Generator) -> None:
    """Give generated items folds in the proportions of the real items' folds (none when they have none)."""
    folds = Counter(it.fold for it in manifest.items)
    if set(folds) <= {None}:
        return
    names = list(folds)
    p = np.array([folds[f] for f in names], dtype=np.float64)
    picks = rng.choice(len(names), size=len(items), p=p / p.sum())
    for it, k in zip(items, picks):
        it.fold = names[int(k)]


def _wav_bytes(y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1, 1).astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _noise_crops(folder: Path, n: int, rng: np.random.Generator) -> list[Item]:
    """`n` one-second crops of the recordings in `folder`, each at a random gain (-30..0 dB)."""
    waves = []
    for p in sorted(folder.iterdir()):
        if audio.is_audio_name(p):
            try:
                y = audio.decode(p, SAMPLE_RATE)
            except AudioError:
                continue
            if len(y) >= SAMPLE_RATE:
                waves.append((p, y))
    if not waves:
        raise DataError(f"no readable recording of 1 s or more in {folder}", reason="empty")
    out = []
    for k in range(n):
        p, y = waves[k % len(waves)]
        s = int(rng.integers(0, len(y) - SAMPLE_RATE + 1))
        crop = y[s: s + SAMPLE_RATE] * 10 ** (rng.uniform(-30, 0) / 20)
        out.append(Item(path=folder / f"{p.stem}@{s / SAMPLE_RATE:.2f}.wav", label=SILENCE,
                        extra={"background": "crop", "source": p.name, "start": s / SAMPLE_RATE},
                        data=_wav_bytes(crop)))
    return out


def background_clip(kind: str, rng: np.random.Generator, seconds: float = 1.0, level_db: float | None = None
                    ) -> np.ndarray:
    """One generated background of `kind` (see KINDS) at `level_db` dBFS RMS (random -80..-20 when None)."""
    n = int(seconds * SAMPLE_RATE)
    level = 10 ** ((rng.uniform(-80, -20) if level_db is None else level_db) / 20)
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        y = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) for h in (1, 2, 3, 5))
        y = y + 0.1 * rng.standard_normal(n)
    else:
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
        tilt = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
        y = np.fft.irfft(spectrum / f ** tilt, n)
    y = np.asarray(y, dtype=np.float64)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12) * level).astype(np.float32)


def _generated(root: Path, n: int, rng: np.random.Generator) -> list[Item]:
    """`n` generated one-second backgrounds, the KINDS in turn."""
    out = []
    for k in range(n):
        kind = KINDS[k % len(KINDS)]
        out.append(Item(path=root / SILENCE / f"generated-{kind}-{k:04d}.wav", label=SILENCE,
                        extra={"background": kind}, data=_wav_bytes(background_clip(kind, rng))))
    return out
