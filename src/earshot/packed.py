"""Packed embedding files: per-window embeddings of many clips with multi-hot labels, in one HDF5 (or npz) file.

The layout is the one Kong et al. used to pack Google's AudioSet embedding release (`bal_train.h5`,
`unbal_train.h5`, `eval.h5`), and the one `earshot embed` writes:

- ``x`` (N, T, D): uint8 (the AudioSet VGGish release) or float16 / float32 (earshot);
- ``y`` (N, C) bool multi-hot labels;
- ``video_id_list`` (N): clip ids (YouTube ids, or file paths relative to the data set);
- ``mask`` (N, T) bool, optional: True for real frames, False for padding (absent: every frame is real);
- attributes ``labels``, ``label_ids``, ``backbone``, ``window``, ``hop``, ``n_bad``, ``bad_files`` (earshot).

uint8 embeddings are dequantised as the release's post-processor quantised them (`VGGISH_DEQUANTIZE`): VGGish
clips the PCA-ed embedding to [-2, 2] and maps it linearly onto 0..255, so x = q * 4/255 - 2. `PackedReader`
reads rows without loading the file (h5py), or holds `x` in its stored dtype when it fits a memory budget;
`PackedWriter` appends rows to resizable chunked datasets, so writing 10 000 clips keeps memory flat. No torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earshot.errors import DataError

PACKED_SUFFIXES = (".h5", ".hdf5", ".npz")
VGGISH_DEQUANTIZE = {"scale": 4.0 / 255.0, "offset": -2.0, "source": "VGGish post-processing: [-2, 2] -> 0..255"}
MEMORY_BUDGET_MB = 4096  # `x` is held in memory (stored dtype) up to this size; larger files are read by rows


def is_packed_path(path: str | os.PathLike) -> bool:
    """Whether a path or s3:// URL names a packed embedding file (by its suffix)."""
    return str(path).lower().endswith(PACKED_SUFFIXES)


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DataError("embedding files need h5py: pip install 'earshot[embeddings]'",
                        reason="needs_embeddings_extra") from e
    return h5py


def _texts(values: Any) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


def open_packed(path: str | os.PathLike, endpoint_url: str | None = None) -> PackedReader:
    """A reader of a local packed file, or of an s3:// one downloaded in chunks to a cached local copy."""
    text = str(path)
    if text.startswith("s3://"):
        from earshot.pipeline.remote import local_copy

        return PackedReader(local_copy(text, endpoint_url))
    return PackedReader(Path(text).expanduser())


