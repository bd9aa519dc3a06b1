"""Live sources, read as the audio arrives: mono float32 chunks at the source's own rate, nothing decoded ahead.

``-`` (stdin) or a binary file object: a WAV is parsed header-first and streamed, other containers go through
PyAV on the pipe, headerless PCM needs ``raw_format``, ``rate`` and ``channels``. A file path: decoded block by
block (``realtime`` paces it at real time, simulating a live feed). An http/https/rtsp/rtmp URL: PyAV, only
when ``allow_urls``. ``mic`` / ``mic:N``: the ``sounddevice`` package.

:func:`resolve` checks a source without opening it (errors a caller reports before starting); the resolved
:meth:`LiveSource.open` returns a :class:`Feed`, and errors from then on come from opening or iterating it.
"""

from __future__ import annotations

import math
import os
import queue
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from earshot.audio import formats, pcm, pyav
from earshot.audio.decoding import blocks
from earshot.errors import AudioError, EarshotError

__all__ = ["RAW_FORMATS", "SOUNDDEVICE_HINT", "URL_SCHEMES", "Feed", "LiveSource", "resolve"]

URL_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps")
RAW_FORMATS = pcm.RAW_FORMATS
SOUNDDEVICE_HINT = "pip install sounddevice"

_PIPE_READ = 1 << 15  # bytes per read from a pipe (read1: returns what is there, so latency stays low)
_FILE_BLOCK = 1.0  # seconds per block read from a file as fast as possible
_PACED_BLOCK = 0.02  # seconds per block when a file is paced at real time
_AV_PROBE = {"probesize": "32768", "analyzeduration": "1000000"}  # start a live container within ~1 s of data
_AV_PROTOCOLS = "http,https,tcp,tls,crypto,rtsp,rtsps,rtp,srtp,udp,rtmp,rtmps,rtmpt,rtmpts,httpproxy"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_RAW_HINT = "for headerless PCM pass --raw-format, --rate and --channels"


@dataclass
class Feed:
    """An opened source: its native rate and mono float32 chunks at that rate. Call `close` when done."""

    name: str
    rate: int
    chunks: Iterator[np.ndarray]
    close: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class LiveSource:
    """A source checked by :func:`resolve`, not yet opened."""

    source: Any  # '-', a path, a URL, 'mic[:N]' or a binary file object
    kind: str  # pipe, path, url or mic
    name: str  # how records and errors name it
    realtime: bool = False  # pace the chunks at real time (never for the microphone, which is live already)
    raw_format: str | None = None
    rate: int | None = None  # raw PCM's rate, or the microphone's (None: its default)
    channels: int = 1
    timeout: float | None = 10.0  # seconds to wait on a URL or a PyAV pipe (open and each read)

    def open(self, mic_block: float = 0.05) -> Feed:
        """Start reading. `mic_block`: seconds per microphone read. AudioError when the source cannot be read."""
        feed = self._open(mic_block)
        if self.realtime:
            feed.chunks = _paced(feed.chunks, feed.rate)
        return feed

    def _open(self, mic_block: float) -> Feed:
        name = self.name
        if self.kind == "pipe":
            f = sys.stdin.buffer if self.source == "-" else self.source
            return _pipe_feed(f, name, self.raw_format, self.rate, self.channels, self.timeout)
        if self.kind == "url":
            opts = {**_AV_PROBE, "protocol_whitelist": _AV_PROTOCOLS}
            return _av_feed(name, name, options=opts, timeout=self.timeout, pipe=False)
        if self.kind == "mic":
            return _mic_feed(name, self.rate, mic_block)
        if self.raw_format is not None:
            try:
                f = open(name, "rb")  # noqa: SIM115 (closed by the feed)
            except OSError as e:
                raise _error(name, "not_found" if isinstance(e, FileNotFoundError) else "read_error",
                             f"could not be opened: {e.strerror or e}") from None
            feed = _pipe_feed(f, name, self.raw_format, self.rate, self.channels, self.timeout)
            feed.close = f.close
            return feed
        b = blocks(name, None, block_seconds=_PACED_BLOCK if self.realtime else _FILE_BLOCK, max_seconds=math.inf)
        return Feed(name, b.sample_rate, iter(b), b.close)


