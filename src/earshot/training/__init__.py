"""Training: a labelled data set → a classifier bundle, and its evaluation.

The data path, module by module:

- `manifest` (`Item`, `Manifest`), `loading` (`load_manifest`: layouts in `layouts` and `hf_disk`, filters,
  regex labels and groups), `splits` (`split`, `cv_folds`: group-aware, stratified);
- `features` (cached transfer features), the families `transfer` and `cnn` (with `augment`), sharing `loop`;
- `families` (`fit`, `train`: candidates and the ``auto`` choice), `card` (`write_bundle`), `export`
  (`export_bundle`);
- `evaluation` (`evaluate`, `metrics_for`): metrics of a bundle on onnxruntime.

The manifest, split and evaluation parts import no torch; the names of the other parts are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from earshot.training.evaluation import evaluate, metrics_for, multilabel_metrics_for
from earshot.training.loading import load_manifest
from earshot.training.manifest import Item, Manifest
from earshot.training.splits import cv_folds, split

if TYPE_CHECKING:
    from earshot.training.card import write_bundle
    from earshot.training.cnn import train_cnn, window_for
    from earshot.training.export import export_bundle
    from earshot.training.families import FAMILIES, Fit, fit, train
    from earshot.training.features import embeddings_dir, feature_extractor, feature_network, transfer_features
    from earshot.training.loop import Trained
    from earshot.training.transfer import train_transfer

_TORCH_NAMES = {
    "FAMILIES": "families", "Fit": "families", "fit": "families", "train": "families",
    "write_bundle": "card", "export_bundle": "export", "Trained": "loop",
    "embeddings_dir": "features", "feature_extractor": "features", "feature_network": "features",
    "transfer_features": "features", "train_transfer": "transfer", "train_cnn": "cnn", "window_for": "cnn",
}

__all__ = [
    "FAMILIES", "Fit", "Item", "Manifest", "Trained", "cv_folds", "embeddings_dir", "evaluate", "export_bundle",
    "feature_extractor", "feature_network", "fit", "load_manifest", "metrics_for", "multilabel_metrics_for",
    "split", "train", "train_cnn", "train_transfer", "transfer_features", "window_for", "write_bundle",
]


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_TORCH_NAMES))
