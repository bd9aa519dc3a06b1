"""Bundles of fitted pooling heads (torch → ONNX), their validation metrics and per-class thresholds.

- Embeddings of an earshot backbone (an `earshot embed` file naming a registry backbone): a full waveform bundle,
  `WindowedTagger` (front-end + backbone + per-window embeddings + pooling head) as `model.onnx`, with the same
  contract as every bundle (`waveform` in; `scores`, `embedding`, `logmel` out). The head alone sits beside it as
  `head.onnx` (card `head`), so the bundle also scores embedding files.
- Foreign embeddings (the AudioSet VGGish release, or any packed file without a registry backbone): a head-only
  bundle whose `model.onnx` takes `embeddings` float32 [batch, frames, dim]; the card says so (`input`,
  `embedding_dim`, `frames`, `dequantize` for uint8 files) and `Classifier` refuses to decode audio for it.

The card's metrics come from the exported head on onnxruntime (`earshot.head.HeadScorer`) over the validation
rows, as `earshot evaluate` computes them; its `thresholds` are each class's maximum-F1 threshold there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from earshot import __version__, clips
from earshot.bundle import CARD_FILE, MODEL_FILE, read_bundle, staged_bundle, write_json_atomic
from earshot.head import HeadScorer
from earshot.packed import PackedReader
from earshot.training.evaluation import multilabel_metrics_for
from earshot.training.export import export_bundle, quiet_export
from earshot.training.loop import Log, training_device
from earshot.training.multilabel import HeadFit, max_f1_thresholds
from earshot.training.pooling import EmbeddingsGraph, PoolingHead, WindowedTagger

HEAD_FILE = "head.onnx"
CITATION = ("decision-level pooling heads after Kong et al. 2018, 'Audio Set classification with attention model: "
            "a probabilistic perspective' (ICASSP), multi-level attention after Yu et al. 2018")


def export_head(head: PoolingHead, path: Path, dim: int, frames: int, tol: float = 1e-4) -> dict[str, Any]:
    """The head-only graph (`embeddings` [batch, frames, dim] → `scores`, `embedding`) as ONNX at `path`, checked
    against torch on 1, `frames` and `frames` + 3 frames of embeddings drawn like the training frames (their
    mean and std)."""
    import onnxruntime as ort

    graph = EmbeddingsGraph(head).eval()
    example = torch.randn(2, max(2, frames), dim)
    batch, t = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("frames", min=1, max=1_000_000)
    with quiet_export(), torch.no_grad():
        torch.onnx.export(graph, (example,), str(path), input_names=["embeddings"],
                          output_names=["scores", "embedding"], dynamic_shapes=({0: batch, 1: t},), dynamo=True,
                          opset_version=18, external_data=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    lengths = sorted({1, max(1, frames), frames + 3})
    for n in lengths:
        x = head.frames.mean + head.frames.std * torch.randn(3, n, dim, generator=gen)
        with torch.no_grad():
            ref = graph(x)[0].numpy()
        got = sess.run(["scores"], {"embeddings": x.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    if worst > tol:
        raise RuntimeError(f"ONNX export of the head disagrees with torch: max score difference {worst:.2e}")
    return {"max_abs_score_diff": worst, "frames": lengths}


def waveform_backbone(reader: PackedReader) -> str | None:
    """The registry backbone that made a packed file's embeddings, when a waveform bundle can be built on it."""
    from earshot.models import REGISTRY

    backbone, window, hop = reader.attr("backbone"), reader.attr("window"), reader.attr("hop")
    if backbone not in REGISTRY or not window or not hop or reader.x_dtype == np.uint8:
        return None
    sr = REGISTRY[backbone].sample_rate
    if round(window * sr) % round(hop * sr):
        return None
    return str(backbone)


