"""Decode any audio input to mono float32 at a requested rate, whole or block by block. No torch here.

Pipeline (the pretrained references were computed with exactly this, keep it so):
soundfile reads float32 -> mean over channels -> ``soxr.resample(y, native_rate, rate)`` (default quality).
Formats libsndfile cannot read (m4a/aac/webm/mp4/video, ...) go through PyAV, the ``media`` extra.

Every failure is an :class:`~earshot.errors.AudioError` whose ``source`` names the input and whose ``reason``
is one of: not_found, empty, truncated, unsupported, no_channels, non_finite, no_samples, too_long,
needs_media_extra, read_error.

Length limit: ``max_seconds=None`` means the ``EARSHOT_MAX_SECONDS`` environment variable when it is set
(a number of seconds; empty or 0 means no limit), else no limit; pass ``math.inf`` to ignore the variable.
The limit is checked from the header before decoding where the header says how long the input is, and again
while decoding, so a lying or missing header never makes us decode an unbounded input.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np
import soundfile as sf
import soxr

from earshot.errors import AudioError

__all__ = ["EXTENSIONS", "AudioInfo", "Blocks", "MAX_SECONDS_ENV", "Source", "blocks", "decode", "duration", "info",
           "is_audio_name", "load"]

Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

MAX_SECONDS_ENV = "EARSHOT_MAX_SECONDS"
# File names taken as audio where a folder or prefix is listed (CLI inputs, training folders, server samples).
# Decoding itself never trusts the name: it sniffs the content.
EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".mp4", ".aiff",
                        ".aif", ".au", ".caf", ".wma", ".mkv", ".mov"})
MEDIA_EXTRA = "pip install 'earshot[media]'"

_READ_FRAMES = 1 << 16  # native frames per read: bounds memory of the block reader
_SPOOL_BYTES = 64 << 20  # non-seekable streams are spooled; kept in memory up to this size, then on disk
_HEAD_BYTES = 4096
_SF_MALFORMED = 3  # SF_ERR_MALFORMED_FILE
_MP3_TOLERANCE = 2 * 1152  # frames an mp3 may fall short of its Xing/Info count (encoder delay/padding)


@dataclass(frozen=True)
class AudioInfo:
    """What the header says about an input, before decoding it."""

    sample_rate: int
    channels: int
    frames: int | None  # None when the header does not say; an estimate for some formats (ADTS AAC)
    format: str  # libsndfile's major format ("WAV", "FLAC", "MP3", "OGG", ...) or ffmpeg's demuxer name
    backend: str  # "soundfile" or "av"

    @property
    def duration(self) -> float | None:
        """Seconds, from the header (None when unknown)."""
        return None if self.frames is None else self.frames / self.sample_rate


# ---------------------------------------------------------------------------------------------- public API


def is_audio_name(name: str | os.PathLike) -> bool:
    """Whether a file or object name has one of the audio `EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(str(name))[1].lower() in EXTENSIONS


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
    rate = _check_rate(sample_rate)
    limit = _max_seconds(max_seconds)
    with _Input(source, name) as src:
        try:
            with _open_stream(src, limit) as stream:
                native = stream.info.sample_rate
                y = _concat(list(stream.chunks(None)))
                if rate is None or rate == native:
                    return y, native
                return soxr.resample(y, native, rate), rate
        except AudioError:
            raise
        except Exception as e:  # the contract: nothing but AudioError leaves this module for a bad input
            raise _error(src, "read_error", f"could not be decoded: {type(e).__name__}: {e}") from e


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
    with _Input(source, name) as src:
        try:
            with _open_stream(src, None) as stream:
                return stream.info
        except AudioError:
            raise
        except Exception as e:
            raise _error(src, "read_error", f"could not be read: {type(e).__name__}: {e}") from e


def duration(source: Source, *, name: str | None = None) -> float:
    """Length in seconds: from the header where it says, else by decoding (streamed, nothing kept)."""
    with _Input(source, name) as src:
        try:
            with _open_stream(src, None) as stream:
                i = stream.info
                if i.frames is not None and (stream.exact_frames or i.backend == "soundfile"):
                    return i.frames / i.sample_rate
                n = sum(len(c) for c in stream.chunks(_READ_FRAMES))
                return n / stream.info.sample_rate
        except AudioError:
            raise
        except Exception as e:
            raise _error(src, "read_error", f"could not be read: {type(e).__name__}: {e}") from e


class Blocks:
    """Stream an input as mono float32 blocks at `sample_rate`, resampled incrementally (soxr.ResampleStream).

    Block ``i`` holds samples ``[i * hop_size, i * hop_size + block_size)`` of what :func:`decode` returns
    (within resampler tolerance). The last block may be shorter; an input shorter than one block yields one
    short block. Only about one block plus one read is held in memory, so hour-long files are fine.

    The input is opened and its header checked on construction (AudioError then); errors found while decoding
    (truncation, NaN/Inf, too long) are raised from the iteration. Use as an iterator or a context manager.
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
    ) -> None:
        rate = _check_rate(sample_rate)
        if not block_seconds > 0:
            raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
        if not 0 <= overlap_seconds < block_seconds:
            raise ValueError(f"overlap_seconds must be in [0, block_seconds), got {overlap_seconds}")
        limit = _max_seconds(max_seconds)
        self._src = _Input(source, name)
        self._stream: _Stream | None = None
        try:
            self._stream = _open_stream(self._src, limit, streaming=True)
        except AudioError:
            self._src.close()
            raise
        except Exception as e:
            self._src.close()
            raise _error(self._src, "read_error", f"could not be read: {type(e).__name__}: {e}") from e
        self.info: AudioInfo = self._stream.info
        self.sample_rate: int = rate or self.info.sample_rate
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
            raise _error(self._src, "read_error", f"could not be decoded: {type(e).__name__}: {e}") from e
        finally:
            self.close()

    def _blocks(self) -> Iterator[np.ndarray]:
        assert self._stream is not None
        native, rate = self.info.sample_rate, self.sample_rate
        resampler = None if native == rate else soxr.ResampleStream(native, rate, 1, dtype="float32")
        size, hop = self.block_size, self.hop_size
        buf = np.zeros(0, np.float32)
        start = 0  # absolute index of buf[0]
        covered = 0  # absolute end of the last block yielded

        def pieces() -> Iterator[np.ndarray]:
            for chunk in self._stream.chunks(_READ_FRAMES):  # type: ignore[union-attr]
                yield chunk if resampler is None else resampler.resample_chunk(chunk)
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

        for piece in pieces():
            buf = np.concatenate([buf, piece]) if len(buf) else piece
            while len(buf) >= size:
                yield buf[:size].copy()
                covered = start + size
                buf, start = buf[hop:], start + hop
        if start + len(buf) > covered:
            yield np.ascontiguousarray(buf, dtype=np.float32)


def blocks(
    source: Source,
    sample_rate: int | None,
    block_seconds: float,
    overlap_seconds: float = 0.0,
    *,
    max_seconds: float | None = None,
    name: str | None = None,
) -> Blocks:
    """Blocks of `block_seconds` overlapping by `overlap_seconds`, streamed. See :class:`Blocks`."""
    return Blocks(source, sample_rate, block_seconds, overlap_seconds, max_seconds=max_seconds, name=name)


# ---------------------------------------------------------------------------------------------- arguments


def _check_rate(sample_rate: int | None) -> int | None:
    if sample_rate is None:
        return None
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")
    return int(sample_rate)


def _max_seconds(value: float | None) -> float | None:
    """The effective length limit in seconds, or None for no limit."""
    if value is None:
        env = os.environ.get(MAX_SECONDS_ENV, "").strip()
        if not env:
            return None
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"{MAX_SECONDS_ENV}={env!r} is not a number of seconds") from None
        if math.isnan(value) or value < 0:
            raise ValueError(f"{MAX_SECONDS_ENV}={env!r} must be >= 0 (0 means no limit)")
        return None if value == 0 or math.isinf(value) else value
    if math.isnan(value) or value <= 0:
        raise ValueError(f"max_seconds must be > 0 (math.inf for no limit), got {value}")
    return None if math.isinf(value) else float(value)


# ---------------------------------------------------------------------------------------------- input


def _error(src: _Input | str, reason: str, message: str) -> AudioError:
    return AudioError(message, source=src if isinstance(src, str) else src.name, reason=reason)


class _Input:
    """A source resolved to what soundfile and PyAV can open: a path, or a seekable binary file object."""

    def __init__(self, source: Source, name: str | None) -> None:
        self.target: str | IO[bytes]
        self.path: str | None = None
        self._owned: IO[bytes] | None = None
        if isinstance(source, str | os.PathLike):
            self._from_path(os.fspath(source), name)
        elif isinstance(source, bytes | bytearray | memoryview):
            self.name = name or "<bytes>"
            data = bytes(source)
            self.size = len(data)
            self.target = self._owned = io.BytesIO(data)
        elif hasattr(source, "read"):
            self._from_file(source, name)
        else:
            raise TypeError(
                f"source must be a path, bytes or a binary file object, not {type(source).__name__}"
            )
        if self.size == 0:
            self.close()
            raise _error(self, "empty", "file is empty (0 bytes)")
        self.head = self._read_head()

    def _from_path(self, path: str | bytes, name: str | None) -> None:
        path = os.fsdecode(path)
        self.name = name or path
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            hint = " (a URL is not fetched here: read the object first, e.g. with earshot.storage)"
            raise _error(self, "not_found", "no such file" + (hint if "://" in path else "")) from None
        except OSError as e:
            raise _error(self, "read_error", f"could not be read: {e.strerror or e}") from None
        if stat.S_ISDIR(st.st_mode):
            raise _error(self, "read_error", "is a directory, not an audio file")
        if stat.S_ISREG(st.st_mode):
            self.path = self.target = path
            self.size = st.st_size
            return
        try:  # a pipe or device (/dev/stdin): spool it so it can be probed and seeked
            with open(path, "rb") as f:
                self._spool(f)
        except OSError as e:
            raise _error(self, "read_error", f"could not be read: {e.strerror or e}") from None

    def _from_file(self, f: Any, name: str | None) -> None:
        fname = getattr(f, "name", None)
        self.name = name or (os.fsdecode(fname) if isinstance(fname, str | bytes) else "<stream>")
        if isinstance(f, io.TextIOBase):
            raise _error(self, "read_error", "is a text-mode file object; open it in binary mode ('rb')")
        try:
            seekable = bool(f.seekable()) if hasattr(f, "seekable") else False
            if seekable and f.tell() == 0:
                f.seek(0, io.SEEK_END)
                self.size = f.tell()
                f.seek(0)
                self.target = f
            else:  # soundfile seeks to absolute offsets: give it a copy that starts where the caller is
                self._spool(f)
        except (OSError, ValueError, TypeError) as e:
            raise _error(self, "read_error", f"could not be read: {e}") from None

    def _spool(self, f: IO[bytes]) -> None:
        tmp = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (owned by self)
        try:
            shutil.copyfileobj(f, tmp)  # TypeError for a stream that yields str
            self.size = tmp.tell()
            tmp.seek(0)
        except Exception:
            tmp.close()
            raise
        self.target = self._owned = tmp  # type: ignore[assignment]

    def _read_head(self) -> bytes:
        try:
            if self.path is not None:
                with open(self.path, "rb") as f:
                    return f.read(_HEAD_BYTES)
            f = self.target
            assert not isinstance(f, str)
            head = f.read(_HEAD_BYTES)
            f.seek(0)
        except (OSError, ValueError) as e:
            self.close()
            raise _error(
                self, "read_error", f"could not be read: {getattr(e, 'strerror', None) or e}"
            ) from None
        if not isinstance(head, bytes | bytearray):
            self.close()
            raise _error(self, "read_error", "could not be read: the file object did not return bytes")
        return bytes(head)

    def rewind(self) -> None:
        if not isinstance(self.target, str):
            self.target.seek(0)

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> _Input:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- sniffing

_NOT_AUDIO = {
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "gif": "a GIF image",
    "webp": "a WebP image",
    "bmp": "a BMP image",
    "pdf": "a PDF document",
    "zip": "a ZIP archive",
    "gzip": "a gzip archive",
    "text": "a text file",
}
_AV_ONLY = {"aac", "mp4", "matroska", "asf", "flv", "amr", "avi"}
_KIND_NAMES = {"wav": "WAV", "riff": "RIFF", "mp4": "MP4/M4A", "matroska": "Matroska/WebM", "aac": "AAC"}


def not_audio(head: bytes) -> str | None:
    """What the first bytes of an input look like when they are clearly not audio (an image, a PDF, text...),
    else None: lets every reader refuse such input with the same words before trying a decoder."""
    return _NOT_AUDIO.get(_sniff(head) or "")


def _sniff(head: bytes) -> str | None:
    """A coarse guess of what the bytes are, from their magic numbers."""
    if head.startswith(b"RIFF"):
        kind = head[8:12]
        return {b"WAVE": "wav", b"AVI ": "avi", b"WEBP": "webp"}.get(kind, "riff")
    magics = (
        (b"RF64", "wav"), (b"BW64", "wav"), (b"fLaC", "flac"), (b"OggS", "ogg"), (b"ID3", "mp3"),
        (b"FORM", "aiff"), (b"caff", "caf"), (b".snd", "au"), (b"\x1a\x45\xdf\xa3", "matroska"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"), (b"FLV", "flv"), (b"#!AMR", "amr"),
        (b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"%PDF", "pdf"),
        (b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"), (b"BM", "bmp"),
    )  # fmt: skip
    for magic, kind in magics:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "mp4"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0xF6 == 0xF0 else "mp3"
    if _looks_like_text(head):
        return "text"
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    printable = sum(c.isprintable() or c in "\t\n\r\f\v" for c in text)
    return printable >= 0.95 * max(1, len(text))


def _check_wav(src: _Input) -> None:
    """Header checks libsndfile does not report: zero channels, a data chunk longer than the file."""
    f = open(src.path, "rb") if src.path is not None else src.target  # noqa: SIM115
    assert not isinstance(f, str)
    try:
        riff = f.read(12)
        if len(riff) < 12:
            raise _error(src, "truncated", "is truncated: it ends inside its WAV header")
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":  # RF64/BW64, other RIFF forms: libsndfile decides
            return
        channels = block_align = None
        for _ in range(256):
            hdr = f.read(8)
            if len(hdr) < 8:
                raise _error(src, "truncated", "is truncated: it ends before its audio data starts")
            cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if cid == b"fmt ":
                if size < 14:  # malformed, not short: libsndfile and PyAV say what they make of it
                    return
                fmt = f.read(min(size, 16))
                if len(fmt) < 14:
                    raise _error(src, "truncated", "is truncated: it ends inside its WAV header")
                channels, block_align = struct.unpack("<H", fmt[2:4])[0], struct.unpack("<H", fmt[12:14])[0]
                f.seek(size - len(fmt) + (size & 1), io.SEEK_CUR)
                if channels == 0:
                    raise _error(src, "no_channels", "has no audio channels (its WAV header says 0)")
            elif cid == b"data":
                if size in (0, 0xFFFFFFFF):  # length left open by a streaming writer
                    return
                available = src.size - f.tell()
                if size - available >= max(1, block_align or 1):
                    raise _error(
                        src,
                        "truncated",
                        f"is truncated: its header promises {size} bytes of audio but only "
                        f"{max(available, 0)} are present",
                    )
                return
            else:
                f.seek(size + (size & 1), io.SEEK_CUR)
    finally:
        if src.path is not None:
            f.close()
        else:
            f.seek(0)


def _mp3_has_frame_count(head: bytes) -> bool:
    """Whether an mp3 carries a Xing/Info/VBRI header, i.e. an exact frame count a short read contradicts."""
    start = 0
    if head.startswith(b"ID3") and len(head) >= 10:
        size = head[6:10]
        start = 10 + (size[0] << 21 | size[1] << 14 | size[2] << 7 | size[3])
    return start < len(head) and any(tag in head[start : start + 2048] for tag in (b"Xing", b"Info", b"VBRI"))


# ---------------------------------------------------------------------------------------------- decoders


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        return None
    return av


class _Stream:
    """An opened input: header info, and mono float32 chunks at the native rate with every check applied."""

    info: AudioInfo
    exact_frames: bool = True  # whether a decode shorter than info.frames means truncation

    def __init__(self, src: _Input, limit: float | None) -> None:
        self.src = src
        self.limit = limit

    def _raw_chunks(self, frames: int | None) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _shortfall(self, decoded: int) -> bool:
        return False

    def check_header(self) -> None:
        i = self.info
        if i.channels < 1:
            raise _error(self.src, "no_channels", "has no audio channels")
        if i.sample_rate <= 0:
            raise _error(self.src, "unsupported", f"has an invalid sample rate ({i.sample_rate})")
        if self.limit is not None and i.frames is not None and i.frames / i.sample_rate > self.limit:
            raise self._too_long(i.frames / i.sample_rate)

    def _too_long(self, seconds: float, at_least: bool = False) -> AudioError:
        size = f"at least {seconds:.1f}" if at_least else f"{seconds:.1f}"
        return _error(
            self.src, "too_long", f"is too long: {size} s, more than the {self.limit:g} s limit "
            f"(max_seconds / {MAX_SECONDS_ENV})",
        )  # fmt: skip

    def chunks(self, frames: int | None) -> Iterator[np.ndarray]:
        """Checked mono chunks of about `frames` native frames (None: as few reads as the decoder allows)."""
        rate = self.info.sample_rate
        cap = None if self.limit is None else int(self.limit * rate) + 1
        n = 0
        for y in self._raw_chunks(frames):
            if not len(y):
                continue
            if not np.isfinite(y).all():
                bad = n + int(np.flatnonzero(~np.isfinite(y))[0])
                raise _error(
                    self.src, "non_finite", f"contains NaN or infinite samples (first at {bad / rate:.3f} s)"
                )
            n += len(y)
            if cap is not None and n > cap:
                raise self._too_long(n / rate, at_least=True)
            yield y
        if n == 0:
            raise _error(self.src, "no_samples", "contains no audio samples (zero length)")
        if self._shortfall(n):
            raise _error(
                self.src,
                "truncated",
                f"is truncated: its header promises {self.info.frames / rate:.2f} s but only "
                f"{n / rate:.2f} s could be decoded",
            )

    def close(self) -> None:
        pass

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SoundfileStream(_Stream):
    def __init__(self, src: _Input, limit: float | None) -> None:
        super().__init__(src, limit)
        src.rewind()
        self._f = f = sf.SoundFile(src.target)
        # sf.read seeks to 0 first, and that changes libsndfile's MP3 output: do the same, bit for bit
        if f.seekable():
            f.seek(0)
        self.info = AudioInfo(f.samplerate, f.channels, f.frames, f.format, "soundfile")
        self.exact_frames = f.format != "MP3" or _mp3_has_frame_count(src.head)

    def _raw_chunks(self, frames: int | None) -> Iterator[np.ndarray]:
        # frames=None: one read of everything, bit-identical to sf.read (chunked MP3 reads are not: see
        # _open_stream)
        mono = self.info.channels == 1
        step = -1 if frames is None else frames
        while True:
            try:
                data = self._f.read(step, dtype="float32", always_2d=True)
                step = frames or _READ_FRAMES
            except (sf.SoundFileError, RuntimeError) as e:
                raise _error(
                    self.src, "truncated", f"is truncated or damaged: decoding failed part-way ({e})"
                ) from e
            if not len(data):
                return
            yield np.ascontiguousarray(data[:, 0]) if mono else data.mean(axis=1)

    def _shortfall(self, decoded: int) -> bool:
        expected = self.info.frames
        if not self.exact_frames or not expected:
            return False
        return expected - decoded > (_MP3_TOLERANCE if self.info.format == "MP3" else 0)

    def close(self) -> None:
        self._f.close()


class _AvStream(_Stream):
    _EXACT_HEADER = ("matroska", "mov", "flac", "wav")  # demuxers whose duration comes from the header

    def __init__(self, src: _Input, limit: float | None, av: Any) -> None:
        super().__init__(src, limit)
        self._av = av
        src.rewind()
        self._c = av.open(src.target, mode="r", metadata_errors="ignore")
        try:
            self._setup()
        except Exception:
            self._c.close()
            raise

    def _setup(self) -> None:
        c = self._c
        if not c.streams.audio:
            what = "only video" if c.streams.video else "no audio"
            raise _error(
                self.src, "unsupported", f"has no audio stream ({what}; ffmpeg format {c.format.name})"
            )
        st = c.streams.audio[0]
        self._st = st
        cc = st.codec_context
        if cc is None:
            raise _error(self.src, "unsupported", "uses an audio encoding no available decoder supports")
        rate = int(cc.sample_rate or st.rate or 0)
        channels = int(cc.layout.nb_channels) if cc.layout is not None else 0
        if channels == 0:
            raise _error(self.src, "no_channels", "has no audio channels")
        seconds = None
        if st.duration and st.time_base:
            seconds = float(st.duration * st.time_base)
        elif c.duration:
            seconds = c.duration / self._av.time_base
        frames = None if seconds is None or rate <= 0 else round(seconds * rate)
        self.exact_frames = any(k in c.format.name for k in self._EXACT_HEADER)
        self.info = AudioInfo(rate, channels, frames, c.format.name, "av")

    def _raw_chunks(self, frames: int | None) -> Iterator[np.ndarray]:
        rate = self.info.sample_rate
        decoded = self._c.decode(self._st)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                return
            except Exception as e:
                raise _error(
                    self.src, "truncated", f"is truncated or damaged: decoding failed part-way ({e})"
                ) from e
            if not frame.samples:
                continue
            y = frame_to_mono(frame)
            if frame.sample_rate and frame.sample_rate != rate:  # a mid-stream rate change: follow the first
                y = soxr.resample(y, frame.sample_rate, rate)
            yield y

    def _shortfall(self, decoded: int) -> bool:
        expected = self.info.frames
        if not self.exact_frames or not expected:
            return False
        rate = self.info.sample_rate
        return (expected - decoded) / rate > max(0.5, 0.01 * expected / rate)

    def close(self) -> None:
        self._c.close()


def frame_to_mono(frame: Any) -> np.ndarray:
    """A PyAV AudioFrame as mono float32 (channels averaged, integer formats scaled to [-1, 1))."""
    a = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        a = a.reshape(-1, channels).T
    half = np.float32(2 ** (8 * a.dtype.itemsize - 1))
    if a.dtype.kind == "u":
        a = (a.astype(np.float32) - half) / half
    elif a.dtype.kind == "i":
        a = a.astype(np.float32) / half
    else:
        a = a.astype(np.float32, copy=False)
    return np.ascontiguousarray(a[0]) if channels == 1 else a.mean(axis=0)


def _open_stream(src: _Input, limit: float | None, *, streaming: bool = False) -> _Stream:
    """soundfile first, PyAV second; every failure classified into an AudioError reason.

    `streaming`: the caller reads in many small chunks. libsndfile 1.2's MP3 decoder glitches at some read
    boundaries (mpg123 bit-reservoir errors), so MP3 is then streamed through PyAV when it is installed;
    whole-file decoding keeps libsndfile, which the pretrained references were computed with.
    """
    kind = _sniff(src.head)
    if kind in _NOT_AUDIO:
        raise _error(src, "unsupported", f"is not audio: it looks like {_NOT_AUDIO[kind]}")
    if kind in ("wav", "riff"):
        _check_wav(src)

    sf_error: Exception | None = None
    if kind not in _AV_ONLY:
        try:
            stream: _Stream = _SoundfileStream(src, limit)
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
            sf_error = e
        else:
            if stream.info.frames != 0:
                if streaming and stream.info.format == "MP3":
                    return _checked(_mp3_stream(src, limit, stream))
                return _checked(stream)
            stream.close()  # zero frames: maybe a streaming WAV with its size left at 0; PyAV may do better
            av = _import_av()
            if av is not None:
                try:
                    fallback = _AvStream(src, limit, av)
                except Exception:
                    pass
                else:
                    return _checked(fallback)
            raise _error(src, "no_samples", "contains no audio samples (zero length)")

    detail = _sf_detail(sf_error)
    if "channel count is zero" in detail.lower():
        raise _error(src, "no_channels", "has no audio channels")
    av = _import_av()
    if av is None:
        if kind in _AV_ONLY:
            what = _KIND_NAMES.get(kind, kind.upper())  # type: ignore[union-attr]
            raise _error(
                src, "needs_media_extra", f"is {what}, which needs the media extra to decode: {MEDIA_EXTRA}"
            )
        raise _classify(src, kind, sf_error, None)
    try:
        stream = _AvStream(src, limit, av)
    except AudioError:
        raise
    except Exception as e:
        raise _classify(src, kind, sf_error, e) from e
    return _checked(stream)


def _mp3_stream(src: _Input, limit: float | None, sf_stream: _Stream) -> _Stream:
    """PyAV for streaming an MP3 when available, keeping libsndfile's header (gapless length, tag check)."""
    av = _import_av()
    if av is None:
        return sf_stream
    sf_stream.close()
    try:
        stream = _AvStream(src, limit, av)
    except Exception:
        return _SoundfileStream(src, limit)
    stream.info = replace(sf_stream.info, backend="av")
    stream.exact_frames = sf_stream.exact_frames
    return stream


def _checked(stream: _Stream) -> _Stream:
    try:
        stream.check_header()
    except BaseException:
        stream.close()
        raise
    return stream


def _sf_detail(e: Exception | None) -> str:
    if e is None:
        return ""
    return str(getattr(e, "error_string", None) or e)


def _classify(
    src: _Input, kind: str | None, sf_error: Exception | None, av_error: Exception | None
) -> AudioError:
    """Why neither decoder could open the input."""
    sf_code = getattr(sf_error, "code", None)
    detail = "; ".join(x for x in (_sf_detail(sf_error), str(av_error or "")) if x)
    if isinstance(av_error, EOFError) or sf_code == _SF_MALFORMED or (kind == "mp4" and av_error is not None):
        return _error(src, "truncated", f"is truncated or damaged ({detail})")
    if kind is not None:
        what = _KIND_NAMES.get(kind, kind.upper())
        return _error(src, "unsupported", f"looks like {what} but is malformed or unsupported ({detail})")
    hint = "" if av_error is not None else f"; if it is m4a/aac/webm or a video: {MEDIA_EXTRA}"
    return _error(src, "unsupported", f"is not a recognised audio format{hint}")


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
