"""Which windows a search looks at: not those of digital silence.

Silent stretches (the zero padding of many clips) all embed to the same vector, so they would make every clip
with a pause look like every other. A window whose embedding is within `SILENCE_COSINE` of the model's embedding
of zeros is dropped, from indexed files and from queries alike, unless the whole clip is silent.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from earshot.search.vectors import unit_rows

if TYPE_CHECKING:
    from earshot.classifier import Classifier

SILENCE_COSINE = 0.99  # mn04-as: digital silence 1.000, noise at -80 dBFS 0.98, the quietest real sounds < 0.96

_CACHE: dict[tuple[int, int], np.ndarray] = {}
_LOCK = threading.Lock()


def silence_embedding(clf: Classifier, window: float) -> np.ndarray:
    """The unit embedding of a window of zeros (computed once per model and window length)."""
    n = max(1, int(round(window * clf.sample_rate)))
    key = (id(clf.bundle), n)
    with _LOCK:
        got = _CACHE.get(key)
    if got is None:
        frames = clf.pad(np.zeros(n, np.float32))[None]
        got = unit_rows(clf.run(frames, ("embedding",))[0])[0]
        with _LOCK:
            _CACHE[key] = got
    return got


def audible(clf: Classifier, window: float, embeddings: np.ndarray) -> np.ndarray:
    """A mask of the windows to keep: those not silent, or all of them when every one is."""
    if not len(embeddings):
        return np.zeros(0, bool)
    keep = unit_rows(embeddings) @ silence_embedding(clf, window) < SILENCE_COSINE
    return keep if keep.any() else np.ones(len(embeddings), bool)
