"""The decoding calls: a whole input (:func:`load`, :func:`decode`), its header (:func:`info`, :func:`duration`),
or block by block at a target rate (:class:`Blocks`). Any failure is an AudioError naming the input."""

from __future__ import annotations

from collections.abc import Collection, Iterator

import numpy as np
import soxr

from earshot.audio.source import Input, Source, check_rate, max_seconds_limit
from earshot.audio.streams import READ_FRAMES, AudioInfo, Stream, open_stream
from earshot.errors import AudioError

__all__ = ["Blocks", "blocks", "decode", "duration", "info", "load", "resampler_power"]

# Native frames per call into soxr's stream resampler: its cost per sample grows with larger calls (a 10 s clip
# 16 -> 32 kHz: 0.72 ms in calls of 8192 frames, 0.91 ms in calls of 65536); the output is the same either way.
RESAMPLE_FRAMES = 1 << 13


def load(
    source: Source,
    sample_rate: int | None = None,
    *,
    max_seconds: float | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """Decode `source` to mono float32; return ``(samples, rate)``, rate being `sample_rate` or the native.

    `source` is a path, bytes, or a binary file object (read from its current position).
    """
    rate = check_rate(sample_rate)
    limit = max_seconds_limit(max_seconds)
    with Input(source, name) as src:
        try:
            with open_stream(src, limit) as stream:
                native = stream.info.sample_rate
                y = _concat(list(stream.chunks(None)))
                if rate is None or rate == native:
                    return y, native
                return soxr.resample(y, native, rate), rate
        except AudioError:
            raise
        except Exception as e:  # the contract: nothing but AudioError leaves this package for a bad input
            raise src.error("read_error", f"could not be decoded: {type(e).__name__}: {e}") from e


def resampler_power(native: int, rate: int, freqs: np.ndarray) -> np.ndarray:
    """The power gain at `freqs` (Hz) of the resampling that decoding applies from `native` to `rate` Hz (soxr's
    default quality): 1 in the pass band, falling to 0 just below the lower Nyquist frequency. Measured on an
    impulse, on a 0.5 Hz grid."""
    n = 2 * max(native, rate)
    x = np.zeros(n)
    x[n // 2] = 1.0
    y = soxr.resample(x, native, rate)
    grid = rate / (2 * len(y))
    gain = np.abs(np.fft.rfft(y, 2 * len(y))) * native / rate
    return np.interp(np.asarray(freqs, dtype=np.float64), grid * np.arange(len(gain)), gain) ** 2


def decode(
    source: Source,
    sample_rate: int | None = None,
    *,
    max_seconds: float | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Decode `source` to 1-D mono float32 at `sample_rate` (None: the native rate). See :func:`load`."""
    return load(source, sample_rate, max_seconds=max_seconds, name=name)[0]


def info(source: Source, *, name: str | None = None) -> AudioInfo:
    """Header information (rate, channels, frames, format) without decoding the samples."""
    with Input(source, name) as src:
        try:
            with open_stream(src, None) as stream:
                return stream.info
        except AudioError:
            raise
        except Exception as e:
            raise src.error("read_error", f"could not be read: {type(e).__name__}: {e}") from e


def duration(source: Source, *, name: str | None = None) -> float:
    """Length in seconds: from the header where it says, else by decoding (streamed, nothing kept)."""
    with Input(source, name) as src:
        try:
            with open_stream(src, None) as stream:
                i = stream.info
                if i.frames is not None and (stream.exact_frames or i.backend == "soundfile"):
                    return i.frames / i.sample_rate
                n = sum(len(c) for c in stream.chunks(READ_FRAMES))
                return n / stream.info.sample_rate
        except AudioError:
            raise
        except Exception as e:
            raise src.error("read_error", f"could not be read: {type(e).__name__}: {e}") from e


class Blocks:
    """Stream an input as mono float32 blocks at `sample_rate`, resampled incrementally (soxr.ResampleStream).

    Block ``i`` holds samples ``[i * hop_size, i * hop_size + block_size)`` of what :func:`decode` returns
    (within resampler tolerance). The last block may be shorter; an input shorter than one block yields one
    short block. Only about one block plus one read is held in memory, so hour-long files are fine.

    The input is opened and its header checked on construction (AudioError then); errors found while decoding
    (truncation, NaN/Inf, too long) are raised from the iteration. Use as an iterator or a context manager.

    Where the input's own rate is one of `native_rates`, the blocks stay at that rate (no resampling) and
    `sample_rate` says so.
    """

    def __init__(
        self,
        source: Source,
        sample_rate: int | None,
        block_seconds: float,
        overlap_seconds: float = 0.0,
        *,
        max_seconds: float | None = None,
        name: str | None = None,
        native_rates: Collection[int] = (),
    ) -> None:
        rate = check_rate(sample_rate)
        if not block_seconds > 0:
            raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
        if not 0 <= overlap_seconds < block_seconds:
            raise ValueError(f"overlap_seconds must be in [0, block_seconds), got {overlap_seconds}")
        limit = max_seconds_limit(max_seconds)
        self._src = Input(source, name)
        self._stream: Stream | None = None
        try:
            self._stream = open_stream(self._src, limit, streaming=True)
        except AudioError:
            self._src.close()
            raise
        except Exception as e:
            self._src.close()
            raise self._src.error("read_error", f"could not be read: {type(e).__name__}: {e}") from e
        self.info: AudioInfo = self._stream.info
        native = self.info.sample_rate
        self.sample_rate: int = native if native in native_rates else rate or native
        self.block_size: int = max(1, round(block_seconds * self.sample_rate))
        self.hop_size: int = max(1, self.block_size - round(overlap_seconds * self.sample_rate))
        self._iter = self._generate()

    @property
    def name(self) -> str:
        return self._src.name

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._iter)

    def __enter__(self) -> Blocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Release the input; idempotent. Iteration stops."""
        gen = getattr(self, "_iter", None)
        if gen is not None and not gen.gi_running:
            gen.close()
        stream, self._stream = getattr(self, "_stream", None), None
        if stream is not None:
            stream.close()
        if hasattr(self, "_src"):
            self._src.close()

    def _generate(self) -> Iterator[np.ndarray]:
        try:
            yield from self._blocks()
        except AudioError:
            raise
        except Exception as e:
            raise self._src.error("read_error", f"could not be decoded: {type(e).__name__}: {e}") from e
        finally:
            self.close()

    def _within_one_block(self) -> bool:
        """Whether the input fits in one block by its header, read through libsndfile (whose reads stop at the
        header's frame count, so a header that lies cannot make the one read larger)."""
        i = self.info
        exact = self._stream is not None and self._stream.exact_frames and i.backend == "soundfile"
        return exact and i.frames is not None and i.frames * self.sample_rate <= self.block_size * i.sample_rate

    def _blocks(self) -> Iterator[np.ndarray]:
        assert self._stream is not None
        native, rate = self.info.sample_rate, self.sample_rate
        if self._within_one_block():
            # One read and one resampling call give the same samples as streaming them, with less Python per
            # clip, and soxr's one-shot call scales across threads where its stream does not (100 ten-second
            # files on 2 workers, end to end: 0.66 -> 0.60 s).
            y = _concat(list(self._stream.chunks(None)))
            yield y if native == rate else soxr.resample(y, native, rate)
            return
        resampler = None if native == rate else soxr.ResampleStream(native, rate, 1, dtype="float32")
        size, hop = self.block_size, self.hop_size
        held: list[np.ndarray] = []  # pieces not yet consumed, joined only when a block is due
        n_held = 0
        start = 0  # absolute index of the first held sample
        covered = 0  # absolute end of the last block yielded

        def pieces() -> Iterator[np.ndarray]:
            for chunk in self._stream.chunks(READ_FRAMES):  # type: ignore[union-attr]
                if resampler is None:
                    yield chunk
                    continue
                for i in range(0, len(chunk), RESAMPLE_FRAMES):  # soxr's cost per sample grows with the call
                    yield resampler.resample_chunk(chunk[i : i + RESAMPLE_FRAMES])
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

        for piece in pieces():
            if not len(piece):
                continue
            held.append(piece)
            n_held += len(piece)
            if n_held < size:
                continue
            buf = _concat(held)
            while len(buf) >= size:
                yield buf[:size].copy()
                covered = start + size
                buf, start = buf[hop:], start + hop
            held, n_held = ([buf], len(buf)) if len(buf) else ([], 0)
        if start + n_held > covered:
            yield np.ascontiguousarray(_concat(held), dtype=np.float32)


def blocks(
    source: Source,
    sample_rate: int | None,
    block_seconds: float,
    overlap_seconds: float = 0.0,
    *,
    max_seconds: float | None = None,
    name: str | None = None,
    native_rates: Collection[int] = (),
) -> Blocks:
    """Blocks of `block_seconds` overlapping by `overlap_seconds`, streamed. See :class:`Blocks`."""
    return Blocks(source, sample_rate, block_seconds, overlap_seconds, max_seconds=max_seconds, name=name,
                  native_rates=native_rates)


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