def split_rows(n: int, val_split: float | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices of a packed file: a seeded random `val_split` fraction (default 0.2,
    at least one row) is validation. The same arguments give the same split in `train` and `evaluate`."""
    frac = 0.2 if val_split is None else float(val_split)
    if not 0.0 < frac < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {val_split}", reason="bad_split")
    if n < 2:
        raise DataError(f"{n} clip(s): too few to split into train and validation", reason="bad_split")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, int(round(frac * n))))
    return np.sort(perm[k:]), np.sort(perm[:k])


class PackedReader:
    """Read access to a packed embedding file (see the module doc); a context manager."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("embedding file not found", source=str(path), reason="not_found")
        self._h5 = None
        try:
            if self.path.suffix.lower() == ".npz":
                self._data: Any = np.load(self.path, allow_pickle=False)
                self.attrs: dict[str, Any] = {}
                if "attrs" in self._data.files:
                    self.attrs = json.loads(str(self._data["attrs"]))
            else:
                self._h5 = _h5py().File(self.path, "r")
                self._data = self._h5
                self.attrs = {k: self._h5.attrs[k] for k in self._h5.attrs}
        except (OSError, ValueError) as e:
            raise DataError(f"unreadable embedding file: {e}", source=str(path), reason="read_error") from e
        names = set(self._data.files) if self._h5 is None else set(self._h5.keys())
        missing = [k for k in ("x", "y") if k not in names]
        if missing:
            raise DataError(f"embedding file lacks {', '.join(missing)} (needs x (N, T, D) and y (N, C))",
                            source=str(path), reason="bad_layout")
        self._x = self._data["x"]
        if len(self._x.shape) != 3:
            raise DataError(f"x must be (N, T, D), not {tuple(self._x.shape)}", source=str(path), reason="bad_layout")
        self.n, self.frames, self.dim = (int(s) for s in self._x.shape)
        y = np.asarray(self._data["y"])
        if y.ndim != 2 or len(y) != self.n:
            raise DataError(f"y must be (N, C) with N = {self.n}, not {y.shape}", source=str(path),
                            reason="bad_layout")
        self.y = y.astype(bool)
        self.n_classes = int(y.shape[1])
        self.has_mask = "mask" in names
        self._mask = np.asarray(self._data["mask"]).astype(bool) if self.has_mask else None
        self._ids = "video_id_list" in names
        self.x_dtype = np.dtype(self._x.dtype)
        self._held: np.ndarray | None = None
        self.labels, self.label_ids = self._labels()

    def _labels(self) -> tuple[list[str], list[str | None]]:
        labels = _texts(self.attrs["labels"]) if "labels" in self.attrs else None
        ids = _texts(self.attrs["label_ids"]) if "label_ids" in self.attrs else None
        if labels is None and self._h5 is None and "labels" in self._data.files:
            labels = _texts(self._data["labels"])
        if labels is None and self.n_classes == 527:
            from earshot.labels import audioset

            names, mids = audioset()
            labels, ids = list(names), list(mids)
        if labels is None:
            labels = [f"class_{i}" for i in range(self.n_classes)]
        if len(labels) != self.n_classes:
            raise DataError(f"{len(labels)} labels for {self.n_classes} columns of y", source=str(self.path),
                            reason="bad_layout")
        ids_out: list[str | None] = [i or None for i in ids] if ids and len(ids) == len(labels) else [None] * len(
            labels)
        return labels, ids_out

    def __enter__(self) -> PackedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __len__(self) -> int:
        return self.n

    @property
    def dequantize(self) -> dict[str, Any] | None:
        """The affine map uint8 embeddings need (`VGGISH_DEQUANTIZE`), None for float embeddings."""
        if self.x_dtype != np.uint8:
            return None
        if "dequantize_scale" in self.attrs:
            return {"scale": float(self.attrs["dequantize_scale"]), "offset": float(self.attrs["dequantize_offset"])}
        return dict(VGGISH_DEQUANTIZE)

    @property
    def video_ids(self) -> list[str]:
        """Clip ids in row order (row numbers when the file has none)."""
        if not self._ids:
            return [str(i) for i in range(self.n)]
        return _texts(self._data["video_id_list"][:])

    def attr(self, name: str, default: Any = None) -> Any:
        v = self.attrs.get(name, default)
        return v.item() if isinstance(v, np.generic) else v

    def hold(self, budget_mb: float | None = None) -> bool:
        """Keep `x` in memory in its stored dtype when it fits the budget (`EARSHOT_PACKED_MEMORY_MB`, default
        4096); rows are dequantised only when taken. Returns whether it is held."""
        budget = budget_mb if budget_mb is not None else float(os.environ.get("EARSHOT_PACKED_MEMORY_MB",
                                                                               MEMORY_BUDGET_MB))
        if self._held is None and self.n * self.frames * self.dim * self.x_dtype.itemsize <= budget * 2**20:
            self._held = np.asarray(self._x[:])
        return self._held is not None

    def mask(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), T) bool: True for real frames."""
        if self._mask is None:
            return np.ones((len(idx), self.frames), dtype=bool)
        return self._mask[idx]

    def take(self, idx: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (b, T, D) dequantised, mask (b, T) bool) of rows `idx`, in the order given."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._held is not None:
            raw = self._held[idx]
        elif self._h5 is None:
            raw = np.asarray(self._x[idx])
        else:  # h5py reads increasing indices; put them back in the order asked
            order = np.argsort(idx, kind="stable")
            uniq, inverse = np.unique(idx[order], return_inverse=True)
            block = self._x[uniq] if len(uniq) else np.zeros((0, self.frames, self.dim), self.x_dtype)
            raw = np.empty((len(idx), self.frames, self.dim), dtype=self.x_dtype)
            raw[order] = block[inverse]
        return self.to_float(raw), self.mask(idx)

    def to_float(self, raw: np.ndarray) -> np.ndarray:
        """Stored embeddings → float32, dequantised when they are uint8."""
        dq = self.dequantize
        if dq is None:
            return raw.astype(np.float32, copy=False)
        return raw.astype(np.float32) * np.float32(dq["scale"]) + np.float32(dq["offset"])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for a model card's `data` field."""
        counts = self.y.sum(axis=0)
        return {
            "layout": "packed_embeddings", "file": self.path.name, "n": self.n, "frames": self.frames,
            "embedding_dim": self.dim, "dtype": str(self.x_dtype), "n_classes": self.n_classes,
            "mask": self.has_mask, "labels_per_clip": round(float(self.y.sum(axis=1).mean()), 4) if self.n else 0,
            "classes_with_positives": int((counts > 0).sum()),
            "backbone": self.attr("backbone"), "window": self.attr("window"), "hop": self.attr("hop"),
        }


