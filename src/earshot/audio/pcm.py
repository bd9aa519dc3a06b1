"""Raw PCM and the WAV header: interleaved sample formats → mono float32, and the one walk over a WAV's chunks.

The same header parsing serves two readers: the checks run on a file before it is decoded (:func:`check_wav_file`,
which can seek) and WAV arriving on a pipe, parsed header-first and streamed (:func:`read_wav_header`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from earshot.errors import AudioError

__all__ = ["RAW_FORMATS", "WAV_MAX_CHUNKS", "PcmFormat", "WavFmt", "check_wav_file", "is_riff_wave",
           "read_wav_header", "wav_chunks"]

RAW_FORMATS = ("u8", "s16le", "s24le", "s32le", "f32le", "f64le")
WAV_MAX_CHUNKS = 256  # chunks walked before the data chunk; more means a hostile or broken header

_WIDTHS = {"u8": 1, "s16le": 2, "s24le": 3, "s32le": 4, "f32le": 4, "f64le": 8}
_WAV_FORMATS = {(1, 8): "u8", (1, 16): "s16le", (1, 24): "s24le", (1, 32): "s32le", (3, 32): "f32le",
                (3, 64): "f64le"}  # (format tag, bits) → raw format: PCM integers, IEEE floats
_EXTENSIBLE = 0xFFFE
_OPEN_LENGTHS = (0, 0xFFFFFFFF)  # a data length left open by a streaming writer


@dataclass(frozen=True)
class PcmFormat:
    """Interleaved PCM frames → mono float32 (integers scaled like soundfile: by 2**(bits-1))."""

    fmt: str  # one of RAW_FORMATS
    channels: int

    @property
    def frame_bytes(self) -> int:
        return _WIDTHS[self.fmt] * self.channels

    def decode(self, b: bytes) -> np.ndarray:
        """Whole frames of bytes → mono float32 (channels averaged)."""
        f = self.fmt
        if f == "u8":
            y = (np.frombuffer(b, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif f == "s16le":
            y = np.frombuffer(b, "<i2").astype(np.float32) / 32768.0
        elif f == "s24le":
            t = np.frombuffer(b, np.uint8).reshape(-1, 3).astype(np.int32)
            v = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
            y = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
        elif f == "s32le":
            y = (np.frombuffer(b, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
        elif f == "f32le":
            y = np.frombuffer(b, "<f4").astype(np.float32)
        else:
            y = np.frombuffer(b, "<f8").astype(np.float32)
        if self.channels > 1:
            y = y.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return np.ascontiguousarray(y, dtype=np.float32)


@dataclass(frozen=True)
class WavFmt:
    """A WAV ``fmt `` chunk."""

    tag: int  # format tag (1 PCM, 3 IEEE float, ...); for WAVE_FORMAT_EXTENSIBLE the sub-format's
    channels: int
    rate: int
    block_align: int
    bits: int  # 0 when the chunk is too short to say

    @classmethod
    def parse(cls, body: bytes) -> WavFmt:
        """From the chunk's body (at least 14 bytes)."""
        tag = int.from_bytes(body[0:2], "little")
        if tag == _EXTENSIBLE and len(body) >= 26:  # the sub-format GUID starts with the tag
            tag = int.from_bytes(body[24:26], "little")
        return cls(tag=tag, channels=int.from_bytes(body[2:4], "little"), rate=int.from_bytes(body[4:8], "little"),
                   block_align=int.from_bytes(body[12:14], "little"),
                   bits=int.from_bytes(body[14:16], "little") if len(body) >= 16 else 0)

    def pcm(self) -> PcmFormat | None:
        """The raw format of the samples, None for encodings that need a decoder (a-law, mu-law, ADPCM, ...)."""
        name = _WAV_FORMATS.get((self.tag, self.bits))
        return None if name is None else PcmFormat(name, self.channels)