def resolve(
    source: Any,
    *,
    realtime: bool = False,
    allow_urls: bool = False,
    raw_format: str | None = None,
    rate: int | None = None,
    channels: int = 1,
    timeout: float | None = 10.0,
) -> LiveSource:
    """Check `source` and its options without opening it: ValueError for bad options, TypeError for a source
    of the wrong type, AudioError for a URL not allowed (``url_not_allowed``) or a microphone without the
    sounddevice package (``needs_sounddevice``)."""
    if raw_format is not None:
        if raw_format not in RAW_FORMATS:
            raise ValueError(f"raw_format must be one of {', '.join(RAW_FORMATS)}, got {raw_format!r}")
        if not rate or rate <= 0 or channels < 1:
            raise ValueError("raw PCM needs rate (--rate HZ) > 0 and channels (--channels N) >= 1")
    kind = _source_kind(source)
    name = "<stdin>" if source == "-" else os.fspath(source) if kind != "pipe" else str(
        getattr(source, "name", None) or "<stream>")
    if kind == "url":
        scheme = _URL.match(name).group(1).lower()  # type: ignore[union-attr]
        if not allow_urls:
            raise AudioError("is a URL; fetching URLs is off by default: pass --allow-url (allow_urls=True) to "
                             "stream from it", source=name, reason="url_not_allowed")
        if scheme not in URL_SCHEMES:
            raise AudioError(f"URL scheme {scheme!r} is not streamed; allowed: {', '.join(URL_SCHEMES)}",
                             source=name, reason="url_not_allowed")
    if kind == "mic":
        _import_sounddevice()
    if raw_format is not None and kind not in ("pipe", "path"):
        raise ValueError("raw_format applies to stdin, a file object or a file path")
    return LiveSource(source, kind, name, realtime=realtime and kind != "mic", raw_format=raw_format, rate=rate,
                      channels=channels, timeout=timeout)


def _source_kind(source: Any) -> str:
    if not isinstance(source, str | os.PathLike):
        if hasattr(source, "read"):
            return "pipe"
        raise TypeError(f"source must be '-', a path, a URL, 'mic[:N]' or a binary file object, "
                        f"not {type(source).__name__}")
    s = os.fspath(source)
    if s == "-":
        return "pipe"
    if s == "mic" or s.startswith("mic:"):
        return "mic"
    if _URL.match(s):
        return "url"
    return "path"


def _error(name: str, reason: str, message: str) -> AudioError:
    return AudioError(message, source=name, reason=reason)


