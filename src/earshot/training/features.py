"""Transfer features: the frozen pretrained tagger's embeddings of every clip, cached on disk.

Features are computed by a feature-extractor bundle (the backbone wrapped in `CropPooledFeatures`, exported
once per machine and backbone) on onnxruntime, so they come from the same ONNX graph that a trained transfer
bundle runs, under the same clip-length policy (`earshot.clips`). Cached per (file sha256, backbone, feature
version) under ``$EARSHOT_HOME/embeddings/``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np
from torch import nn

from earshot.bundle import is_bundle
from earshot.classifier import Classifier
from earshot.errors import AudioError
from earshot.frontend import EfficientATMel
from earshot.labels import audioset
from earshot.models import spec
from earshot.models.heads import CropPooledFeatures
from earshot.models.tagger import WaveformTagger
from earshot.models.weights import earshot_home, fetch
from earshot.training import distributed
from earshot.training.export import export_bundle
from earshot.training.loop import Log, unreadable_reason
from earshot.training.manifest import Manifest

FEATURES_VERSION = "whole+crops2s"  # cache folder name: bump when the features change
FEATURE_LAYOUT = "whole-clip embedding | mean embedding of 2 s crops (1 s hop)"


def embeddings_dir(backbone: str) -> Path:
    """Cache of transfer features (and their extractor bundle) for `backbone`, per feature version."""
    return earshot_home() / "embeddings" / backbone / FEATURES_VERSION


def feature_network(backbone: str) -> nn.Module:
    """The pretrained `backbone` wrapped to output transfer features as its embedding (`CropPooledFeatures`)."""
    s = spec(backbone)
    return CropPooledFeatures(s.build(fetch(s.filename, s.url, s.sha256)).backbone)


def feature_extractor(backbone: str) -> Path:
    """Bundle whose `embedding` output is the transfer features (exported once per machine and backbone), so
    cached features come from the same ONNX graph that the trained bundle runs, under the same clip policy."""
    out = embeddings_dir(backbone) / "extractor"
    if not is_bundle(out):
        s = spec(backbone)
        labels, ids = audioset()
        card = {"name": f"{backbone}-features", "description": f"{backbone} transfer features ({FEATURE_LAYOUT})",
                "labels": list(labels), "label_ids": list(ids), "sample_rate": s.sample_rate,
                "window_seconds": s.window_seconds, "multi_label": True, "license": s.license, "source": s.source}
        export_bundle(WaveformTagger(EfficientATMel(), feature_network(backbone), multi_label=True), out, card)
    return out


def transfer_features(manifest: Manifest, backbone: str = "mn04-as", log: Log | None = None,
                      skip: Collection[int] = ()) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Features [n, dim] of every item with the `feature_extractor` bundle on onnxruntime, cached on disk per
    sha256 of the file's bytes; the items of `skip` (a held-out test fold) are not read and get rows of NaN.

    Row layout: FEATURE_LAYOUT + the clip duration (s), computed under the serving clip-length policy
    (`earshot.clips`, through `Classifier.embed_waveform`). Returns (features, [(index, reason)] of unreadable
    items). Training with several processes, rank 0 fills the cache and the others then read it.
    """
    with distributed.primary_first():
        return _transfer_features(manifest, backbone, log, set(skip))


def _transfer_features(manifest: Manifest, backbone: str, log: Log | None,
                       skip: set[int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    log = log or Log(True, None)
    cache = embeddings_dir(backbone)
    cache.mkdir(parents=True, exist_ok=True)
    clf = None
    rows: list[np.ndarray | None] = []
    bad: list[tuple[int, str]] = []
    hits = 0
    t0 = time.time()
    for i, it in enumerate(manifest.items):
        if i in skip:
            rows.append(None)
            continue
        try:
            raw = it.data if it.data is not None else it.path.read_bytes()
        except OSError as e:
            bad.append((i, f"read_error: {e}"))
            rows.append(None)
            continue
        f = cache / f"{hashlib.sha256(raw).hexdigest()}.npy"
        if f.is_file():
            try:
                rows.append(np.load(f, allow_pickle=False))
                hits += 1
                continue
            except (OSError, ValueError):
                pass
        if clf is None:
            clf = Classifier.load(feature_extractor(backbone))
        try:
            y = clf.decode(raw, str(it.path))  # the bytes already read for the hash
        except AudioError as e:
            bad.append((i, unreadable_reason(e)))
            rows.append(None)
            continue
        row = np.concatenate([clf.embed_waveform(y), [len(y) / clf.sample_rate]]).astype(np.float32)
        tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, row, allow_pickle=False)
        os.replace(tmp, f)
        rows.append(row)
        if (i + 1) % 200 == 0:
            log(f"features {i + 1}/{len(manifest)} ({hits} cached)", stage="features", done=i + 1,
                total=len(manifest))
    dim = next((len(r) for r in rows if r is not None), 1)
    unread = {i for i, _ in bad}
    good = [np.full(dim, np.nan, np.float32) if r is None else r for i, r in enumerate(rows) if i not in unread]
    feats = np.stack(good) if good else np.zeros((0, 1), dtype=np.float32)
    held = f", {len(skip)} test clips not read" if skip else ""
    log(f"features: {len(good) - len(skip)} clips ({hits} from cache, {len(bad)} unreadable{held}) in "
        f"{time.time() - t0:.1f}s",
        stage="features", done=len(manifest), total=len(manifest), cached=hits)
    # rows of bad items are dropped: callers skip the same indices from the manifest
    return feats, bad
