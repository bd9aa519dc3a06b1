"""A bundle's pooling head over packed embeddings, on onnxruntime (no torch): scores, predictions, metrics.

Two kinds of bundle carry a head (`earshot.training.multilabel`):

- head-only (embeddings from elsewhere, e.g. the AudioSet VGGish release): `model.onnx` takes `embeddings`
  float32 [batch, frames, dim] and returns `scores` [batch, classes] and `embedding` [batch, hidden]; the card
  says so (`input: "embeddings"`, `embedding_dim`, `frames`, `dequantize`: how uint8 files map to floats);
- waveform bundles trained on earshot embeddings: `model.onnx` takes the waveform as every bundle does, and the
  same head is beside it as `head.onnx`, described by the card's `head`.

Rows are scored on their real frames only (a file's `mask`: real frames first, padding after, as `earshot embed`
writes them), grouped by frame count so batches stay dense.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from earshot import cores, ranking
from earshot.bundle import MODEL_FILE, Bundle, read_bundle
from earshot.errors import DataError, ModelError
from earshot.packed import PackedReader, open_packed, split_rows
from earshot.prediction import Prediction

BATCH_ROWS = 256


def head_spec(card: dict[str, Any]) -> dict[str, Any] | None:
    """The card's description of its embedding head (file, input, embedding_dim, frames, ...), or None."""
    if card.get("input") == "embeddings":
        return {"file": MODEL_FILE, **{k: card.get(k) for k in ("embedding_dim", "frames", "dequantize", "window",
                                                                  "hop", "backbone")}}
    head = card.get("head")
    return dict(head) if isinstance(head, dict) else None


def load_bundle(model: str | os.PathLike, endpoint_url: str | None = None) -> Bundle:
    """A bundle from a directory, a registry name or an s3:// prefix (fetched with `endpoint_url`)."""
    text = str(model)
    if text.startswith("s3://"):
        from earshot.models import models_dir
        from earshot.pipeline.storage import fetch_bundle

        return read_bundle(fetch_bundle(text, models_dir() / "remote", endpoint_url=endpoint_url))
    from earshot.models import resolve

    return read_bundle(resolve(text))


class HeadScorer:
    """Scores packed embeddings with a bundle's head; applies the card's thresholds to clip labels."""

    def __init__(self, bundle: Bundle, *, threads: int | None = None) -> None:
        card = bundle.card
        spec = head_spec(card)
        if spec is None:
            raise ModelError("this bundle has no embedding head: it scores audio (earshot predict FILE.wav); "
                             "heads come from `earshot train` on embedding files or multi-label data",
                             source=str(bundle.path), reason="no_head")
        self.bundle, self.card, self.spec = bundle, card, spec
        self.name: str = card["name"]
        self.labels: list[str] = list(card["labels"])
        self.label_ids: list[str | None] = list(card.get("label_ids") or [None] * len(self.labels))
        self.dim = int(spec["embedding_dim"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cores.usable()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(bundle.path / spec["file"]), opts,
                                            providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls, model: str | os.PathLike, endpoint_url: str | None = None, **options: Any) -> HeadScorer:
        return cls(load_bundle(model, endpoint_url), **options)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Scores [b, classes] of embeddings [b, frames, dim] (every frame real)."""
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise DataError(f"embeddings must be [batch, frames, {self.dim}], not {list(x.shape)}",
                            reason="bad_layout")
        return self.session.run(["scores"], {"embeddings": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def _check(self, reader: PackedReader) -> None:
        if reader.dim != self.dim:
            raise DataError(f"the file's embeddings are {reader.dim}-d; this head takes {self.dim}-d "
                            f"({self.spec.get('backbone') or 'its training data'})", source=str(reader.path),
                            reason="dim_mismatch")

    def score_rows(self, reader: PackedReader, rows: np.ndarray | None = None) -> np.ndarray:
        """Scores [len(rows), classes] of a packed file's rows (all by default), each on its real frames."""
        self._check(reader)
        rows = np.arange(reader.n) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), len(self.labels)), dtype=np.float32)
        for start in range(0, len(rows), 4096):  # a bounded slice of masks and rows at a time
            part = rows[start : start + 4096]
            valid = np.maximum(reader.mask(part).sum(axis=1), 1)
            for t in np.unique(valid):
                where = np.flatnonzero(valid == t)
                for b in range(0, len(where), BATCH_ROWS):
                    sel = where[b : b + BATCH_ROWS]
                    x, _ = reader.take(part[sel])
                    out[start + sel] = self.scores(x[:, :t])
        return out

    def predictions(self, reader: PackedReader, *, top_k: int = 5, threshold: float | None = None,
                    rows: np.ndarray | None = None) -> Iterator[Prediction]:
        """One Prediction per row (title = its clip id): labels at or above `threshold`, else at or above the
        card's per-class thresholds (multi-label bundles), at most `top_k`, best first."""
        self._check(reader)
        rows = np.arange(reader.n) if rows is None else np.asarray(rows, dtype=np.int64)
        ids = reader.video_ids
        thr: float | np.ndarray | None = threshold if threshold is not None else ranking.label_thresholds(self.card)
        for start in range(0, len(rows), BATCH_ROWS * 4):
            part = rows[start : start + BATCH_ROWS * 4]
            for r, s in zip(part, self.score_rows(reader, part)):
                labels, probs, lids = ranking.ranked(s, self.labels, self.label_ids, top_k, thr)
                yield Prediction(title=ids[int(r)], labels=labels, probabilities=probs, labels_info=lids,
                                 model=self.name)


def aligned_targets(reader: PackedReader, labels: list[str]) -> np.ndarray:
    """The file's multi-hot `y` in the model's label order; a file label the model lacks is an error when it
    has positives (dropped otherwise)."""
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = [lab for j, lab in enumerate(reader.labels) if lab not in index and reader.y[:, j].any()]
    if unknown:
        raise DataError(f"label(s) {unknown[:10]} are not among the model's labels {labels[:10]}...",
                        source=str(reader.path), reason="unknown_label")
    y = np.zeros((reader.n, len(labels)), dtype=bool)
    for j, lab in enumerate(reader.labels):
        if lab in index:
            y[:, index[lab]] = reader.y[:, j]
    return y


def evaluate_packed(bundle: str | Path, data: str | Path, *, split: str = "all", val_split: float | None = None,
                    seed: int = 0, endpoint_url: str | None = None) -> dict[str, Any]:
    """Multi-label metrics (`mAP`, `auc`, `d_prime`, `per_class_ap`, `n`, ...) of a bundle's head on a packed
    embedding file (local or s3://). `split="val"` scores the validation rows `earshot train` held out with the
    same `val_split` and `seed`."""
    from earshot.training.evaluation import multilabel_metrics_for

    scorer = HeadScorer.load(bundle, endpoint_url)
    with open_packed(data, endpoint_url) as reader:
        if split == "val":
            rows = split_rows(reader.n, val_split, seed)[1]
        elif split == "all":
            rows = np.arange(reader.n)
        else:
            raise ValueError(f"split must be 'all' or 'val', not {split!r}")
        y = aligned_targets(reader, scorer.labels)[rows]
        scores = scorer.score_rows(reader, rows)
    metrics = multilabel_metrics_for(y, scores, scorer.labels)
    metrics.update({"model": scorer.name, "split": split, "skipped": 0, "data": str(data)})
    return metrics
