"""What training adds to a data set before it is split: the keyword classes (`earshot.training.keywords`) and
synthetic voices (`earshot.training.synthesis`), and the split that keeps synthetic items on the train side.

Synthetic items are appended after the real ones and never validated on: `split_real` / `cv_real` split only the
real items (the first ones) and add every synthetic item to each training side. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earshot.errors import DataError
from earshot.training import keywords, synthesis
from earshot.training.manifest import Manifest
from earshot.training.splits import cv_folds, split

WORDS_VAL_SPLIT = 0.1  # no recordings: the share of the synthetic items (whole voices) that validates


@dataclass
class Additions:
    """The card's record of what was added: keyword classes and synthetic voices (None when not asked for)."""

    keywords: dict[str, Any] | None = None
    synthetic: dict[str, Any] | None = None
    words: dict[str, str] | None = field(default=None)

    @property
    def background_labels(self) -> list[str]:
        return list((self.keywords or {}).get("background_labels", []))


def add(manifest: Manifest, *, words: str | Sequence[str] | Mapping[str, str] | None = None,
        background: bool | None = None, synthesize: bool | None = None, per_label: int | None = None, seed: int = 0,
        log: Callable[..., None] | None = None) -> Additions:
    """Add the keyword classes and synthetic voices asked for to `manifest`, in place.

    `words`: the keywords (`keywords.parse_words`), other labels become ``_unknown_``. `background`: add a
    ``_silence_`` class; None means yes for a Speech Commands layout or when `words` is given. `synthesize`:
    append `per_label` synthetic takes of each label's word (default `synthesis.default_per_label`); None means
    yes for keyword data (a Speech Commands layout, or `words` given) when a speech synthesiser is installed, so
    that keyword models hold up on voices they never heard by default (on the Speech Commands sample's unseen
    speakers: 0.909 with synthetic voices, 0.295 without). On `keywords.words_manifest()` (no recordings) the
    keywords come from the synthetic voices alone, with everyday words said by them as ``_unknown_``."""
    out = Additions(words=keywords.parse_words(words))
    keyword_data = manifest.layout == "speech_commands" or bool(out.words)
    if background is None:
        background = keyword_data
    if synthesize is None:
        synthesize = keyword_data and bool(synthesis.available_engines())
        if keyword_data and not synthesize and log is not None:
            log("keyword data but no speech synthesiser installed: training without synthetic voices (apt-get "
                "install espeak-ng flite festival festvox-kallpc16k)", stage="synthesize")
    words_only = manifest.layout == keywords.WORDS_LAYOUT
    if words_only and not out.words:
        raise DataError("no data: give a data set, or --words to train a keyword model from synthetic voices alone",
                        reason="no_data")
    if words_only and synthesize is False:
        raise DataError("--words without data trains on synthetic voices alone: leave out --no-synthesize",
                        reason="bad_option")
    per_label = per_label or synthesis.default_per_label(list(out.words or manifest.labels), out.words)
    if out.words or background:
        real = manifest.class_counts()
        silence = None
        if synthesize and real:
            silence = max(keywords.MIN_SILENCE, int(np.median(list(real.values()))) + per_label // 2)
        elif words_only:
            silence = max(keywords.MIN_SILENCE, per_label // 2)
        out.keywords = keywords.prepare(manifest, words=out.words, background=background, silence_count=silence,
                                        seed=seed)
        if log is not None:
            k = out.keywords
            parts = []
            if "keywords" in k:
                parts.append(f"{len(k['keywords'])} keywords, {k['unknown']['n']} {keywords.UNKNOWN} clips")
            if "silence" in k:
                parts.append(f"{k['silence']['n']} {keywords.SILENCE} clips ({k['silence']['source']})")
            log("keyword spotting: " + "; ".join(parts), stage="keywords", **{"background_labels":
                                                                              k["background_labels"]})
    if synthesize:
        labels = sorted(set(manifest.labels) | set(out.words or ()))
        items, out.synthetic = synthesis.synthesize(labels, words=out.words, per_label=per_label, seed=seed, log=log)
        others, share = _unknown_words(out, words_only, per_label, seed)
        if others:  # the other words said by the synthetic voices too, as _unknown_
            extra, summary = synthesis.synthesize(others, per_label=max(1, share // len(others)), seed=seed,
                                                  log=log)
            for it in extra:
                it.extra["word"], it.label = it.label, keywords.UNKNOWN
            items += extra
            out.synthetic["unknown"] = {"n": len(extra), "words": summary["words"]}
            out.synthetic["n"] += len(extra)
        manifest.items.extend(items)
    return out


def _unknown_words(out: Additions, words_only: bool, per_label: int, seed: int) -> tuple[list[str], int]:
    """The words the synthetic voices say as ``_unknown_`` and how many takes they get in all: the data's other
    words (`per_label` takes); with no recordings, `keywords.filler_words` (`WORDS_UNKNOWN_SHARE` of a keyword's
    takes, a random subset of the words, each said once, when the takes are fewer than the words)."""
    if not (words_only and out.words):
        return sorted(((out.keywords or {}).get("unknown") or {}).get("words") or {}), per_label
    others = keywords.filler_words(out.words)
    share = int(keywords.WORDS_UNKNOWN_SHARE * per_label)
    if share < len(others):
        others = sorted(np.random.default_rng(seed).permutation(others)[:share].tolist())
    return others, share


def is_synthetic(manifest: Manifest) -> np.ndarray:
    """One bool per item: True for synthetic items."""
    return np.array(["synthetic" in it.extra for it in manifest.items], dtype=bool)


def real_part(manifest: Manifest) -> tuple[Manifest, np.ndarray]:
    """The manifest of the real items (which come first) and the indices of the synthetic ones."""
    synth = np.flatnonzero(is_synthetic(manifest))
    n_real = len(manifest) - len(synth)
    if len(synth) and synth[0] != n_real:
        raise AssertionError("synthetic items must follow the real ones")
    if not len(synth):
        return manifest, synth
    real = manifest.subset(range(n_real))
    real.skipped = manifest.skipped
    return real, synth


def split_real(manifest: Manifest, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """`splits.split` of the real items, every synthetic item added to the train side. With no recordings
    (`keywords.words_manifest`) the synthetic items are the data: whole voices are held out for validation
    (`WORDS_VAL_SPLIT` of the items unless `val_split` says otherwise), so that the epoch is chosen on voices
    the model has not heard."""
    if manifest.layout == keywords.WORDS_LAYOUT:
        if options.get("val_fold") is not None:
            raise DataError("--words without data has no folds: use --val-split", reason="bad_split")
        return split(manifest, val_split=options.get("val_split") or WORDS_VAL_SPLIT, seed=options.get("seed", 0))
    real, synth = real_part(manifest)
    tr, va = split(real, **options)
    return np.concatenate([tr, synth]).astype(np.int64), va


def cv_real(manifest: Manifest, **options: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """`splits.cv_folds` of the real items, every synthetic item added to each train side."""
    if manifest.layout == keywords.WORDS_LAYOUT:
        raise DataError("--cv needs recordings: --words without data trains on synthetic voices alone",
                        reason="bad_option")
    real, synth = real_part(manifest)
    return [(np.concatenate([tr, synth]).astype(np.int64), va) for tr, va in cv_folds(real, **options)]


def added_summary(manifest: Manifest, added: Additions | None) -> dict[str, Any]:
    """The card's ``data`` summary: the real items' `Manifest.summary`, with the synthetic voices and the
    keyword classes recorded beside it."""
    if added is None:
        return manifest.summary()
    real, synth = real_part(manifest)
    out = real.summary()
    if added.synthetic is not None:
        out["synthetic"] = added.synthetic
    if added.keywords is not None:
        out["keyword_spotting"] = added.keywords
    return out


def keyword_fields(added: Additions | None) -> dict[str, Any]:
    """Card fields of a keyword model: ``background_labels`` (labels that mean "no keyword": never an event)
    and ``keywords`` (with ``--words``; other words are ``_unknown_``)."""
    if added is None or added.keywords is None:
        return {}
    out: dict[str, Any] = {"background_labels": added.background_labels}
    if added.words:
        out["keywords"] = dict(added.words)
    return out