class PackedWriter:
    """Appends clips to a packed HDF5 file: resizable chunked datasets, `x` growing in T as longer clips come.

    Rows are buffered `flush_rows` at a time, so memory holds at most that many clips whatever N becomes.
    """

    def __init__(self, path: str | os.PathLike, *, dim: int, labels: Sequence[str],
                 label_ids: Sequence[str | None] | None = None, dtype: str = "float16",
                 attrs: dict[str, Any] | None = None, flush_rows: int = 64) -> None:
        h5py = _h5py()
        if dtype not in ("float16", "float32"):
            raise DataError(f"--dtype must be float16 or float32, not {dtype!r}", reason="bad_option")
        self.path, self.dim, self.dtype, self.flush_rows = Path(path), int(dim), np.dtype(dtype), flush_rows
        self.n_classes = len(labels)
        self.n, self.frames = 0, 0
        self.bad: list[tuple[str, str]] = []
        self._rows: list[tuple[np.ndarray, np.ndarray, str]] = []
        self._f = h5py.File(self.path, "w")
        chunk = max(1, min(64, 2**20 // max(1, self.dim * self.dtype.itemsize * 16)))
        self._x = self._f.create_dataset("x", shape=(0, 1, self.dim), maxshape=(None, None, self.dim),
                                         dtype=self.dtype, chunks=(chunk, 16, self.dim))
        self._y = self._f.create_dataset("y", shape=(0, self.n_classes), maxshape=(None, self.n_classes),
                                         dtype=bool, chunks=(256, self.n_classes))
        self._m = self._f.create_dataset("mask", shape=(0, 1), maxshape=(None, None), dtype=bool,
                                         chunks=(256, 16))
        self._v = self._f.create_dataset("video_id_list", shape=(0,), maxshape=(None,),
                                         dtype=h5py.string_dtype(), chunks=(256,))
        strings = h5py.string_dtype()
        self._f.attrs["labels"] = np.array(list(labels), dtype=strings)
        self._f.attrs["label_ids"] = np.array([i or "" for i in (label_ids or [None] * len(labels))], dtype=strings)
        for k, v in (attrs or {}).items():
            self._f.attrs[k] = v

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()

    def add(self, video_id: str, x: np.ndarray, y: np.ndarray) -> None:
        """One clip: its window embeddings (T, D) and multi-hot labels (C,)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (T, {self.dim}), not {x.shape}")
        self._rows.append((x.astype(self.dtype), np.asarray(y, dtype=bool), video_id))
        if len(self._rows) >= self.flush_rows:
            self.flush()

    def skip(self, path: str, reason: str) -> None:
        """Record a clip that could not be embedded."""
        self.bad.append((path, reason))

    def flush(self) -> None:
        if not self._rows:
            return
        t = max(self.frames, max(len(r[0]) for r in self._rows))
        if t > self._x.shape[1]:
            self._x.resize(t, axis=1)
            self._m.resize(t, axis=1)
        self.frames = t
        n0, k = self.n, len(self._rows)
        x = np.zeros((k, t, self.dim), dtype=self.dtype)
        m = np.zeros((k, t), dtype=bool)
        for j, (e, _, _) in enumerate(self._rows):
            x[j, : len(e)] = e
            m[j, : len(e)] = True
        for ds, n_new in ((self._x, n0 + k), (self._m, n0 + k), (self._y, n0 + k), (self._v, n0 + k)):
            ds.resize(n_new, axis=0)
        self._x[n0 : n0 + k, :t] = x
        self._m[n0 : n0 + k, :t] = m
        self._y[n0 : n0 + k] = np.stack([r[1] for r in self._rows])
        self._v[n0 : n0 + k] = [r[2] for r in self._rows]
        self.n += k
        self._rows = []

    def close(self) -> None:
        if self._f is None:
            return
        self.flush()
        strings = _h5py().string_dtype()
        self._f.attrs["n_bad"] = len(self.bad)
        self._f.attrs["bad_files"] = np.array([p for p, _ in self.bad], dtype=strings)
        self._f.attrs["bad_reasons"] = np.array([r for _, r in self.bad], dtype=strings)
        self._f.close()
        self._f = None
