"""Log-mel front-ends as torch modules made only of ONNX-exportable ops.

The front-end is exported inside every bundle's ONNX graph, so training and serving compute features the same
way by construction. `EfficientATMel` reproduces the preprocessing of EfficientAT (Schmid et al., ICASSP 2023):
pre-emphasis (0.97), centred reflect-padded STFT (n_fft 1024, symmetric Hann window 800, hop 320), power
spectrum, Kaldi-style mel banks (128 bins, 0 Hz to 15 kHz at 32 kHz), then ``(log(mel + 1e-5) + 4.5) / 5``.

The STFT is a two-stage Cooley-Tukey DFT (1024 = 64 x 16) written as matrix products: ONNX Runtime's own
DFT/STFT kernels are several times slower than its GEMM, and a plain DFT matrix costs 4x more arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LOG_FLOOR, LOG_OFFSET, LOG_SCALE = 1e-5, 4.5, 5.0  # EfficientAT's normalisation: (ln(mel + 1e-5) + 4.5) / 5
SILENCE_LOGMEL = (math.log(LOG_FLOOR) + LOG_OFFSET) / LOG_SCALE  # the normalised log-mel of digital silence


def normalised_log(mel: torch.Tensor) -> torch.Tensor:
    """Mel power → the normalised log-mel that every model here sees."""
    return (torch.log(mel + LOG_FLOOR) + LOG_OFFSET) / LOG_SCALE


def mel_power(logmel: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalised_log`: for augmentations that mix in the power domain."""
    return torch.exp(logmel * LOG_SCALE - LOG_OFFSET) - LOG_FLOOR


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters equally spaced on the Kaldi mel scale (1127 ln(1 + f/700)), shape [n_mels, n_fft//2+1].

    Same construction as Kaldi's `MelBanks` without VTLN; the Nyquist bin gets a zero weight.
    """

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    lo, hi = mel(fmin), mel(fmax)
    delta = (hi - lo) / (n_mels + 1)
    k = np.arange(n_mels, dtype=np.float64)[:, None]
    left, center, right = lo + k * delta, lo + (k + 1) * delta, lo + (k + 2) * delta
    bin_mel = mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


class EfficientATMel(nn.Module):
    """Waveform [batch, samples] at 32 kHz → normalised log-mel [batch, n_mels, frames].

    frames = 1 + (samples - 1) // hop (pre-emphasis drops one sample); inputs need at least hop samples.
    """

    chunk = 16  # inner DFT size: n = chunk * n1 + n2; n_fft = outer * chunk; hop must be a multiple of it
    mel_groups = 8  # the mel product is split into bands of filters, each over only the bins it touches

    def __init__(
        self,
        sample_rate: int = 32000,
        n_fft: int = 1024,
        win_length: int = 800,
        hop: int = 320,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float | None = None,
        preemphasis: float = 0.97,
    ) -> None:
        super().__init__()
        c = self.chunk
        if n_fft % c or hop % c:
            raise ValueError(f"n_fft and hop must be multiples of {c}")
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.preemphasis = preemphasis
        fmax = sample_rate // 2 - 1000 if fmax is None else fmax
        banks = kaldi_mel_banks(n_mels, n_fft, sample_rate, fmin, fmax)
        outer = n_fft // c
        self.outer = outer
        # Bins k = k1 + outer * k2 (k1 < outer, k2 < n_k2) up to the last one a filter touches.
        self.n_bins = int(np.nonzero(banks.any(axis=0))[0].max()) + 1
        self.n_k2 = math.ceil(self.n_bins / outer)

        n = np.arange(win_length, dtype=np.float64)
        window = np.zeros(n_fft)
        offset = (n_fft - win_length) // 2
        window[offset : offset + win_length] = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / (win_length - 1))
        window = window.reshape(outer, c)
        rows = np.nonzero(window.any(axis=1))[0]  # chunks the window leaves at zero are never read
        self.j0, self.j1 = int(rows[0]), int(rows[-1]) + 1
        self.register_buffer("window", _f32(window[self.j0 : self.j1, None, :]), persistent=False)

        # Stage 1: real DFT of size `outer` across chunks; only k1 <= outer/2 (the rest are conjugates).
        half = outer // 2 + 1
        ang = -2.0 * math.pi * np.outer(np.arange(half), np.arange(self.j0, self.j1)) / outer
        self.register_buffer("stage1", _f32(np.concatenate([np.cos(ang), np.sin(ang)])), persistent=False)
        self.half = half
        # Stage 2, one matrix per k1: conjugate symmetry (k1 > outer/2 reads row outer-k1 with the imaginary
        # part negated), twiddle W_N^(n2 k1) and the DFT of size `chunk` over n2, fused.
        k1 = np.arange(outer)[:, None, None]
        n2 = np.arange(c)[None, :, None]
        k2 = np.arange(self.n_k2)[None, None, :]
        theta = -2.0 * math.pi * (n2 * k1 / n_fft + n2 * k2 / c)
        cos, sin = np.cos(theta), np.sin(theta)
        sign = np.where(np.arange(outer) < half, 1.0, -1.0)[:, None, None]
        self.register_buffer("stage2_re", _f32(np.concatenate([cos, sin], axis=2)), persistent=False)
        self.register_buffer("stage2_im", _f32(sign * np.concatenate([-sin, cos], axis=2)), persistent=False)
        self.register_buffer("source_row", torch.as_tensor(np.minimum(np.arange(outer), outer - np.arange(outer))),
                             persistent=False)
        # Banded mel product: contiguous groups of filters and the bin range each group touches.
        self.bands: list[tuple[int, int]] = []
        for g, filt in enumerate(np.array_split(np.arange(n_mels), self.mel_groups)):
            touched = np.nonzero(banks[filt].any(axis=0))[0]
            lo, hi = int(touched.min()), int(touched.max()) + 1
            self.bands.append((lo, hi))
            self.register_buffer(f"mel_{g}", _f32(banks[filt][:, lo:hi].T), persistent=False)

    def n_frames(self, n_samples: int) -> int:
        return 1 + (n_samples - 1) // self.hop

    def power(self, waveform: torch.Tensor) -> torch.Tensor:
        """Power spectrum [batch * frames, bins] of the pre-emphasised, reflect-padded signal."""
        b, c = waveform.shape[0], self.chunk
        x = waveform[:, 1:] - self.preemphasis * waveform[:, :-1]
        pad = self.n_fft // 2
        x = nn.functional.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        frames = (x.shape[1] - self.n_fft) // self.hop + 1
        step = self.hop // c
        n_chunks = step * (frames - 1) + self.outer
        chunks = x[:, : n_chunks * c].reshape(b, n_chunks, c)
        span = step * (frames - 1) + 1
        cols = torch.stack([chunks[:, j : j + span : step] for j in range(self.j0, self.j1)])  # [j, b, F, c]
        cols = (cols.reshape(self.j1 - self.j0, b * frames, c) * self.window).reshape(self.j1 - self.j0, -1)
        a = (self.stage1 @ cols).reshape(2, self.half, b * frames, c)
        a_re, a_im = a[0][self.source_row], a[1][self.source_row]  # [outer, b*F, c]
        z = torch.bmm(a_re, self.stage2_re) + torch.bmm(a_im, self.stage2_im)
        p = z[..., : self.n_k2] ** 2 + z[..., self.n_k2 :] ** 2  # [k1, b*F, k2]
        return p.permute(1, 2, 0).reshape(b * frames, self.n_k2 * self.outer)[:, : self.n_bins]

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        b = waveform.shape[0]
        p = self.power(waveform)
        mel = torch.cat([p[:, lo:hi] @ getattr(self, f"mel_{g}") for g, (lo, hi) in enumerate(self.bands)], dim=1)
        mel = mel.reshape(b, -1, self.n_mels).transpose(1, 2)
        return normalised_log(mel)


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
