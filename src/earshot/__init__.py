"""earshot — sound classification: a pretrained AudioSet tagger, custom classifiers, one ONNX bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from earshot.errors import AudioError, DataError, EarshotError, LabelError, ModelError, StorageError
from earshot.prediction import Event, Prediction, Segment

__version__ = "0.1.0"

if TYPE_CHECKING:
    from earshot.classifier import Classifier

__all__ = [
    "AudioError", "Classifier", "DataError", "EarshotError", "Event", "LabelError", "ModelError", "Prediction",
    "Segment", "StorageError", "load", "train", "__version__",
]


def load(model: str | Path = "mn04-as", **options: Any) -> Classifier:
    """A Classifier for a registry name (`mn04-as`), a bundle directory, or an `s3://` bundle prefix."""
    from earshot.classifier import Classifier

    return Classifier.load(model, **options)


def train(data: str | Path, out: str | Path, **options: Any) -> Path:
    """Train a classifier on `data` (any supported layout) and write a bundle to `out`; needs `earshot[train]`."""
    from earshot.training import train as _train

    return _train(data, out, **options)


def __getattr__(name: str):
    if name == "Classifier":
        from earshot.classifier import Classifier

        return Classifier
    raise AttributeError(name)
