"""Multi-label training on per-window embeddings: a pooling head (`earshot.training.pooling`) fitted with
sigmoid outputs and binary cross-entropy, class-balanced batches and early stopping on validation mAP.

Data: a packed embedding file (`earshot.packed`: the AudioSet release as packed by Kong et al., or an
`earshot embed` file), or a multi-label data set (a CSV with a ``labels`` column), which is embedded first through
the embedding cache (`earshot.training.embed`). Long-tailed labels are met with Kong et al.'s balanced batches:
each batch draws clips class by class, cycling through the classes in shuffled order.

After fitting, `earshot.training.head_bundle` writes the bundle, scores the validation rows with it on
onnxruntime, and stores per-class thresholds (maximum F1 on validation) and metrics in the card.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from earshot.errors import DataError
from earshot.packed import PackedReader, is_packed_path, split_rows
from earshot.training.evaluation import average_precision
from earshot.training.loop import BestEpoch, Log, Progress, seed_all, torch_settings, training_device
from earshot.training.pooling import POOLINGS, PoolingHead

LEARNING_RATE = 1e-3  # Adam, as Kong et al.
HIDDEN = 1024  # Kong et al.'s embedding layers, for sets of LARGE_SET training clips or more
HIDDEN_SMALL = 256  # smaller sets: a quarter of the units (16x fewer weights between embedding layers)
LARGE_SET = 5000
MAX_BATCH = 500  # Kong et al.'s batch; small sets use batches of 1/8 of the training clips (at least 32)
PATIENCE = 20


@dataclass
class HeadFit:
    """A fitted pooling head and its record."""

    head: PoolingHead
    pooling: str
    history: list[dict[str, float]]
    val_map: float
    config: dict[str, Any] = field(default_factory=dict)


class BalancedBatches:
    """Batches of row positions drawn class by class (classes cycled in shuffled order, each class's clips in
    shuffled order, reshuffled when used up); clips without any label form one more class."""

    def __init__(self, y: np.ndarray, batch_size: int, rng: np.random.Generator) -> None:
        self.pools = [np.flatnonzero(y[:, c]) for c in range(y.shape[1]) if y[:, c].any()]
        none = np.flatnonzero(~y.any(axis=1))
        if len(none):
            self.pools.append(none)
        self.batch_size, self.rng = batch_size, rng
        self.queues = [rng.permutation(p) for p in self.pools]
        self.ptr = [0] * len(self.pools)
        self.order, self.pos = rng.permutation(len(self.pools)), 0

    def next(self) -> np.ndarray:
        out = np.empty(self.batch_size, dtype=np.int64)
        for j in range(self.batch_size):
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.pools)), 0
            c = int(self.order[self.pos])
            self.pos += 1
            if self.ptr[c] == len(self.queues[c]):
                self.queues[c], self.ptr[c] = self.rng.permutation(self.pools[c]), 0
            out[j] = self.queues[c][self.ptr[c]]
            self.ptr[c] += 1
        return out


def frame_stats(reader: PackedReader, rows: np.ndarray, limit: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the real frames of (up to `limit` of) `rows`, accumulated in batches."""
    rows = rows[:: max(1, len(rows) // limit)]
    total = np.zeros(reader.dim)
    square = np.zeros(reader.dim)
    count = 0
    for s in range(0, len(rows), 2048):
        x, m = reader.take(rows[s : s + 2048])
        frames = x[m].astype(np.float64)
        total += frames.sum(axis=0)
        square += (frames**2).sum(axis=0)
        count += len(frames)
    mean = total / max(1, count)
    return mean.astype(np.float32), np.sqrt(np.maximum(square / max(1, count) - mean**2, 0)).astype(np.float32)


def mean_ap(y: np.ndarray, scores: np.ndarray) -> float:
    """mAP over the classes with positives (`evaluation.average_precision`)."""
    aps = [average_precision(y[:, c], scores[:, c]) for c in range(y.shape[1])]
    valid = [a for a in aps if a is not None]
    return float(np.mean(valid)) if valid else 0.0


def head_scores(head: PoolingHead, reader: PackedReader, rows: np.ndarray, dev: torch.device,
                batch: int = 1024) -> np.ndarray:
    """Clip probabilities [len(rows), classes] of a torch head (eval mode, padding masked)."""
    head.eval()
    parts = []
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            x, m = reader.take(rows[s : s + batch])
            parts.append(head(torch.as_tensor(x, device=dev), torch.as_tensor(m, device=dev))[0].cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, reader.n_classes), dtype=np.float32)


def fit_head(reader: PackedReader, tr: np.ndarray, va: np.ndarray, *, pooling: str = "attention",
             epochs: int | None = None, seed: int = 0, hidden: int | None = None, lr: float = LEARNING_RATE,
             patience: int = PATIENCE, log: Log | None = None) -> HeadFit:
    """Fit a `PoolingHead` on rows `tr` of a packed file, early stopping on the mAP of rows `va`."""
    if pooling not in POOLINGS:
        raise DataError(f"--pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}", reason="bad_option")
    log = log or Log(True, None)
    seed_all(seed)
    dev = training_device()
    held = reader.hold()
    y = reader.y
    if not y[tr].any():
        raise DataError("no positive labels among the training clips", reason="no_labels")
    mean, std = frame_stats(reader, tr)
    hidden = hidden or (HIDDEN if len(tr) >= LARGE_SET else HIDDEN_SMALL)
    head = PoolingHead(reader.dim, reader.n_classes, pooling=pooling, hidden=hidden, mean=torch.as_tensor(mean),
                       std=torch.as_tensor(std)).to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    bs = int(min(MAX_BATCH, max(32, len(tr) // 8)))
    steps = max(1, math.ceil(len(tr) / bs))
    n_epochs = epochs or 100
    batches = BalancedBatches(y[tr], bs, np.random.default_rng(seed))
    best, history = BestEpoch(patience), []
    t0 = time.time()
    with _threads_for(bs * reader.frames * hidden, dev):
        for epoch in range(1, n_epochs + 1):
            if _epoch(head, opt, reader, tr, va, batches, steps, epoch, best, history, dev, pooling, log):
                break
    head.load_state_dict(best.state)
    config = {"pooling": pooling, "hidden": hidden, "layers": 3, "dropout": 0.5, "optimizer": "Adam", "lr": lr,
              "batch_size": bs, "steps_per_epoch": steps, "epochs_run": len(history), "max_epochs": n_epochs,
              "loss": "binary cross-entropy on sigmoid outputs", "sampling": "class-balanced batches",
              "early_stopping": f"validation mAP, then loss; patience {patience}", "x_in_memory": held,
              "fit_seconds": round(time.time() - t0, 2)}
    log(f"{pooling} head: best val_mAP {best.accuracy:.4f} after {len(history)} epochs", stage="trained",
        family="multilabel", val_mAP=best.accuracy)
    return HeadFit(head.cpu().eval(), pooling, history, best.accuracy, config)


def _epoch(head: PoolingHead, opt: torch.optim.Optimizer, reader: PackedReader, tr: np.ndarray, va: np.ndarray,
           batches: BalancedBatches, steps: int, epoch: int, best: BestEpoch, history: list[dict[str, float]],
           dev: torch.device, pooling: str, log: Log) -> bool:
    """One epoch of `steps` balanced batches, then validation; returns whether early stopping says stop."""
    y = reader.y
    head.train()
    total = 0.0
    for _ in range(steps):
        idx = tr[batches.next()]
        x, m = reader.take(idx)
        target = torch.as_tensor(y[idx], dtype=torch.float32, device=dev)
        p, _ = head(torch.as_tensor(x, device=dev), torch.as_tensor(m, device=dev))
        loss = torch.nn.functional.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
    scores = head_scores(head, reader, va, dev)
    vloss = float(torch.nn.functional.binary_cross_entropy(
        torch.as_tensor(scores).clamp(1e-7, 1 - 1e-7), torch.as_tensor(y[va], dtype=torch.float32)))
    vmap = mean_ap(y[va], scores)
    history.append({"epoch": epoch, "loss": total / steps, "val_loss": vloss, "val_mAP": vmap})
    best.update(head, vmap, vloss)
    if epoch == 1 or epoch % 10 == 0:
        log(f"{pooling} head epoch {epoch}: loss {total / steps:.4f} val_loss {vloss:.4f} val_mAP {vmap:.4f}",
            stage="epoch", family="multilabel", epoch=epoch, loss=total / steps, val_mAP=vmap)
    return best.done


@contextlib.contextmanager
def _threads_for(work: int, dev: torch.device) -> Iterator[None]:
    """One torch thread on the CPU while a batch's matrices are small (batch frames x hidden units < 2^20):
    there each op is too short to share, and waiting on the pool dominates (a 10-epoch fit on the ESC-10
    mixtures: 0.27 s on one thread, 10.5 s on two on a busy 2-core machine)."""
    before = torch.get_num_threads()
    if dev.type == "cpu" and work < 2**20:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def max_f1_thresholds(y: np.ndarray, scores: np.ndarray, default: float = 0.5) -> list[float]:
    """Per class, the threshold of maximum F1 on (`y`, `scores`): halfway between the lowest score kept and the
    next; `default` for a class without positives."""
    out = []
    for c in range(y.shape[1]):
        pos = int(y[:, c].sum())
        if pos == 0:
            out.append(default)
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, hits = scores[order, c], y[order, c].astype(np.float64)
        tp = np.cumsum(hits)
        f1 = 2 * tp / (np.arange(1, len(s) + 1) + pos)
        f1[:-1][s[:-1] == s[1:]] = -1  # cut only between distinct scores
        k = int(np.argmax(f1))
        below = float(s[k + 1]) if k + 1 < len(s) else 0.0
        out.append(round((float(s[k]) + below) / 2, 6))
    return out


def is_multi_label_data(data: str | os.PathLike) -> bool:
    """Whether DATA is a table (CSV/TSV/JSON lines, or a folder whose top holds one CSV) with a ``labels``
    column: read from its header only."""
    from earshot.training.layouts import MULTI_LABEL_COLUMNS, single_manifest_csv

    p = Path(data).expanduser()
    try:
        table = p if p.is_file() else single_manifest_csv(p) if p.is_dir() else None
    except DataError:
        return False
    if table is None:
        return False
    suffix = table.suffix.lower()
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            if suffix in (".jsonl", ".ndjson"):
                first = next((line for line in f if line.strip()), "{}")
                header = list(json.loads(first))
            elif suffix in (".csv", ".tsv"):
                header = next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), [])
            else:
                return False
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return any(h.strip().lower() in MULTI_LABEL_COLUMNS for h in header)


def routes_here(data: str | os.PathLike, options: dict[str, Any]) -> bool:
    """Whether `train` is multi-label training: an embedding file, `pooling` asked for, or multi-label data."""
    from earshot.pipeline.remote import is_remote

    if is_packed_path(data) or options.get("pooling"):
        return True
    return not is_remote(data) and is_multi_label_data(data)


def train_multilabel(data: str | os.PathLike, out: str | os.PathLike, *, pooling: str | None = None,
                     val_split: float | None = None, val_fold: str | int | None = None, epochs: int | None = None,
                     seed: int = 0, backbone: str = "mn04-as", window: float = 1.0, hop: float | None = None,
                     filters: Sequence[str] = (), label_regex: str | None = None, group_regex: str | None = None,
                     hidden: int | None = None, endpoint_url: str | None = None, quiet: bool = False,
                     progress: Progress | None = None, name: str | None = None, model: str = "auto",
                     cv: int | None = None, finetune: bool = False, test_fold: str | int | None = None,
                     **ignored: Any) -> str | Path:
    """Multi-label training → bundle `out` (a folder or s3:// prefix). DATA: a packed embedding file (local or
    s3://) or a multi-label data set (embedded first, through the cache). Returns `out`."""
    from earshot.pipeline.remote import is_remote, local_input, local_output
    from earshot.training.head_bundle import write_head_bundle

    if cv or finetune or model not in ("auto", "transfer"):
        raise DataError("multi-label training fits a pooling head on embeddings: --cv, --finetune and --model "
                        f"{model} do not apply", reason="bad_option")
    if test_fold is not None:
        raise DataError("multi-label training takes no --test-fold: leave the held-out data out of DATA and score "
                        "it with `earshot evaluate`", reason="bad_option")
    t_start = time.time()
    log = Log(quiet, progress)
    pooling = pooling or "attention"
    card_name = name or Path(str(out).rstrip("/")).name
    with torch_settings(), local_output(out, endpoint_url) as target, local_input(data, endpoint_url) as local, \
            tempfile.TemporaryDirectory(prefix="earshot-ml-") as tmp:
        summary: dict[str, Any] = {"source": str(data)}
        if is_packed_path(local):
            if val_fold is not None:
                raise DataError("an embedding file has no folds: use --val-split", reason="bad_option")
            reader = PackedReader(local)
            tr, va = split_rows(reader.n, val_split, seed)
        else:
            reader, tr, va, summary = _embed_for_training(local, Path(tmp) / "embeddings.h5", backbone=backbone,
                                                          window=window, hop=hop, filters=filters,
                                                          label_regex=label_regex, group_regex=group_regex,
                                                          val_fold=val_fold, val_split=val_split, seed=seed, log=log)
            summary["source"] = str(data)
        with reader:
            log(f"{reader.n} clips x {reader.frames} frames x {reader.dim}-d, {reader.n_classes} classes; split "
                f"{len(tr)} train, {len(va)} validation", stage="split")
            fitted = fit_head(reader, tr, va, pooling=pooling, epochs=epochs, seed=seed, hidden=hidden, log=log)
            options = {"val_split": val_split, "val_fold": val_fold, "seed": seed, "max_epochs": epochs}
            write_head_bundle(fitted, reader, target, tr=tr, va=va, name=card_name, data_summary=summary,
                              options=options, log=log, t_start=t_start)
        if is_remote(out):
            log(f"uploading to {out}", stage="upload")
    return out if is_remote(out) else Path(out)


def _embed_for_training(data: Path, path: Path, *, backbone: str, window: float, hop: float | None,
                        filters: Sequence[str], label_regex: str | None, group_regex: str | None,
                        val_fold: str | int | None, val_split: float | None, seed: int,
                        log: Log) -> tuple[PackedReader, np.ndarray, np.ndarray, dict[str, Any]]:
    """Embed a data set (cached) into `path`; its split (group-aware, `splits.split`) as rows of that file."""
    from earshot.training.embed import embed_manifest
    from earshot.training.loading import load_manifest
    from earshot.training.splits import split

    manifest = load_manifest(data, label_regex=label_regex, group_regex=group_regex, filters=filters)
    log(f"{manifest.layout} layout: {len(manifest)} clips, {len(manifest.labels)} labels"
        + (" (multi-label)" if manifest.multi_label else ""), stage="manifest")
    tr_items, va_items = split(manifest, val_fold=val_fold, val_split=val_split, seed=seed)
    summary = manifest.summary()
    written = embed_manifest(manifest, path, backbone=backbone, window=window, hop=hop, dtype="float32", log=log)
    row_of = {item: row for row, item in enumerate(written["items"])}
    tr = np.array([row_of[int(i)] for i in tr_items if int(i) in row_of], dtype=np.int64)
    va = np.array([row_of[int(i)] for i in va_items if int(i) in row_of], dtype=np.int64)
    summary.update({"n_train": len(tr), "n_validation": len(va), "skipped_files": written["bad_files"],
                    "embedded": {k: written[k] for k in ("n", "n_bad", "frames", "embedding_dim", "cached")}})
    if not len(tr) or not len(va):
        raise DataError("too few readable clips on one side of the split", reason="bad_split")
    return PackedReader(path), tr, va, summary
