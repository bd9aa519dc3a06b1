"""The reference tool in a process of its own: YAMNet (TFLite, int8 weights) through ai-edge-litert, as people
run it today. Prints one JSON line per file: top-5 labels of the mean of its 0.975 s window scores (hop 0.48 s).

Usage: python benchmarks/yamnet_ref.py FILE... (benchmark-only dependency: pip install ai-edge-litert)
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from ai_edge_litert.interpreter import Interpreter

SHARED = Path(os.environ.get("EARSHOT_SHARED", Path(__file__).resolve().parents[2] / "shared")).resolve()
MODEL = SHARED / "weights" / "yamnet" / "yamnet.tflite"
WINDOW, HOP, RATE = 15600, 7680, 16000


def main(files: list[str]) -> None:
    with open(MODEL.with_name("yamnet_class_map.csv"), newline="") as f:
        names = [r["display_name"] for r in csv.DictReader(f)]
    it = Interpreter(str(MODEL), num_threads=os.cpu_count() or 1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    for path in files:
        y, sr = sf.read(path, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        if sr != RATE:
            y = soxr.resample(y, sr, RATE)
        y = np.pad(y, (0, max(0, WINDOW - len(y))))
        rows = []
        for s in range(0, len(y) - WINDOW + 1, HOP):
            it.set_tensor(inp, y[None, s : s + WINDOW])
            it.invoke()
            rows.append(it.get_tensor(out)[0].copy())
        scores = np.mean(rows, axis=0)
        top = np.argsort(-scores)[:5]
        print(json.dumps({"title": path, "labels": [names[i] for i in top],
                          "probabilities": [round(float(scores[i]), 4) for i in top]}))


if __name__ == "__main__":
    main(sys.argv[1:])
