"""Model registry: names → pretrained weights (official URL + sha256), labels, and how to build the bundle.

`pull(name)` fetches the weights (cache → EARSHOT_MODEL_MIRROR → official URL) and converts them once into a
bundle under `$EARSHOT_HOME/models/<name>`; from then on serving needs only onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earshot.bundle import is_bundle, read_bundle
from earshot.errors import ModelError
from earshot.models.weights import earshot_home, fetch


@dataclass(frozen=True)
class PretrainedSpec:
    name: str
    description: str
    url: str
    sha256: str
    sample_rate: int
    window_seconds: float
    license: str
    source: str
    metrics: dict[str, Any]
    build: Callable[[Path], Any]  # weights file → torch WaveformTagger (imports torch)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _build_mobilenet(width: float) -> Callable[[Path], Any]:
    def build(weights: Path):
        import torch

        from earshot.frontend import EfficientATMel
        from earshot.models.mobilenet import MobileNetAudio
        from earshot.models.tagger import WaveformTagger

        net = MobileNetAudio(width=width, num_classes=527)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return WaveformTagger(EfficientATMel(), net, multi_label=True).eval()

    return build


REGISTRY: dict[str, PretrainedSpec] = {
    "mn04-as": PretrainedSpec(
        name="mn04-as",
        description="EfficientAT MobileNetV3 width 0.4, AudioSet 527 classes (mAP .432), 0.98 M parameters",
        url="https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn04_as_mAP_432.pt",
        sha256="899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
        sample_rate=32000,
        window_seconds=10.0,
        license="MIT (EfficientAT code and weights); AudioSet labels CC BY 4.0",
        source="Schmid, Koutini, Widmer: Efficient Large-scale Audio Tagging via Transformer-to-CNN Knowledge "
        "Distillation, ICASSP 2023 (github.com/fschmid56/EfficientAT)",
        metrics={"audioset_mAP": 0.432},
        build=_build_mobilenet(0.4),
    ),
}

DEFAULT_MODEL = "mn04-as"


def models_dir() -> Path:
    return earshot_home() / "models"


def spec(name: str) -> PretrainedSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model; known: {', '.join(REGISTRY)} (or give a bundle directory)", source=name, reason="unknown"
        ) from None


def list_models() -> list[dict[str, Any]]:
    """Registry entries and bundles present in the models directory."""
    rows = []
    for s in REGISTRY.values():
        rows.append({"name": s.name, "description": s.description, "pulled": is_bundle(models_dir() / s.name),
                     "kind": "pretrained", "license": s.license})
    if models_dir().is_dir():
        for d in sorted(models_dir().iterdir()):
            if d.name not in REGISTRY and is_bundle(d):
                card = read_bundle(d).card
                rows.append({"name": d.name, "description": card.get("description", ""), "pulled": True,
                             "kind": "bundle", "license": card.get("license")})
    return rows


# Bumped when the exported graph of registry bundles changes (2: the convolutional front-end and the widened
# stem; 3: a graph for 16 kHz input; 4: and one for 8 kHz; 5: batch normalisation kept as its own node, for
# `earshot adapt`); an older bundle is rebuilt where torch is installed, and kept (it still works) where it is not.
BUILD = 5
# Input rates below the model's that registry bundles carry a graph for: 16 kHz is the rate of most speech and
# data-set audio, 8 kHz of telephony; their graphs skip the resampling and half or three quarters of the
# front-end (`earshot.frontend`).
SOURCE_RATES = (16000, 8000)


def _current(out: Path) -> bool:
    if read_bundle(out).card.get("build") == BUILD:
        return True
    import importlib.util

    return importlib.util.find_spec("torch") is None


def pull(name: str, force: bool = False) -> Path:
    """Bundle directory of a registry model, building it from the verified weights if needed (or when it was
    built by an older `BUILD`)."""
    s = spec(name)
    out = models_dir() / name
    if is_bundle(out) and not force and _current(out):
        return out
    weights = fetch(s.filename, s.url, s.sha256)
    try:
        from earshot.training.export import export_bundle
    except ImportError as e:
        raise ModelError(
            f"building the {name} bundle needs the train extra (pip install 'earshot[train]'): {e}",
            source=name,
            reason="needs_train_extra",
        ) from e
    from earshot.labels import audioset

    labels, ids = audioset()
    card = {
        "name": name,
        "description": s.description,
        "labels": list(labels),
        "label_ids": list(ids),
        "sample_rate": s.sample_rate,
        "window_seconds": s.window_seconds,
        "multi_label": True,
        "thresholds": None,
        "metrics": s.metrics,
        "training": None,
        "data": {"dataset": "AudioSet"},
        "source": s.source,
        "weights": {"url": s.url, "sha256": s.sha256},
        "license": s.license,
        "build": BUILD,
    }
    model = s.build(weights)
    from earshot.models.mobilenet import MobileNetAudio, widen_stem

    if isinstance(getattr(model, "backbone", None), MobileNetAudio):
        widen_stem(model.backbone)  # same function, faster graph on onnxruntime
    rates = [r for r in SOURCE_RATES if r < s.sample_rate and s.sample_rate % r == 0]
    return export_bundle(model, out, card, source_rates=rates)


def resolve(model: str | Path) -> Path:
    """Bundle directory for a registry name, a bundle path, or an `s3://` bundle prefix."""
    text = str(model)
    if text.startswith("s3://"):
        from earshot.pipeline.storage import fetch_bundle

        return fetch_bundle(text, models_dir() / "remote")
    p = Path(text).expanduser()
    if is_bundle(p):
        return p
    if text in REGISTRY:
        return pull(text)
    if is_bundle(models_dir() / text):
        return models_dir() / text
    if p.exists():
        read_bundle(p)  # raises a precise error
    raise ModelError(
        f"not a registry model ({', '.join(REGISTRY)}) nor a bundle directory", source=text, reason="unknown"
    )
