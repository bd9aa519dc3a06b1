"""The vector index under `earshot search`: an HNSW graph over unit vectors (inner product = cosine), faiss.

The only module that imports the index library, and only when an index is built or opened, so that the rest of
earshot (and the server, until a search is asked for) never loads it. Rows are numbered in the order they are
added (faiss's own ids). A graph cannot drop a node, so rows of replaced files are marked deleted: searches skip
them (an id selector), and the owner compacts the index once too many are dead (`dead_fraction`). Every call runs
on the caller's thread: concurrency comes from earshot's own pools, never from OpenMP inside a call.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from earshot.errors import EarshotError

LIBRARY = "faiss"
FILE_SUFFIX = ".faiss"
M = 16  # graph degree
EF_CONSTRUCTION = 128  # beam while adding
EF_SEARCH = 128  # beam while searching: recall@10 >= 0.999 on 100k real-like vectors (benchmarks/search.py)


class SearchError(EarshotError):
    """An index that cannot be read, written or searched (`reason` says why)."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SearchError("search needs faiss: pip install 'earshot[search]'", reason="needs_search_extra") from e
    faiss.omp_set_num_threads(1)
    return faiss


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("faiss-cpu")
    except PackageNotFoundError:
        return "unknown"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, C order); all-zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class VectorIndex:
    """Unit vectors under row numbers 0, 1, 2, ... (in the order added), searched by cosine similarity."""

    def __init__(self, dim: int, index: Any = None, deleted: np.ndarray | None = None) -> None:
        self._faiss = _faiss()
        self.dim = dim
        if index is None:
            index = self._faiss.IndexHNSWFlat(dim, M, self._faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = EF_CONSTRUCTION
        self._index = index
        self._alive = np.ones(index.ntotal, bool)
        if deleted is not None and len(deleted):
            self._alive[np.asarray(deleted, dtype=np.int64)] = False
        self._selector: tuple[Any, np.ndarray] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, dim: int, deleted: np.ndarray | None = None) -> VectorIndex:
        """The index saved at `path`; `deleted` lists its dead rows (kept by the owner, not in the file)."""
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise FileNotFoundError(source)
        faiss = _faiss()
        try:
            index = faiss.read_index(source)
        except RuntimeError as e:
            raise SearchError(f"cannot read the vector index: {str(e)[:200]}", source=source, reason="corrupt") from e
        if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise SearchError(f"not a {dim}-dimensional inner-product index", source=source, reason="corrupt")
        return cls(dim, index, deleted)

    @property
    def rows(self) -> int:
        """Rows ever added (dead ones included): the number the next row gets."""
        return int(self._index.ntotal)

    @property
    def live(self) -> int:
        return int(self._alive.sum())

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.live / self.rows if self.rows else 0.0

    def save(self, path: str | os.PathLike) -> None:
        self._faiss.write_index(self._index, os.fspath(path))

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (scaled to unit length) as the rows `rows`, which must continue the numbering."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if rows[0] != self.rows or np.any(np.diff(rows) != 1):
            raise SearchError(f"rows must continue from {self.rows}", reason="bad_rows")
        self._index.add(unit_rows(vectors))
        self._alive = np.concatenate([self._alive, np.ones(len(rows), bool)])
        self._selector = None

    def delete(self, rows: np.ndarray) -> None:
        self._alive[np.asarray(rows, dtype=np.int64)] = False
        self._selector = None

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored unit vectors of rows [n, dim]."""
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return self._index.reconstruct_batch(np.asarray(rows, dtype=np.int64)).reshape(len(rows), self.dim)

    def _params(self, ef: int) -> tuple[Any, Any]:
        """Search parameters, and what must stay referenced while they are used (the selector reads its bitmap
        through a raw pointer)."""
        params = self._faiss.SearchParametersHNSW(efSearch=ef)
        selector = None
        if self.live < self.rows:
            selector = self._selector
            if selector is None:
                bitmap = np.packbits(self._alive, bitorder="little")
                selector = self._selector = (self._faiss.IDSelectorBitmap(self.rows, self._faiss.swig_ptr(bitmap)),
                                             bitmap)
            params.sel = selector[0]
        return params, selector

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows [n, k], cosine similarities [n, k]) of the `k` nearest live rows of each query, best first; -1
        (and -inf) where fewer were found, as when the index holds fewer than `k` live rows."""
        q = unit_rows(queries)
        k = min(k, self.live)
        if k <= 0 or not len(q):
            return np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
        params, keep = self._params(max(EF_SEARCH, k))
        sims, rows = self._index.search(q, k, params=params)
        del keep
        return rows.astype(np.int64), np.where(rows < 0, -np.inf, sims).astype(np.float32)
