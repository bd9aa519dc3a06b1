"""Torch module → ONNX bundle, checked against torch before it replaces anything (needs the `train` extra)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from earshot import __version__
from earshot.bundle import CARD_FILE, MODEL_FILE, RATE_GRAPHS, rate_graph_file, staged_bundle, write_json_atomic

OUTPUTS = ["scores", "embedding", "logmel"]


def export_bundle(
    model: torch.nn.Module, out: str | Path, card: dict[str, Any], *, check_seconds: Sequence[float] = (1.0, 3.7),
    tol: float = 1e-4, source_rates: Sequence[int] = (),
) -> Path:
    """Export `model` (waveform → scores, embedding, logmel) with `card` as a bundle directory at `out`.

    The graph has dynamic batch and sample axes. It is checked against torch on inputs of several lengths
    (max abs score difference ≤ `tol`) before the bundle replaces anything at `out`.

    For each of `source_rates` (integer divisors of the card's rate) the bundle also gets the graph of
    `model.at_rate(rate)`, which takes waveforms at that rate without resampling (`earshot.bundle`); its card
    entry records the torch check and how far its scores are from the main graph's on the same noise resampled.
    """
    out = Path(out)
    sr = int(card["sample_rate"])
    model = model.eval()
    card = {"earshot_version": __version__, **card}
    with staged_bundle(out) as tmp:
        export_graph(model, tmp / MODEL_FILE, sr)
        card["onnx_check"] = check_onnx(model, tmp / MODEL_FILE, sr, check_seconds, tol)
        graphs = {}
        for rate in source_rates:
            at_rate = model.at_rate(int(rate)).eval()
            path = tmp / rate_graph_file(int(rate))
            export_graph(at_rate, path, int(rate))
            graphs[str(int(rate))] = {"file": path.name,
                                      "onnx_check": check_onnx(at_rate, path, int(rate), check_seconds, tol),
                                      "max_abs_score_diff_vs_resampled": resampled_agreement(model, at_rate, sr,
                                                                                              int(rate))}
        if graphs:
            card[RATE_GRAPHS] = graphs
        write_json_atomic(tmp / CARD_FILE, card)
    return out


def export_graph(model: torch.nn.Module, path: Path, sr: int) -> None:
    """One ONNX graph: `waveform` [batch, samples] at `sr` → the model's outputs, batch and samples dynamic.

    Constants are folded, but BatchNormalization stays a node of its own instead of being folded into the
    convolution before it (the exporter's default rewrites do that): its statistics are then initializers that
    `earshot.adaptation` can re-estimate on a new domain's audio. ONNX Runtime fuses the pair itself when it loads the
    graph, so inference is as fast either way.
    """
    import onnxscript.optimizer

    example = torch.randn(2, int(sr * 2.0)) * 0.1
    batch, samples = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("samples", min=sr // 10)
    with quiet_export(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["waveform"],
            output_names=OUTPUTS,
            dynamic_shapes=({0: batch, 1: samples},),
            dynamo=True,
            opset_version=18,
            optimize=False,
        )
        onnxscript.optimizer.fold_constants(program.model)
        onnxscript.optimizer.remove_unused_nodes(program.model)
        program.save(str(path), external_data=False)


def resampled_agreement(model: torch.nn.Module, at_rate: torch.nn.Module, sr: int, rate: int) -> float:
    """Max abs score difference between `at_rate` on noise at `rate` and `model` on that noise resampled to `sr`
    as decoding resamples it (real audio: `benchmarks/tagging.py`)."""
    import soxr

    gen = np.random.default_rng(0)
    x = (gen.standard_normal((2, rate * 3)) * 0.1).astype(np.float32)
    y = np.stack([soxr.resample(r, rate, sr) for r in x])
    with torch.no_grad():
        ref = model(torch.from_numpy(y))[0].numpy()
        got = at_rate(torch.from_numpy(x))[0].numpy()
    return float(np.abs(ref - got).max())


def check_onnx(model: torch.nn.Module, path: Path, sr: int, seconds: Sequence[float],
               tol: float) -> dict[str, Any]:
    """Max abs difference of scores between torch and onnxruntime on random signals of several lengths."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for s in seconds:
        x = torch.randn(2, int(sr * s), generator=gen) * 0.1
        with torch.no_grad():
            ref = model(x)[0].numpy()
        got = sess.run(["scores"], {"waveform": x.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    if worst > tol:
        raise RuntimeError(f"ONNX export disagrees with torch: max score difference {worst:.2e} > {tol:.0e}")
    return {"max_abs_score_diff": worst, "lengths_s": list(seconds)}


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Around `torch.onnx.export`: its progress goes to stderr and its warnings and logs are silenced, so
    stdout stays clean for JSON output."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        import logging

        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        yield
