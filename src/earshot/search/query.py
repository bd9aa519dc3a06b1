"""Searching an index with a clip: its window embeddings are looked up, and the hits merged per indexed file.

A file's score is how well it covers the query: for each query window the best cosine similarity among the
file's windows, averaged over the query windows (1.0 for the query itself). The nearest windows of every query
window name the candidate files; the best candidates are then scored exactly on all their windows. A hit reports
the file's best-matching window (`start`, `end` in seconds).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from earshot.search.index import SearchIndex
from earshot.search.silence import audible
from earshot.search.vectors import SearchError, unit_rows

if TYPE_CHECKING:
    from earshot.classifier import Classifier, Source

MAX_QUERY_WINDOWS = 600  # longer queries are searched with this many windows spread evenly over them


@dataclass(frozen=True)
class Hit:
    """One similar file: its id, score (cosine, 1 = same), best-matching window, and where it was read."""

    id: str
    score: float
    start: float
    end: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "start": self.start, "end": self.end, "source": self.source}


def load_classifier(index: SearchIndex, load: Callable[[str], Classifier] | None = None) -> Classifier:
    """The model an index was built with: its reference (registry name, bundle path or URL) as given to
    `earshot index`, else its name. Raises SearchError when neither loads or its embeddings do not fit."""
    import earshot
    from earshot.errors import EarshotError

    load = load or earshot.load
    refs = list(dict.fromkeys([index.meta.get("model_ref") or index.model, index.model]))
    last: Exception | None = None
    for ref in refs:
        try:
            clf = load(ref)
        except EarshotError as e:
            last = e
            continue
        if clf.sample_rate != index.meta.get("sample_rate", clf.sample_rate):
            raise SearchError(f"model {ref!r} runs at {clf.sample_rate} Hz, the index was built at "
                              f"{index.meta['sample_rate']} Hz", source=index.url, reason="model_mismatch")
        return clf
    raise SearchError(f"cannot load the index's model {index.model!r}: {last}", source=index.url,
                      reason="model_not_found")


def query_embeddings(index: SearchIndex, query: Source, clf: Classifier | None = None,
                     title: str | None = None, **bounds: Any) -> np.ndarray:
    """The window embeddings of a query: an id of the index (its stored vectors) or audio (embedded with the
    index's model, window and hop, silent windows left out as when indexing). `bounds`: `max_seconds`,
    `deadline`, `cancel` of `Classifier.embed_windows`."""
    if isinstance(query, str) and query in index.files and index.vectors is not None:
        return index.vectors.vectors(index.files[query].rows())
    if isinstance(query, str | os.PathLike) and not os.path.exists(query) and not str(query).startswith("s3://"):
        raise SearchError("neither a file nor an id in the index", source=str(query), reason="not_found")
    clf = clf or load_classifier(index)
    _, emb = clf.embed_windows(query, window=index.window, hop=index.hop, title=title, **bounds)
    return emb[audible(clf, index.window, emb)]


def search(index: SearchIndex, queries: np.ndarray, k: int = 10) -> list[Hit]:
    """The `k` indexed files most like a clip whose window embeddings are `queries` [n, dim], best first."""
    if index.vectors is None or not index.files or k <= 0 or not len(queries):
        return []
    if queries.shape[1] != index.meta["dim"]:
        raise SearchError(f"query embeddings have {queries.shape[1]} dims, the index {index.meta['dim']}",
                          source=index.url, reason="dim_mismatch")
    q = unit_rows(queries)
    if len(q) > MAX_QUERY_WINDOWS:
        q = q[np.linspace(0, len(q) - 1, MAX_QUERY_WINDOWS).round().astype(int)]
    rows, sims = index.vectors.nearest(q, max(4 * k, 40))

    # rough score per file from the neighbours alone: a query window with no neighbour in the file counts 0
    best: dict[int, np.ndarray] = {}
    entries = index.entry_of_rows(np.maximum(rows.reshape(-1), 0))  # -1: nothing found there (skipped below)
    for flat, entry in enumerate(entries):
        if entry is None or sims.flat[flat] == -np.inf:
            continue
        i, j = divmod(flat, rows.shape[1])
        per = best.setdefault(entry.n, np.zeros(len(q), np.float32))
        per[i] = max(per[i], sims[i, j])
    by_number = {e.n: e for e in entries if e is not None}
    rough = sorted(best, key=lambda n: -float(best[n].mean()))[: max(2 * k, 20)]

    hits = []
    for n in rough:
        entry = by_number[n]
        file_rows = entry.rows()
        s = q @ index.vectors.vectors(file_rows).T  # [query windows, file windows]
        score = float(np.clip(s.max(axis=1).mean(), -1.0, 1.0))
        top = int(np.argmax(s.max(axis=0)))
        start, end = index.spans(file_rows[top : top + 1])
        hits.append(Hit(entry.id, round(score, 4), round(float(start[0]), 3), round(float(end[0]), 3),
                        entry.location))
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits[:k]
