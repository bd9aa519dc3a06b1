"""Render a log-mel matrix (the model's own features, `Classifier.logmel`) to PNG with numpy + zlib."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

# viridis, sampled at 9 points and interpolated to a 256-entry lookup table
_ANCHORS = ["440154", "472d7b", "3b528b", "2c728e", "21918c", "28ae80", "5ec962", "addc30", "fde725"]
_A = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _ANCHORS], dtype=np.float64)
_X = np.linspace(0.0, 1.0, len(_ANCHORS))
LUT = np.stack([np.interp(np.linspace(0, 1, 256), _X, _A[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def render_png(logmel: np.ndarray, max_width: int = 1600) -> bytes:
    """[mels, frames] -> PNG bytes: low frequencies at the bottom, a column per frame (max-pooled to fit)."""
    m = np.asarray(logmel, dtype=np.float32)
    if m.ndim == 3:  # [1, mels, frames]
        m = m[0]
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a [mels, frames] matrix, got shape {m.shape}")
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    frames = m.shape[1]
    if frames > max_width:
        step = int(np.ceil(frames / max_width))
        pad = (-frames) % step
        m = np.pad(m, ((0, 0), (0, pad)), mode="edge").reshape(m.shape[0], -1, step).max(axis=2)
    lo, hi = np.percentile(m, [1.0, 99.5])
    scaled = np.clip((m - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    idx = (scaled[::-1] * 255).astype(np.uint8)
    return _png(LUT[idx])


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