class _Reader:
    """A non-seekable byte stream read without waiting for full buffers, with push-back and optional logging."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self._read = getattr(f, "read1", None) or f.read
        self.prefix = b""
        self.log: bytearray | None = None

    def read(self, n: int = _PIPE_READ) -> bytes:
        if self.prefix:
            out, self.prefix = self.prefix[:n], self.prefix[n:]
        else:
            out = self._read(n) if n > 0 else b""
            if not isinstance(out, bytes | bytearray):
                raise TypeError("the stream did not return bytes (open it in binary mode)")
        if self.log is not None:
            self.log += out
        return bytes(out)

    def read_exact(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            b = self.read(n - got)
            if not b:
                break
            parts.append(b)
            got += len(b)
        return b"".join(parts)

    def unread(self, data: bytes) -> None:
        self.prefix = data + self.prefix


def _pcm_chunks(r: _Reader, fmt: pcm.PcmFormat, data_bytes: int | None, name: str,
                rate: int) -> Iterator[np.ndarray]:
    fb, carry, remaining, got = fmt.frame_bytes, b"", data_bytes, 0
    while remaining is None or remaining > 0:
        try:
            b = r.read(_PIPE_READ if remaining is None else min(_PIPE_READ, remaining))
        except OSError as e:
            raise _error(name, "read_error", f"could not be read: {e.strerror or e}") from None
        if not b:
            break
        got += len(b)
        if remaining is not None:
            remaining -= len(b)
        b = carry + b if carry else b
        k = len(b) // fb * fb
        carry = b[k:]
        if k:
            y = fmt.decode(b[:k])
            if not np.isfinite(y).all():
                raise _error(name, "non_finite", "contains NaN or infinite samples")
            yield y
    if got == 0:
        raise _error(name, "no_samples", "contains no audio samples (the stream ended before any)")
    if remaining:
        raise _error(name, "truncated", f"is truncated: its header promises {data_bytes / fb / rate:.2f} s but "
                                        f"the stream ended after {got / fb / rate:.2f} s")


def _pipe_feed(f: IO[bytes], name: str, raw_format: str | None, rate: int | None, channels: int,
               av_timeout: float | None) -> Feed:
    """stdin or any non-seekable byte stream: raw PCM, WAV parsed as it comes, else PyAV on the pipe."""
    r = _Reader(f)
    if raw_format is not None:
        assert rate is not None
        return Feed(name, rate, _pcm_chunks(r, pcm.PcmFormat(raw_format, channels), None, name, rate))
    head = r.read_exact(12)
    if not head:
        raise _error(name, "empty", "no input: the stream ended before any byte arrived")
    r.unread(head)
    if (looks_like := formats.not_audio(head)) is not None:
        raise _error(name, "unsupported", f"is not audio: it looks like {looks_like} ({_RAW_HINT})")
    if pcm.is_riff_wave(head):
        feed = _wav_pipe(r, name)
        if feed is not None:
            return feed
    return _av_feed(r, name, options=dict(_AV_PROBE), timeout=av_timeout, pipe=True)


def _wav_pipe(r: _Reader, name: str) -> Feed | None:
    """Parse a WAV header from a pipe and stream its frames; None (bytes pushed back) for non-PCM encodings."""
    r.log = bytearray()
    fmt, data_bytes = pcm.read_wav_header(r.read_exact, name)
    log, r.log = r.log, None
    raw = fmt.pcm()
    if raw is None:  # a-law, mu-law, ADPCM, ...: let ffmpeg decode it from the start
        r.unread(bytes(log))
        return None
    return Feed(name, fmt.rate, _pcm_chunks(r, raw, data_bytes, name, fmt.rate))


def _av_feed(target: Any, name: str, *, options: dict[str, str], timeout: float | None, pipe: bool) -> Feed:
    av = pyav.require_av(name, "a non-WAV container on a pipe" if pipe else "a URL")
    try:
        c = av.open(target, mode="r", options=options, timeout=timeout, metadata_errors="ignore")
    except EarshotError:  # raised by a file-like source itself: already says what went wrong
        raise
    except Exception as e:
        what = "could not be opened" if not pipe else "is not a stream format the decoder recognises"
        hint = f" ({_RAW_HINT})" if pipe else ""
        raise _error(name, "unsupported" if pipe else "read_error",
                     f"{what}: {type(e).__name__}: {e}{hint}") from None
    try:
        if not c.streams.audio:
            raise _error(name, "unsupported", f"has no audio stream (ffmpeg format {c.format.name})")
        st = c.streams.audio[0]
        rate = int((st.codec_context and st.codec_context.sample_rate) or st.rate or 0)
    except BaseException:
        c.close()
        raise
    if rate <= 0:
        raise _error(name, "unsupported", "has no sample rate in its stream header")
    return Feed(name, rate, pyav.decode_frames(c, st, rate, name), c.close)


def _mic_feed(spec: str, rate: int | None, block: float) -> Feed:
    sd = _import_sounddevice()
    device: int | str | None = spec.partition(":")[2] or None
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    try:
        rate = int(rate or sd.query_devices(device, "input")["default_samplerate"])
        q: queue.Queue[np.ndarray] = queue.Queue()

        def callback(indata, frames, t, status) -> None:  # PortAudio's thread
            q.put(np.ascontiguousarray(indata.mean(axis=1), dtype=np.float32))

        s = sd.InputStream(device=device, channels=1, samplerate=rate, dtype="float32", callback=callback,
                           blocksize=max(1, int(rate * block)))
        s.start()
    except Exception as e:
        raise _error(spec, "read_error", f"the microphone could not be opened: {type(e).__name__}: {e}") from None

    def chunks() -> Iterator[np.ndarray]:
        while True:
            try:
                yield q.get(timeout=0.2)
            except queue.Empty:
                if not s.active:
                    return

    def close() -> None:
        s.stop()
        s.close()

    return Feed(spec, rate, chunks(), close)


def _import_sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError:
        raise AudioError(f"a microphone needs the sounddevice package: {SOUNDDEVICE_HINT}", source="mic",
                         reason="needs_sounddevice") from None
    except OSError as e:  # the package is there but PortAudio is not
        raise AudioError(f"sounddevice could not load PortAudio ({e}); install libportaudio2 or "
                         f"{SOUNDDEVICE_HINT}", source="mic", reason="needs_sounddevice") from None
    return sounddevice


def _paced(chunks: Iterator[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """Release each chunk when its last sample would have been recorded, counting from the first read."""
    t0, n = time.monotonic(), 0
    for y in chunks:
        n += len(y)
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield y
