"""Metrics of a bundle on labelled data, computed with the serving path only (onnxruntime `Classifier`, no torch).

`metrics_for` / `multilabel_metrics_for` are the one implementation of the metrics: `earshot.training.card`
uses them for the model card and `earshot.training.families` for cross-validation, so `earshot evaluate` on the
validation split reproduces the card's numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from earshot.errors import AudioError, DataError
from earshot.training.loading import load_manifest
from earshot.training.manifest import Item
from earshot.training.splits import split as split_manifest

if TYPE_CHECKING:
    from earshot.classifier import Classifier


def metrics_for(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Single-label metrics: accuracy, macro_f1, per_class precision/recall/f1/support, confusion matrix, n.

    `y_true`/`y_pred` are class indices into `labels`; confusion_matrix[i][j] counts true i predicted j.
    Macro F1 averages over the classes present in `y_true` or `y_pred`.
    """
    yt, yp = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (yt, yp), 1)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = (support > 0) | (predicted > 0)
    n = int(len(yt))
    return {
        "accuracy": round(float(tp.sum() / n), 6) if n else 0.0,
        "macro_f1": round(float(f1[present].mean()), 6) if present.any() else 0.0,
        "per_class": {
            lab: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                  "f1": round(float(f1[i]), 6), "support": int(support[i])}
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "n": n,
    }


def average_precision(y: np.ndarray, s: np.ndarray) -> float | None:
    """AP of scores `s` for binary targets `y` (None when there is no positive)."""
    pos = int(y.sum())
    if pos == 0:
        return None
    order = np.argsort(-s, kind="stable")
    hits = y[order].astype(np.float64)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / pos)


def roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Area under the ROC curve of scores `s` for binary targets `y` (tied scores count half); None unless
    both classes occur. The Mann-Whitney statistic over average ranks."""
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each score
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def d_prime(auc: float | None) -> float | None:
    """Sensitivity index of an AUC: d' = sqrt(2) * inverse normal CDF(AUC)."""
    from statistics import NormalDist

    if auc is None:
        return None
    return float(np.sqrt(2.0) * NormalDist().inv_cdf(min(max(auc, 1e-9), 1 - 1e-9)))


