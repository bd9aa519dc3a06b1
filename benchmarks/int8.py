"""int8 variants of the tagger against the fp32 bundle, in one run: accuracy cost and speed.

Static quantisation with ONNX Runtime's tooling (QDQ, int8 weights per output channel, uint8 activations, MinMax
ranges), calibrated on UrbanSound8K clips (audio that the ESC-10 figure does not score); the front-end stays in
float (a log-mel of int8 spectra loses the quiet bands), only the backbone's convolutions are quantised:

- `convs`: every convolution of the backbone (depthwise included);
- `pointwise`: only the 1x1 convolutions (most of the backbone's arithmetic).

Printed per variant, beside fp32 in the same run: zero-shot ESC-10 accuracy on folds 1-4 (fp32: 0.9625), per-clip
top-5 overlap with fp32, max |score difference| over those clips and the 527 classes, and one model call on a 10 s
clip at one thread (median of interleaved rounds). No thresholds are asserted.

Usage: python benchmarks/int8.py [--calibration 100] [--rounds 30]   (needs the train extra: onnx)
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA
from tagging import zero_shot_esc10


def esc10_files() -> list[Path]:
    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as f:
        return [DATA / "esc50" / "audio" / r["filename"] for r in csv.DictReader(f) if r["esc10"] == "True"]


def calibration_files(n: int) -> list[Path]:
    files = sorted((DATA / "urbansound8k_subset" / "audio").rglob("*.wav"))
    return files[:: max(1, len(files) // n)][:n]


def quantize(src: Path, out: Path, variant: str, calibration: list[Path]) -> Path:
    """A bundle directory at `out` whose graph is `src`'s bundle graph with the chosen convolutions in int8."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from earshot import audio

    model = onnx.load(src / "model.onnx")
    weights = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Conv" or not node.input[1].startswith("backbone."):
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        pointwise = list(weights[node.input[1]].dims[2:]) == [1, 1] and group == 1
        if variant == "convs" or pointwise:
            nodes.append(node.name)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.files = iter(calibration)

        def get_next(self) -> dict | None:
            f = next(self.files, None)
            return None if f is None else {"waveform": audio.decode(f, 32000)[None]}

    out.mkdir(parents=True)
    shutil.copy(src / "card.json", out / "card.json")
    quantize_static(src / "model.onnx", out / "model.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax)
    print(f"  {variant}: {len(nodes)} convolutions in int8, calibrated on {len(calibration)} UrbanSound8K clips")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=int, default=100, help="UrbanSound8K clips for the activation ranges")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    args = ap.parse_args()

    import logging

    import earshot
    from earshot.models import pull

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's pre-processing advice
    fp32 = pull("mn04-as")
    tmp = Path(tempfile.mkdtemp(prefix="earshot-int8-"))
    try:
        calibration = calibration_files(args.calibration)
        bundles = {"fp32": fp32}
        for variant in ("convs", "pointwise"):
            bundles[variant] = quantize(fp32, tmp / variant, variant, calibration)
        models = {name: earshot.load(b, threads=1) for name, b in bundles.items()}
        files = esc10_files()
        waves = [models["fp32"].decode(f) for f in files]
        scores = {name: np.stack([m.clip_scores(y) for y in waves]) for name, m in models.items()}
        clip = np.concatenate(waves[:2])[None]  # 10 s
        times: dict[str, list[float]] = {name: [] for name in models}
        for m in models.values():
            for _ in range(3):
                m.single_threaded().run(clip)
        for _ in range(args.rounds):
            for name, m in models.items():
                t = time.perf_counter()
                m.single_threaded().run(clip)
                times[name].append(time.perf_counter() - t)

        ref_ms = statistics.median(times["fp32"]) * 1000
        print(f"\nvariant     ESC-10 f1-4  top-5 overlap  max|d score|  ms / 10 s clip, 1 thread  ({len(files)} clips)")
        for name in models:
            acc = zero_shot_esc10(bundles[name], native_rates=False)  # every variant on the 32 kHz graph
            a, b = scores["fp32"], scores[name]
            overlap = np.mean([len(set(np.argsort(-a[i])[:5]) & set(np.argsort(-b[i])[:5])) / 5 for i in range(len(a))])
            ms = statistics.median(times[name]) * 1000
            print(f"{name:10s}  {acc:.4f}       {overlap:.3f}          {np.abs(a - b).max():.3f}         "
                  f"{ms:6.2f}  ({ref_ms / ms:.2f}x fp32's speed)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
