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
    "Segment", "StorageError", "adapt", "load", "train", "__version__",
]


def load(model: str | Path = "mn04-as", **options: Any) -> Classifier:
    """A Classifier for a registry name (`mn04-as`), a bundle directory, or an `s3://` bundle prefix."""
    from earshot.classifier import Classifier

    return Classifier.load(model, **options)


def train(data: str | Path, out: str | Path, **options: Any) -> Path:
    """Train a classifier on `data` (any supported layout) and write a bundle to `out`; needs `earshot[train]`."""
    from earshot.training import train as _train

    return _train(data, out, **options)


def adapt(model: str | Path, sources: Any, out: str | Path, **options: Any) -> Path:
    """A copy of bundle `model` at `out` adapted to the domain of `sources` (unlabelled audio: a new voice,
    microphone or site) by re-estimating its normalisation statistics; needs `earshot[adapt]`. See
    `earshot.adaptation`."""
    from earshot.adaptation import adapt as _adapt

    return _adapt(model, sources, out, **options)


def __getattr__(name: str):
    if name == "Classifier":
        from earshot.classifier import Classifier

        return Classifier
    raise AttributeError(name)