def multilabel_metrics_for(y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Multi-label metrics: mAP over classes with positives, `auc` (mean per-class ROC AUC over classes with
    positives and negatives), `d_prime` (of that mean AUC), per_class_ap, per_class_auc, n. `y_true` is
    [n, classes] 0/1."""
    aps = {lab: average_precision(y_true[:, i], scores[:, i]) for i, lab in enumerate(labels)}
    aucs = {lab: roc_auc(y_true[:, i], scores[:, i]) for i, lab in enumerate(labels)}
    valid = [v for v in aps.values() if v is not None]
    valid_auc = [v for v in aucs.values() if v is not None]
    auc = float(np.mean(valid_auc)) if valid_auc else None
    dp = d_prime(auc)
    return {
        "mAP": round(float(np.mean(valid)), 6) if valid else None,
        "auc": round(auc, 6) if auc is not None else None,
        "d_prime": round(dp, 6) if dp is not None else None,
        "per_class_ap": {k: (round(v, 6) if v is not None else None) for k, v in aps.items()},
        "per_class_auc": {k: (round(v, 6) if v is not None else None) for k, v in aucs.items()},
        "labels": list(labels),
        "n": int(len(y_true)),
    }


def plot_confusion(metrics: dict[str, Any], path: str | Path, title: str = "confusion matrix") -> Path:
    """Write the confusion matrix of `metrics` as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"])
    labels = metrics["labels"]
    k = len(labels)
    size = min(14.0, 3.0 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (accuracy {metrics['accuracy']:.3f}, n {metrics['n']})")
    if k <= 30:
        top = cm.max() or 1
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def score_items(clf: Classifier, items: Sequence[Item],
                on_error: Callable[[Item, AudioError], None] | None = None) -> tuple[np.ndarray, list[int]]:
    """Clip scores [n, classes] of manifest items with a Classifier (the clip policy of `earshot.clips`);
    unreadable items are reported and left out. Returns (scores, kept item indices)."""
    rows, kept = [], []
    for i, it in enumerate(items):
        try:
            y = clf.decode(it.source, str(it.path))
        except AudioError as e:
            if on_error is not None:
                on_error(it, e)
            continue
        rows.append(clf.clip_scores(y))
        kept.append(i)
    scores = np.stack(rows) if rows else np.zeros((0, len(clf.labels)), dtype=np.float32)
    return scores, kept


def evaluate(
    bundle: str | Path,
    data: str | Path,
    *,
    val_fold: str | int | None = None,
    val_split: float | None = None,
    filters: Sequence[str] = (),
    label_regex: str | None = None,
    group_regex: str | None = None,
    split: str = "all",
    seed: int = 0,
    confusion_png: str | Path | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Metrics of `bundle` (path or registry name) on `data` (any layout `load_manifest` reads).

    `split="all"` scores every item (restricted to the fold given by `val_fold`, if any); `split="val"` scores
    the validation side of `earshot.training.splits.split(val_fold, val_split, seed)` — the split `train` used
    with the same options, hence the card's numbers. Classes of the data that the model does not know are an
    error. Unreadable files are skipped and listed under `skipped`.
    """
    from earshot.classifier import Classifier
    from earshot.packed import is_packed_path

    if is_packed_path(data):
        from earshot.head import evaluate_packed

        return evaluate_packed(bundle, data, split=split, val_split=val_split, seed=seed)
    clf = Classifier.load(bundle)
    manifest = load_manifest(data, label_regex=label_regex, group_regex=group_regex, filters=filters,
                             min_classes=1)
    if clf.card.get("keywords") and "_unknown_" in clf.labels:  # a keyword model: other words are _unknown_
        for it in manifest.items:
            if it.label not in clf.card["keywords"]:
                it.label = "_unknown_"
    unknown = sorted(set(manifest.labels) - set(clf.labels))
    if unknown:
        raise DataError(f"label(s) {unknown[:10]} are not among the model's labels {clf.labels[:10]}...",
                        source=str(data), reason="unknown_label")
    if split == "val":
        _, idx = split_manifest(manifest, val_fold=val_fold, val_split=val_split, seed=seed)
    elif split == "all":
        idx = np.arange(len(manifest))
        if val_fold is not None:
            idx = np.array([i for i, it in enumerate(manifest.items) if it.fold == str(val_fold)], dtype=np.int64)
            if not len(idx):
                raise DataError(f"no fold {val_fold!r}; folds are {manifest.folds}", reason="unknown_fold")
    else:
        raise ValueError(f"split must be 'all' or 'val', not {split!r}")
    items = [manifest.items[i] for i in idx]
    skipped: list[dict[str, str]] = list(manifest.skipped)

    def on_error(it: Item, e: AudioError) -> None:
        skipped.append({"path": str(it.path), "reason": e.reason or "unreadable", "message": str(e)})
        if not quiet:
            print(f"skipped {it.path}: {e}", file=sys.stderr)

    scores, kept = score_items(clf, items, on_error)
    index = {lab: i for i, lab in enumerate(clf.labels)}
    y_true = np.array([index[items[i].label] for i in kept], dtype=np.int64)
    if clf.multi_label:
        onehot = np.zeros_like(scores)
        for r, i in enumerate(kept):  # every label of a multi-label clip
            onehot[r, [index[lab] for lab in items[i].labels]] = 1
        metrics = multilabel_metrics_for(onehot, scores, clf.labels)
    else:
        metrics = metrics_for(y_true, scores.argmax(1) if len(scores) else y_true, clf.labels)
        if confusion_png is not None:
            plot_confusion(metrics, confusion_png, title=f"{clf.name} on {Path(str(data)).name}")
    metrics["skipped"] = len(skipped)
    metrics["skipped_files"] = skipped[:50]
    metrics["model"] = clf.name
    metrics["split"] = split
    return metrics
