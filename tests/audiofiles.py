"""Test audio made without earshot: the reference decode the pretrained models were measured with, an alignment,
encoders and byte builders, and a recording chain no model has heard."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

SR = 32000


def reference(path: Path | str, rate: int | None = SR) -> np.ndarray:
    """The pipeline the pretrained references were computed with: sf float32 -> channel mean -> soxr."""
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    return y if rate is None or rate == sr else soxr.resample(y, sr, rate)


def aligned_corr(a: np.ndarray, b: np.ndarray, max_lag: int = 4096) -> float:
    """Pearson correlation of `a` and `b` at the lag (|lag| <= max_lag) that aligns them best."""
    n = 1 << (len(a) + len(b)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    lag = int(lags[np.argmax(np.r_[xc[: max_lag + 1], xc[-max_lag:]])])
    a, b = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
    m = min(len(a), len(b))
    return float(np.corrcoef(a[:m], b[:m])[0, 1])


def av_encode(y: np.ndarray, sr: int, path: Path, fmt: str, codec: str, rate: int | None = None) -> Path:
    """Encode mono float32 `y` with PyAV (the test's own encoder, independent of earshot)."""
    rate = rate or sr
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate)
        st.layout = "mono"
        frame = av.AudioFrame.from_ndarray(y[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sr
        rs = av.AudioResampler(format=st.codec_context.format, layout="mono", rate=rate)
        for f in rs.resample(frame) + rs.resample(None):
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return path


def wav_header(channels=1, rate=16000, bits=16, fmt_code=1, data_size=0, riff_size=None) -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_code, channels, rate, rate * align, align, bits)
    riff = (36 + data_size) & 0xFFFFFFFF if riff_size is None else riff_size
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )


def png_bytes() -> bytes:
    """A valid 2x2 RGB PNG, built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def thin_microphone(src, dest) -> None:
    """A recording chain the model never heard: +6 dB an octave (a small capsule), 35 dB quieter."""
    y, sr = sf.read(src, dtype="float32")
    f = np.fft.rfftfreq(len(y), 1 / sr)
    y = np.fft.irfft(np.fft.rfft(y) * np.clip(f / 1000.0, 0.05, 4.0), len(y))
    sf.write(dest, (y / np.sqrt(np.mean(y ** 2)) * 10 ** (-35 / 20)).astype(np.float32), sr)
