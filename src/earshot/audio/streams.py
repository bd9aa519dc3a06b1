"""Opening an input for decoding: soundfile first, PyAV second, every failure classified into an AudioError reason.

An opened :class:`Stream` has the header's :class:`AudioInfo` and yields mono float32 chunks at the native rate,
checked on the way (NaN/Inf, the length limit, truncation against the header, no samples at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import soundfile as sf

from earshot.audio import formats, pcm, pyav
from earshot.audio.source import MAX_SECONDS_ENV, Input
from earshot.errors import AudioError

__all__ = ["READ_FRAMES", "AudioInfo", "Stream", "open_stream"]

READ_FRAMES = 1 << 16  # native frames per read: bounds memory of the block reader

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


class Stream:
    """An opened input: header info, and mono float32 chunks at the native rate with every check applied."""

    info: AudioInfo
    exact_frames: bool = True  # whether a decode shorter than info.frames means truncation

    def __init__(self, src: Input, limit: float | None) -> None:
        self.src = src
        self.limit = limit

    def _raw_chunks(self, frames: int | None) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _shortfall(self, decoded: int) -> bool:
        return False

    def check_header(self) -> None:
        """AudioError for a header that rules the input out: no channels, a bad rate, longer than the limit."""
        i = self.info
        if i.channels < 1:
            raise self.src.error("no_channels", "has no audio channels")
        if i.sample_rate <= 0:
            raise self.src.error("unsupported", f"has an invalid sample rate ({i.sample_rate})")
        if self.limit is not None and i.frames is not None and i.frames / i.sample_rate > self.limit:
            raise self._too_long(i.frames / i.sample_rate)

    def _too_long(self, seconds: float, at_least: bool = False) -> AudioError:
        size = f"at least {seconds:.1f}" if at_least else f"{seconds:.1f}"
        return self.src.error(
            "too_long", f"is too long: {size} s, more than the {self.limit:g} s limit (max_seconds / {MAX_SECONDS_ENV})"
        )

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
                raise self.src.error("non_finite", f"contains NaN or infinite samples (first at {bad / rate:.3f} s)")
            n += len(y)
            if cap is not None and n > cap:
                raise self._too_long(n / rate, at_least=True)
            yield y
        if n == 0:
            raise self.src.error("no_samples", "contains no audio samples (zero length)")
        if self._shortfall(n):
            raise self.src.error(
                "truncated",
                f"is truncated: its header promises {self.info.frames / rate:.2f} s but only "
                f"{n / rate:.2f} s could be decoded",
            )

    def close(self) -> None:
        pass

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SoundfileStream(Stream):
    def __init__(self, src: Input, limit: float | None) -> None:
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
        # open_stream)
        mono = self.info.channels == 1
        step = -1 if frames is None else frames
        # 16-bit PCM read as integers and scaled here: the same floats as libsndfile's (x / 32768, exact in
        # float32), in less than half its time
        pcm16 = self._f.subtype == "PCM_16"
        while True:
            try:
                data = self._f.read(step, dtype="int16" if pcm16 else "float32", always_2d=True)
                step = frames or READ_FRAMES
            except (sf.SoundFileError, RuntimeError) as e:
                raise self.src.error("truncated", f"is truncated or damaged: decoding failed part-way ({e})") from e
            if not len(data):
                return
            if pcm16:
                data = np.multiply(data, np.float32(1 / 32768), dtype=np.float32)
            yield np.ascontiguousarray(data[:, 0]) if mono else data.mean(axis=1)

    def _shortfall(self, decoded: int) -> bool:
        expected = self.info.frames
        if not self.exact_frames or not expected:
            return False
        return expected - decoded > (_MP3_TOLERANCE if self.info.format == "MP3" else 0)

    def close(self) -> None:
        self._f.close()


class _AvStream(Stream):
    _EXACT_HEADER = ("matroska", "mov", "flac", "wav")  # demuxers whose duration comes from the header

    def __init__(self, src: Input, limit: float | None, av: Any) -> None:
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
            raise self.src.error("unsupported", f"has no audio stream ({what}; ffmpeg format {c.format.name})")
        st = c.streams.audio[0]
        self._st = st
        cc = st.codec_context
        if cc is None:
            raise self.src.error("unsupported", "uses an audio encoding no available decoder supports")
        rate = int(cc.sample_rate or st.rate or 0)
        channels = int(cc.layout.nb_channels) if cc.layout is not None else 0
        if channels == 0:
            raise self.src.error("no_channels", "has no audio channels")
        seconds = None
        if st.duration and st.time_base:
            seconds = float(st.duration * st.time_base)
        elif c.duration:
            seconds = c.duration / self._av.time_base
        frames = None if seconds is None or rate <= 0 else round(seconds * rate)
        self.exact_frames = any(k in c.format.name for k in self._EXACT_HEADER)
        self.info = AudioInfo(rate, channels, frames, c.format.name, "av")

    def _raw_chunks(self, frames: int | None) -> Iterator[np.ndarray]:
        return pyav.decode_frames(self._c, self._st, self.info.sample_rate, self.src.name)

    def _shortfall(self, decoded: int) -> bool:
        expected = self.info.frames
        if not self.exact_frames or not expected:
            return False
        rate = self.info.sample_rate
        return (expected - decoded) / rate > max(0.5, 0.01 * expected / rate)

    def close(self) -> None:
        self._c.close()


def open_stream(src: Input, limit: float | None, *, streaming: bool = False) -> Stream:
    """soundfile first, PyAV second; every failure classified into an AudioError reason.

    `limit`: seconds (None: no limit). `streaming`: the caller reads in many small chunks. libsndfile 1.2's MP3
    decoder glitches at some read boundaries (mpg123 bit-reservoir errors), so MP3 is then streamed through
    PyAV when it is installed; whole-file decoding keeps libsndfile, which the pretrained references were
    computed with.
    """
    kind = formats.sniff(src.head)
    if kind in formats.NOT_AUDIO:
        raise src.error("unsupported", f"is not audio: it looks like {formats.NOT_AUDIO[kind]}")
    if kind in ("wav", "riff"):
        _check_wav(src)

    sf_error: Exception | None = None
    if kind not in formats.AV_ONLY:
        try:
            stream: Stream = _SoundfileStream(src, limit)
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
            sf_error = e
        else:
            if stream.info.frames != 0:
                if streaming and stream.info.format == "MP3":
                    return _checked(_mp3_stream(src, limit, stream))
                return _checked(stream)
            stream.close()  # zero frames: maybe a streaming WAV with its size left at 0; PyAV may do better
            av = pyav.import_av()
            if av is not None:
                try:
                    fallback = _AvStream(src, limit, av)
                except Exception:
                    pass
                else:
                    return _checked(fallback)
            raise src.error("no_samples", "contains no audio samples (zero length)")

    detail = _sf_detail(sf_error)
    if "channel count is zero" in detail.lower():
        raise src.error("no_channels", "has no audio channels")
    av = pyav.import_av()
    if av is None:
        if kind in formats.AV_ONLY:
            raise src.error("needs_media_extra",
                            f"is {formats.kind_name(kind)}, which needs the media extra to decode: {pyav.MEDIA_EXTRA}")
        raise _classify(src, kind, sf_error, None)
    try:
        stream = _AvStream(src, limit, av)
    except AudioError:
        raise
    except Exception as e:
        raise _classify(src, kind, sf_error, e) from e
    return _checked(stream)


def _check_wav(src: Input) -> None:
    """The WAV header checks of `pcm`, on the file or the spooled copy (rewound after)."""
    f = open(src.path, "rb") if src.path is not None else src.target  # noqa: SIM115
    assert not isinstance(f, str)
    try:
        pcm.check_wav_file(f, src.size, src.name)
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


def _mp3_stream(src: Input, limit: float | None, sf_stream: Stream) -> Stream:
    """PyAV for streaming an MP3 when available, keeping libsndfile's header (gapless length, tag check)."""
    av = pyav.import_av()
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


def _checked(stream: Stream) -> Stream:
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


def _classify(src: Input, kind: str | None, sf_error: Exception | None, av_error: Exception | None) -> AudioError:
    """Why neither decoder could open the input."""
    sf_code = getattr(sf_error, "code", None)
    detail = "; ".join(x for x in (_sf_detail(sf_error), str(av_error or "")) if x)
    if isinstance(av_error, EOFError) or sf_code == _SF_MALFORMED or (kind == "mp4" and av_error is not None):
        return src.error("truncated", f"is truncated or damaged ({detail})")
    if kind is not None:
        what = formats.kind_name(kind)
        return src.error("unsupported", f"looks like {what} but is malformed or unsupported ({detail})")
    hint = "" if av_error is not None else f"; if it is m4a/aac/webm or a video: {pyav.MEDIA_EXTRA}"
    return src.error("unsupported", f"is not a recognised audio format{hint}")
