"""The bundle of a fit: the chosen model exported with its card (data summary, training record, validation
metrics computed on onnxruntime as `earshot evaluate` does, and the test fold's when there is one), the confusion
matrix and learning curves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from earshot.bundle import CARD_FILE, write_json_atomic
from earshot.classifier import Classifier
from earshot.models import speech, whisper, words
from earshot.training.additions import added_summary, keyword_fields
from earshot.training.evaluation import metrics_for, plot_confusion, score_items
from earshot.training.export import export_bundle
from earshot.training.keywords import WORDS_LAYOUT
from earshot.training.loop import Log, training_device

if TYPE_CHECKING:
    from earshot.training.families import Fit
    from earshot.training.manifest import Manifest


_COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}


def write_bundle(result: Fit, out: str | Path, *, backbone: str = "mn04-as", t_start: float | None = None,
                 log: Log | None = None, name: str | None = None) -> Path:
    """Export `result.chosen` with its card, score it on the validation split (and the test fold, if any) with
    onnxruntime, add plots."""
    out = Path(out)
    t_start = time.time() if t_start is None else t_start
    log = log or Log(True, None)
    chosen, manifest, tr, va = result.chosen, result.manifest, result.train_idx, result.val_idx
    labels = manifest.labels
    sources = {"transfer": f"transfer learning on {backbone} (EfficientAT, MIT) features",
               "cnn": "CompactCNN trained from scratch by earshot",
               "speech": f"a head trained by earshot on {speech.SOURCE}",
               "word": f"a head trained by earshot on {words.SOURCE}",
               "whisper": f"a head trained by earshot on {whisper.SOURCE}"}
    weights_license = {"transfer": ["MIT (EfficientAT weights)"], "speech": [speech.LICENSE], "word": [words.LICENSE],
                       "whisper": [whisper.LICENSE]}
    members = chosen.family.split("+")  # an average's family names its members (`speech.averaged`)
    source = sources[chosen.family] if len(members) == 1 else (
        f"the average of {_COUNTS[len(members)]}: " + "; ".join(sources[m] for m in members))
    licenses = [lic for m in members for lic in weights_license.get(m, [])]
    added = result.added
    data_summary = added_summary(manifest, added)
    data_summary["skipped_files"] = manifest.skipped[:1000]
    data_summary["n_train"], data_summary["n_validation"] = int(len(tr)), int(len(va))
    held = manifest.holdout_indices()
    if len(held):
        data_summary["n_test"] = int(len(held))
    groups = {side: sorted({manifest.items[int(i)].group for i in idx} - {None})
              for side, idx in (("train", tr), ("validation", va))}
    if groups["validation"]:
        data_summary["split_groups"] = {k: v[:500] for k, v in groups.items()}
    card = {
        "name": name or out.name,
        "description": f"{len(labels)}-class classifier ({chosen.family}) trained on "
                       + ("synthetic voices alone (no recordings)" if manifest.layout == WORDS_LAYOUT
                          else f"{manifest.layout} data"),
        "labels": labels,
        "label_ids": None,
        "sample_rate": chosen.sample_rate,
        "window_seconds": chosen.window_seconds,
        "min_seconds": chosen.min_seconds,
        "multi_label": False,
        "thresholds": None,
        "metrics": {},
        **keyword_fields(added),
        "training": {
            "family": chosen.family,
            "why": result.why,
            "candidates": {c.family: {"val_accuracy": round(c.val_accuracy, 6), "epochs_run": len(c.history)}
                           for c in result.candidates},
            "backbone": backbone if chosen.family == "transfer" else None,
            **result.options,
            **chosen.config,
            "device": str(training_device()),
            "torch": torch.__version__,
            "history": chosen.history,
        },
        "data": data_summary,
        "source": source,
        "license": "; ".join([*licenses, "check the license of your training data"]),
    }
    t0 = time.time()
    export_bundle(chosen.model, out, card)
    log(f"exported {out} in {time.time() - t0:.1f}s", stage="exported")
    # the card's metrics: the exported bundle on onnxruntime, as `earshot evaluate` computes them
    clf = Classifier.load(out)
    metrics, _ = _bundle_metrics(clf, manifest, va)
    metrics["split"] = "validation"
    if result.cv is not None:
        metrics["cv"] = result.cv
    if len(held):
        metrics["test"] = _test_metrics(clf, manifest, held)
        log(f"test accuracy {metrics['test']['accuracy']:.4f}, macro-F1 {metrics['test']['macro_f1']:.4f} "
            f"(n {metrics['test']['n']}, fold {manifest.test_fold}: not used in training or in choosing the model)",
            stage="test", accuracy=metrics["test"]["accuracy"], macro_f1=metrics["test"]["macro_f1"])
    card = clf.card  # as written by export_bundle, read through read_bundle
    card["metrics"] = metrics
    card["training"]["wall_seconds"] = round(time.time() - t_start, 2)
    write_json_atomic(out / CARD_FILE, card)
    plot_confusion(metrics, out / "confusion_matrix.png", title=f"{card['name']} validation")
    _plot_curves(chosen.history, out / "learning_curves.png", chosen.family)
    log(f"validation accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} (n {metrics['n']}); "
        f"bundle {out} in {time.time() - t_start:.1f}s", stage="done", accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"], bundle=str(out))
    return out


def _bundle_metrics(clf: Classifier, manifest: Manifest, idx: np.ndarray) -> tuple[dict, int]:
    """Metrics of the exported bundle on the items `idx`, and how many of them could not be read (left out)."""
    labels = manifest.labels
    items = [manifest.items[int(i)] for i in idx]
    scores, kept = score_items(clf, items)
    y_true = [labels.index(items[k].label) for k in kept]
    return metrics_for(y_true, scores.argmax(1).tolist(), labels), len(items) - len(kept)


def _test_metrics(clf: Classifier, manifest: Manifest, held: np.ndarray) -> dict:
    """The card's ``metrics.test``: the exported bundle on the test fold, scored once."""
    metrics, skipped = _bundle_metrics(clf, manifest, held)
    return {**metrics, "split": "test", "fold": manifest.test_fold, "skipped": skipped}


def _plot_curves(history: list[dict[str, float]], path: Path, family: str) -> None:
    """Training and validation loss with validation accuracy per epoch, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, [h["loss"] for h in history], label="train loss")
    if any("val_loss" in h for h in history):
        ax.plot(ep, [h.get("val_loss", np.nan) for h in history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_acc"] for h in history], color="tab:green", label="validation accuracy")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1.01)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax.set_title(f"{family} learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