def is_riff_wave(head: bytes) -> bool:
    """Whether the first 12 bytes are a RIFF/WAVE header (not RF64/BW64, not another RIFF form)."""
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def _error(name: str, reason: str, message: str) -> AudioError:
    return AudioError(message, source=name, reason=reason)


def wav_chunks(read: Callable[[int], bytes], name: str) -> Iterator[tuple[bytes, int]]:
    """``(id, size)`` of each chunk after the 12-byte RIFF header, at most WAV_MAX_CHUNKS of them.

    `read(n)` returns up to `n` bytes, fewer only at the end. Before asking for the next chunk the caller has
    read or skipped the body, ``size`` bytes plus a pad byte when ``size`` is odd. A chunk header cut short
    raises AudioError ``truncated``.
    """
    for _ in range(WAV_MAX_CHUNKS):
        hdr = read(8)
        if len(hdr) < 8:
            raise _error(name, "truncated", "is truncated: it ends before its audio data starts")
        yield hdr[:4], int.from_bytes(hdr[4:], "little")


def check_wav_file(f: IO[bytes], size: int, name: str) -> None:
    """Header checks libsndfile does not report, on a seekable file of `size` bytes read from its start: zero
    channels, a data chunk longer than the file. Leaves `f` anywhere; RF64/BW64 and other RIFF forms pass
    (libsndfile decides)."""
    riff = f.read(12)
    if len(riff) < 12:
        raise _error(name, "truncated", "is truncated: it ends inside its WAV header")
    if not is_riff_wave(riff):
        return
    block_align = None
    for cid, n in wav_chunks(f.read, name):
        if cid == b"fmt ":
            if n < 14:  # malformed, not short: libsndfile and PyAV say what they make of it
                return
            body = f.read(min(n, 16))
            if len(body) < 14:
                raise _error(name, "truncated", "is truncated: it ends inside its WAV header")
            fmt = WavFmt.parse(body)
            f.seek(n - len(body) + (n & 1), io.SEEK_CUR)
            if fmt.channels == 0:
                raise _error(name, "no_channels", "has no audio channels (its WAV header says 0)")
            block_align = fmt.block_align
        elif cid == b"data":
            if n in _OPEN_LENGTHS:
                return
            available = size - f.tell()
            if n - available >= max(1, block_align or 1):
                raise _error(name, "truncated", f"is truncated: its header promises {n} bytes of audio but only "
                                                f"{max(available, 0)} are present")
            return
        else:
            f.seek(n + (n & 1), io.SEEK_CUR)


def read_wav_header(read: Callable[[int], bytes], name: str) -> tuple[WavFmt, int | None]:
    """Read a WAV header from a byte stream, through the data chunk's header: ``(fmt, data bytes)``, the
    length None when left open by a streaming writer. `read(n)` returns `n` bytes, fewer only at the end; the
    stream starts at the RIFF header. AudioError (truncated, unsupported, no_channels) for a header that cannot
    be streamed."""
    read(12)
    fmt: WavFmt | None = None
    for cid, n in wav_chunks(read, name):
        if cid == b"data":
            break
        body = read(n + (n & 1))
        if len(body) < n:
            raise _error(name, "truncated", "is truncated: it ends inside its WAV header")
        if cid == b"fmt " and n >= 16:
            fmt = WavFmt.parse(body[:n])
    else:
        raise _error(name, "unsupported",
                     f"looks like WAV but no data chunk was found in its first {WAV_MAX_CHUNKS} chunks")
    if fmt is None:
        raise _error(name, "unsupported", "looks like WAV but has no fmt chunk before its data")
    if fmt.channels == 0:
        raise _error(name, "no_channels", "has no audio channels (its WAV header says 0)")
    if fmt.rate <= 0:
        raise _error(name, "unsupported", f"has an invalid sample rate ({fmt.rate})")
    return fmt, None if n in _OPEN_LENGTHS else n