def write_head_bundle(fitted: HeadFit, reader: PackedReader, out: Path, *, tr: np.ndarray, va: np.ndarray,
                      name: str, data_summary: dict[str, Any], options: dict[str, Any], log: Log,
                      t_start: float) -> Path:
    """Export `fitted.head` as a bundle at `out` (see the module doc), score the validation rows with it on
    onnxruntime, and store metrics and per-class thresholds in its card."""
    out = Path(out)
    backbone = waveform_backbone(reader)
    window, hop = reader.attr("window"), reader.attr("hop")
    summary = {**reader.summary(), **data_summary, "n_train": int(len(tr)), "n_validation": int(len(va))}
    card: dict[str, Any] = {
        "name": name,
        "description": f"{reader.n_classes}-label multi-label classifier: {fitted.pooling} pooling head on "
                       f"{reader.dim}-d embeddings ({backbone or reader.attr('backbone') or 'packed file'})",
        "labels": reader.labels,
        "label_ids": reader.label_ids,
        "multi_label": True,
        "thresholds": None,
        "metrics": {},
        "training": {"family": "multilabel", **fitted.config, **options, "device": str(training_device()),
                     "torch": torch.__version__, "history": fitted.history, "method": CITATION},
        "data": summary,
        "source": CITATION,
        "license": "check the license of your training data"
        + ("; MIT (EfficientAT weights)" if backbone else ""),
    }
    spec = {"input": "embeddings", "embedding_dim": reader.dim, "frames": reader.frames,
            "dequantize": reader.dequantize, "window": window, "hop": hop, "backbone": reader.attr("backbone")}
    t0 = time.time()
    if backbone is not None:
        _export_waveform(fitted.head, backbone, float(window), float(hop), reader, out, card, spec)
    else:
        _export_head_only(fitted.head, reader, out, {**card, **spec, "sample_rate": None, "window_seconds": None})
    log(f"exported {out} in {time.time() - t0:.1f}s", stage="exported")
    bundle = read_bundle(out)
    scores = HeadScorer(bundle).score_rows(reader, va)
    y_va = reader.y[va]
    metrics = multilabel_metrics_for(y_va, scores, reader.labels)
    metrics["split"] = "validation"
    present = y_va.any(axis=0)  # chance: the AP of random scores is a class's prevalence
    metrics["chance_mAP"] = round(float(y_va.mean(axis=0)[present].mean()) if present.any() else 0.0, 6)
    card = bundle.card
    card["thresholds"] = max_f1_thresholds(y_va, scores)
    card["metrics"] = metrics
    card["training"]["wall_seconds"] = round(time.time() - t_start, 2)
    write_json_atomic(out / CARD_FILE, card)
    log(f"validation mAP {metrics['mAP']:.4f} (chance {metrics['chance_mAP']:.4f}), AUC {metrics['auc']}, "
        f"d' {metrics['d_prime']} (n {metrics['n']}); bundle {out} in {time.time() - t_start:.1f}s", stage="done",
        mAP=metrics["mAP"], bundle=str(out))
    return out


def _export_waveform(head: PoolingHead, backbone: str, window: float, hop: float, reader: PackedReader, out: Path,
                     card: dict[str, Any], spec: dict[str, Any]) -> None:
    from earshot.models import spec as model_spec
    from earshot.models.weights import fetch

    s = model_spec(backbone)
    net = s.build(fetch(s.filename, s.url, s.sha256))
    w, h = round(window * s.sample_rate), round(hop * s.sample_rate)
    tagger = WindowedTagger(net.frontend, net.backbone, head, w, h).eval()
    card = {**card, "input": "waveform", "sample_rate": s.sample_rate,
            "window_seconds": max(window, round((reader.frames - 1) * hop + window, 3)),
            "min_seconds": clips.DEFAULT_MIN_SECONDS, "head": {"file": HEAD_FILE, **spec}}
    export_bundle(tagger, out, card, check_seconds=(0.6, window, 3 * window + hop * 0.7))
    card = read_bundle(out).card
    card["head"]["onnx_check"] = export_head(head, out / HEAD_FILE, reader.dim, reader.frames)
    write_json_atomic(out / CARD_FILE, card)


def _export_head_only(head: PoolingHead, reader: PackedReader, out: Path, card: dict[str, Any]) -> None:
    with staged_bundle(out) as tmp:
        check = export_head(head, tmp / MODEL_FILE, reader.dim, reader.frames)
        write_json_atomic(tmp / CARD_FILE, {"earshot_version": __version__, **card, "onnx_check": check})
