"""Log-mel front-end speed: ms per 10 s clip, earshot (torch eager and onnxruntime) vs librosa, same settings.

Prints figures and ratios measured in this run; no thresholds are asserted here.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def per_call_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1000


def main() -> None:
    import librosa
    import onnxruntime as ort
    import torch

    from earshot.frontend import EfficientATMel
    from earshot.training.export import quiet_export as _quiet

    torch.set_num_threads(1)
    x = (np.random.default_rng(0).standard_normal(320000) * 0.1).astype(np.float32)
    fe = EfficientATMel().eval()

    def ref_librosa():
        y = np.append(x[1:] - 0.97 * x[:-1], 0)
        s = librosa.feature.melspectrogram(y=y, sr=32000, n_fft=1024, win_length=800, hop_length=320, n_mels=128,
                                           fmin=0, fmax=15000, power=2.0, window="hann")
        return np.log(s + 1e-5)

    librosa_ms = per_call_ms(ref_librosa)
    with torch.no_grad():
        xt = torch.from_numpy(x)[None]
        torch_ms = per_call_ms(lambda: fe(xt))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fe.onnx"
        with _quiet(), torch.no_grad():
            torch.onnx.export(fe, (torch.randn(2, 64000),), str(path), input_names=["waveform"], dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("b"), 1: torch.export.Dim("n", min=3200)},))
        rows = []
        for threads in (1, 2):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            rows.append((threads, per_call_ms(lambda s=sess: s.run(None, {"waveform": x[None]}))))
    print("log-mel of a 10 s clip at 32 kHz (n_fft 1024, win 800, hop 320, 128 mels)")
    print(f"  librosa.feature.melspectrogram     {librosa_ms:7.2f} ms   (reference, 1.00x)")
    print(f"  earshot torch eager, 1 thread      {torch_ms:7.2f} ms   {librosa_ms / torch_ms:5.2f}x librosa")
    for threads, ms in rows:
        print(f"  earshot onnxruntime, {threads} thread(s)  {ms:7.2f} ms   {librosa_ms / ms:5.2f}x librosa")


if __name__ == "__main__":
    main()
