"""`earshot stream SOURCE`: a live stream classified continuously, one JSON record per line as audio arrives.

Sources: ``-`` (stdin: a WAV is parsed header-first and streamed, other containers go through PyAV on the pipe,
headerless PCM with ``raw_format``/``rate``/``channels``), a binary file object, a file path (``realtime=True``
paces it at real time, simulating a live feed), an http/https/rtsp/rtmp URL (PyAV; only with ``allow_urls``),
``mic`` / ``mic:N`` (the ``sounddevice`` package).

Nothing is decoded ahead: chunks are resampled as they arrive (``soxr.ResampleStream``) into a ring buffer of
one window, and the model scores the newest window every hop, so a record follows the audio by about one hop.
Records (JSON-ready dicts):

- ``{"type": "segment", "start", "end", "labels", "probabilities", "labels_info"}`` per window;
- ``{"type": "event_start", "label", "label_id", "start", "score"}`` once an event is on and has lasted
  ``min_duration`` (every event_start is later followed by its event);
- ``{"type": "event", "label", "label_id", "start", "end", "score"}`` when an event closes;
- ``{"type": "summary", "source", "model", "duration", "segments", "events", "labels", "probabilities",
  "labels_info", "stopped", "error"}`` at the end (``stopped``: eof, max_seconds, interrupted or error);
- ``{"type": "error", "source", "at", "error": {"type", "reason", "message"}}`` last, when the source failed
  part-way (a truncated or undecodable stream, a dropped connection): never a traceback.

Events follow the rule of :meth:`Classifier.timeline` (see :class:`EventTracker`). Times are audio seconds from
the start of the stream. No torch here.
"""

from __future__ import annotations

import argparse
import json
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
import soxr

from earshot import audio
from earshot.errors import AudioError, EarshotError
from earshot.events import EventTracker
from earshot.prediction import Event

__all__ = ["EventTracker", "RAW_FORMATS", "URL_SCHEMES", "main", "run", "stream"]

URL_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps")
RAW_FORMATS = ("u8", "s16le", "s24le", "s32le", "f32le", "f64le")
SOUNDDEVICE_HINT = "pip install sounddevice"

_PIPE_READ = 1 << 15  # bytes per read from a pipe (read1: returns what is there, so latency stays low)
_FILE_BLOCK = 1.0  # seconds per block read from a file as fast as possible
_PACED_BLOCK = 0.02  # seconds per block when a file is paced at real time
_AV_PROBE = {"probesize": "32768", "analyzeduration": "1000000"}  # start a live container within ~1 s of data
_AV_PROTOCOLS = "http,https,tcp,tls,crypto,rtsp,rtsps,rtp,srtp,udp,rtmp,rtmps,rtmpt,rtmpts,httpproxy"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


# ---------------------------------------------------------------------------------------------- events


# ---------------------------------------------------------------------------------------------- byte sources


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


@dataclass
class _Pcm:
    """Interleaved PCM frames → mono float32 (integers scaled like soundfile: by 2**(bits-1))."""

    fmt: str
    channels: int

    @property
    def frame_bytes(self) -> int:
        width = {"u8": 1, "s16le": 2, "s24le": 3, "s32le": 4, "f32le": 4, "f64le": 8}[self.fmt]
        return width * self.channels

    def decode(self, b: bytes) -> np.ndarray:
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


def _wav_pcm(tag: int, bits: int, channels: int) -> _Pcm | None:
    fmt = {(1, 8): "u8", (1, 16): "s16le", (1, 24): "s24le", (1, 32): "s32le", (3, 32): "f32le", (3, 64): "f64le"}
    name = fmt.get((tag, bits))
    return None if name is None else _Pcm(name, channels)


@dataclass
class _Feed:
    """An opened source: its native rate and mono float32 chunks at that rate."""

    name: str
    rate: int
    chunks: Iterator[np.ndarray]
    close: Callable[[], None] = lambda: None


def _err(name: str, reason: str, message: str) -> AudioError:
    return AudioError(message, source=name, reason=reason)


def _pcm_chunks(r: _Reader, pcm: _Pcm, data_bytes: int | None, name: str, rate: int) -> Iterator[np.ndarray]:
    fb, carry, remaining, got = pcm.frame_bytes, b"", data_bytes, 0
    while remaining is None or remaining > 0:
        try:
            b = r.read(_PIPE_READ if remaining is None else min(_PIPE_READ, remaining))
        except OSError as e:
            raise _err(name, "read_error", f"could not be read: {e.strerror or e}") from None
        if not b:
            break
        got += len(b)
        if remaining is not None:
            remaining -= len(b)
        b = carry + b if carry else b
        k = len(b) // fb * fb
        carry = b[k:]
        if k:
            y = pcm.decode(b[:k])
            if not np.isfinite(y).all():
                raise _err(name, "non_finite", "contains NaN or infinite samples")
            yield y
    if got == 0:
        raise _err(name, "no_samples", "contains no audio samples (the stream ended before any)")
    if remaining:
        raise _err(name, "truncated", f"is truncated: its header promises {data_bytes / fb / rate:.2f} s but the "
                                      f"stream ended after {got / fb / rate:.2f} s")


def _pipe_feed(f: IO[bytes], name: str, raw_format: str | None, rate: int | None, channels: int,
               av_timeout: float | None) -> _Feed:
    """stdin or any non-seekable byte stream: raw PCM, WAV parsed as it comes, else PyAV on the pipe."""
    r = _Reader(f)
    if raw_format is not None:
        assert rate is not None
        return _Feed(name, rate, _pcm_chunks(r, _Pcm(raw_format, channels), None, name, rate))
    head = r.read_exact(12)
    if not head:
        raise _err(name, "empty", "no input: the stream ended before any byte arrived")
    r.unread(head)
    if (looks_like := audio.not_audio(head)) is not None:
        raise _err(name, "unsupported", f"is not audio: it looks like {looks_like} (for headerless "
                                        "PCM pass --raw-format, --rate and --channels)")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        feed = _wav_pipe(r, name)
        if feed is not None:
            return feed
    return _av_feed(r, name, options=dict(_AV_PROBE), timeout=av_timeout, pipe=True)


def _wav_pipe(r: _Reader, name: str) -> _Feed | None:
    """Parse a WAV header from a pipe and stream its frames; None (bytes pushed back) for non-PCM encodings."""
    r.log = bytearray()
    r.read_exact(12)
    fmt: tuple[int, int, int, int] | None = None
    for _ in range(256):
        hdr = r.read_exact(8)
        if len(hdr) < 8:
            raise _err(name, "truncated", "is truncated: it ends before its audio data starts")
        cid, size = hdr[:4], int.from_bytes(hdr[4:], "little")
        if cid == b"data":
            break
        body = r.read_exact(size + (size & 1))
        if len(body) < size:
            raise _err(name, "truncated", "is truncated: it ends inside its WAV header")
        if cid == b"fmt " and size >= 16:
            tag, channels, rate = int.from_bytes(body[0:2], "little"), int.from_bytes(body[2:4], "little"), \
                int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the tag
                tag = int.from_bytes(body[24:26], "little")
            fmt = (tag, channels, rate, bits)
    else:
        raise _err(name, "unsupported", "looks like WAV but no data chunk was found in its first 256 chunks")
    if fmt is None:
        raise _err(name, "unsupported", "looks like WAV but has no fmt chunk before its data")
    tag, channels, rate, bits = fmt
    if channels == 0:
        raise _err(name, "no_channels", "has no audio channels (its WAV header says 0)")
    if rate <= 0:
        raise _err(name, "unsupported", f"has an invalid sample rate ({rate})")
    pcm = _wav_pcm(tag, bits, channels)
    log, r.log = r.log, None
    if pcm is None:  # a-law, mu-law, ADPCM, ...: let ffmpeg decode it from the start
        r.unread(bytes(log))
        return None
    data = None if size in (0, 0xFFFFFFFF) else size  # 0 / max: length left open by a streaming writer
    return _Feed(name, rate, _pcm_chunks(r, pcm, data, name, rate))


def _import_av(name: str, what: str) -> Any:
    try:
        import av
    except ImportError:
        raise _err(name, "needs_media_extra",
                   f"{what} needs the media extra (PyAV) to decode: {audio.MEDIA_EXTRA}") from None
    return av


def _av_feed(target: Any, name: str, *, options: dict[str, str], timeout: float | None, pipe: bool) -> _Feed:
    av = _import_av(name, "a non-WAV container on a pipe" if pipe else "a URL")
    try:
        c = av.open(target, mode="r", options=options, timeout=timeout, metadata_errors="ignore")
    except Exception as e:
        what = "could not be opened" if not pipe else "is not a stream format the decoder recognises"
        hint = " (for headerless PCM pass --raw-format, --rate and --channels)" if pipe else ""
        raise _err(name, "unsupported" if pipe else "read_error", f"{what}: {type(e).__name__}: {e}{hint}") from None
    try:
        if not c.streams.audio:
            raise _err(name, "unsupported", f"has no audio stream (ffmpeg format {c.format.name})")
        st = c.streams.audio[0]
        rate = int((st.codec_context and st.codec_context.sample_rate) or st.rate or 0)
    except BaseException:
        c.close()
        raise

    def chunks() -> Iterator[np.ndarray]:
        nonlocal rate
        frames = c.decode(st)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except Exception as e:
                raise _err(name, "truncated", f"is truncated or damaged: decoding failed part-way ({e})") from None
            if not frame.samples:
                continue
            y = audio.frame_to_mono(frame)
            if frame.sample_rate and frame.sample_rate != rate:
                y = soxr.resample(y, frame.sample_rate, rate)
            yield y

    if rate <= 0:
        raise _err(name, "unsupported", "has no sample rate in its stream header")
    return _Feed(name, rate, chunks(), c.close)


def _file_feed(path: str, block: float) -> _Feed:
    b = audio.blocks(path, None, block_seconds=block, max_seconds=math.inf)
    return _Feed(path, b.sample_rate, iter(b), b.close)


def _mic_feed(spec: str, rate: int | None, block: float) -> _Feed:
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
        raise _err(spec, "read_error", f"the microphone could not be opened: {type(e).__name__}: {e}") from None

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

    return _Feed(spec, rate, chunks(), close)


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


# ---------------------------------------------------------------------------------------------- the stream


class _Ring:
    """The last `size` samples."""

    def __init__(self, size: int) -> None:
        self.buf = np.zeros(size, dtype=np.float32)
        self.size, self.pos = size, 0

    def write(self, x: np.ndarray) -> None:
        n = len(x)
        if n >= self.size:
            self.buf[:], self.pos = x[-self.size :], 0
            return
        first = min(n, self.size - self.pos)
        self.buf[self.pos : self.pos + first] = x[:first]
        self.buf[: n - first] = x[first:]
        self.pos = (self.pos + n) % self.size

    def latest(self, n: int) -> np.ndarray:
        return self.buf[(self.pos - n + np.arange(n)) % self.size]


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


def stream(
    source: Any,
    *,
    model: Any = "mn04-as",
    window: float = 1.0,
    hop: float = 0.5,
    threshold: float | None = None,
    top_k: int = 3,
    min_duration: float = 0.0,
    realtime: bool = False,
    allow_urls: bool = False,
    max_seconds: float | None = None,
    on_segment: Callable[[dict[str, Any]], None] | None = None,
    raw_format: str | None = None,
    rate: int | None = None,
    channels: int = 1,
    event_starts: bool = True,
    timeout: float | None = 10.0,
) -> Iterator[dict[str, Any]]:
    """Classify `source` continuously; yields JSON-ready records (see the module doc) as audio arrives.

    `model`: a registry name / bundle path, or a loaded Classifier. `window`/`hop`: seconds (the model scores
    the newest window every hop). `threshold`: events' on-threshold for every label (default: the model's).
    `realtime`: pace the input at real time. `allow_urls`: URLs are refused unless set. `max_seconds`: stop
    after this much audio. `on_segment(record)`: called for each segment record. `raw_format`
    (one of RAW_FORMATS) with `rate` and `channels`: headerless PCM. `event_starts`: yield event_start records.
    `timeout`: seconds to wait on a URL (open and each read).

    Bad arguments, a refused URL, a missing microphone package or an unknown model raise here (ValueError,
    AudioError, ModelError); anything that goes wrong with the source once started ends the iteration with an
    error record instead. Ctrl-C ends it cleanly (summary ``stopped: interrupted``).
    """
    if not (window > 0 and hop > 0 and math.isfinite(window) and math.isfinite(hop)):
        raise ValueError(f"window and hop must be positive seconds, got window={window}, hop={hop}")
    if top_k < 0 or min_duration < 0:
        raise ValueError("top_k and min_duration must be >= 0")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
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
    clf = model
    if isinstance(model, str | os.PathLike):
        from earshot.classifier import Classifier

        clf = Classifier.load(model)

    def open_feed() -> _Feed:
        if kind == "pipe":
            f = sys.stdin.buffer if source == "-" else source
            return _pipe_feed(f, name, raw_format, rate, channels, timeout)
        if kind == "url":
            opts = {**_AV_PROBE, "protocol_whitelist": _AV_PROTOCOLS}
            return _av_feed(name, name, options=opts, timeout=timeout, pipe=False)
        if kind == "mic":
            return _mic_feed(name, rate, min(hop, 0.05))
        if raw_format is not None:
            try:
                f = open(name, "rb")  # noqa: SIM115 (closed by the feed)
            except OSError as e:
                raise _err(name, "not_found" if isinstance(e, FileNotFoundError) else "read_error",
                           f"could not be opened: {e.strerror or e}") from None
            feed = _pipe_feed(f, name, raw_format, rate, channels, timeout)
            feed.close = f.close
            return feed
        return _file_feed(name, _PACED_BLOCK if realtime else _FILE_BLOCK)

    options = dict(window=window, hop=hop, threshold=threshold, top_k=top_k, min_duration=min_duration,
                   realtime=realtime and kind != "mic", max_seconds=max_seconds, on_segment=on_segment,
                   event_starts=event_starts)
    return _generate(open_feed, name, clf, **options)


def _generate(open_feed: Callable[[], _Feed], name: str, clf: Any, *, window: float, hop: float,
              threshold: float | None, top_k: int, min_duration: float, realtime: bool, max_seconds: float | None,
              on_segment: Callable[[dict[str, Any]], None] | None, event_starts: bool) -> Iterator[dict[str, Any]]:
    sr = clf.sample_rate
    w, h = max(1, round(window * sr)), max(1, round(hop * sr))
    limit = None if max_seconds is None else max(1, round(max_seconds * sr))
    tracker = EventTracker.for_classifier(clf, threshold, min_duration)
    ring = _Ring(w)
    state = {"total": 0, "next_end": w, "scored_to": 0, "segments": 0, "events": 0}
    clip_max = clip_sum = None
    stopped, error = "eof", None

    def event_record(e: Event, kind: str) -> dict[str, Any]:
        d = {"type": kind, "label": e.label, "label_id": e.label_id, "start": e.start, "end": e.end, "score": e.score}
        if kind == "event_start":
            del d["end"]
        return d

    def score(pending: list[tuple[int, int, np.ndarray]]) -> Iterator[dict[str, Any]]:
        nonlocal clip_max, clip_sum
        if pending:
            rows = clf.run_windows(np.stack([x for _, _, x in pending]))[0]
            for (b, e, _), s in zip(pending, rows):
                clip_max = s if clip_max is None else np.maximum(clip_max, s)
                clip_sum = s.astype(np.float64) if clip_sum is None else clip_sum + s
                idx = np.argsort(-s)[:top_k]
                rec = {"type": "segment", "start": round(b / sr, 3), "end": round(e / sr, 3),
                       "labels": [clf.labels[j] for j in idx], "probabilities": [round(float(s[j]), 4) for j in idx],
                       "labels_info": [clf.label_ids[j] for j in idx]}
                state["segments"] += 1
                state["scored_to"] = e
                if on_segment is not None:
                    on_segment(rec)
                yield rec
                opened, closed = tracker.update(s, b / sr, e / sr)
                if event_starts:
                    yield from (event_record(ev, "event_start") for ev in opened)
                state["events"] += len(closed)
                yield from (event_record(ev, "event") for ev in closed)

    def consume(piece: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """Push samples through the ring; the windows completed on the way (start, end, samples)."""
        ready = []
        while len(piece):
            take = min(len(piece), state["next_end"] - state["total"])
            ring.write(piece[:take])
            state["total"] += take
            piece = piece[take:]
            if state["total"] == state["next_end"]:
                ready.append((state["total"] - w, state["total"], ring.latest(w)))
                state["next_end"] += h
        return ready

    feed: _Feed | None = None
    try:
        feed = open_feed()
        native = feed.rate
        rs = None if native == sr else soxr.ResampleStream(native, sr, 1, dtype="float32")
        chunks = _paced(feed.chunks, native) if realtime else feed.chunks
        done = False
        for chunk in chunks:
            piece = chunk if rs is None else rs.resample_chunk(np.ascontiguousarray(chunk, dtype=np.float32))
            if limit is not None and state["total"] + len(piece) >= limit:
                piece, done, stopped = piece[: limit - state["total"]], True, "max_seconds"
            yield from score(consume(piece))
            if done:
                break
        else:
            if rs is not None:
                piece = rs.resample_chunk(np.zeros(0, np.float32), last=True)
                if limit is not None:
                    piece = piece[: max(0, limit - state["total"])]
                yield from score(consume(piece))
    except KeyboardInterrupt:
        stopped = "interrupted"
    except Exception as e:  # noqa: BLE001 - a failing source ends with an error record, never a traceback
        stopped, error = "error", e
    finally:
        if feed is not None:
            try:
                feed.close()
            except Exception:  # noqa: BLE001
                pass

    total = state["total"]
    if error is None and total > state["scored_to"]:  # the tail (or a whole stream shorter than a window)
        try:
            n = min(total, w)
            tail = ring.latest(n)
            if n < w:
                tail = clf.pad(tail)
            yield from score([(total - n, total, tail)])
        except Exception as e:  # noqa: BLE001
            stopped, error = "error", e
    closed = tracker.flush()
    state["events"] += len(closed)
    yield from (event_record(ev, "event") for ev in closed)

    err = None
    if error is not None:
        err = error.to_dict() if isinstance(error, EarshotError) else {
            "type": type(error).__name__, "reason": "internal", "message": f"{name}: {error}"}
    summary: dict[str, Any] = {"type": "summary", "source": name, "model": getattr(clf, "name", None),
                               "duration": round(total / sr, 3), "segments": state["segments"],
                               "events": state["events"], "labels": [], "probabilities": [], "labels_info": [],
                               "stopped": stopped, "error": err}
    if clip_max is not None:
        clip = clip_max if clf.multi_label else (clip_sum / state["segments"]).astype(np.float32)
        idx = np.argsort(-clip)[:top_k]
        if threshold is not None:
            idx = idx[clip[idx] >= threshold]
        summary.update(labels=[clf.labels[j] for j in idx], probabilities=[round(float(clip[j]), 4) for j in idx],
                       labels_info=[clf.label_ids[j] for j in idx])
    yield summary
    if err is not None:
        yield {"type": "error", "source": name, "at": round(total / sr, 3), "error": err}


# ---------------------------------------------------------------------------------------------- shell


def _text(rec: dict[str, Any]) -> str:
    t = rec["type"]
    if t == "segment":
        tops = ", ".join(f"{lab} {p:.2f}" for lab, p in zip(rec["labels"], rec["probabilities"]))
        return f"{rec['start']:9.2f} {rec['end']:9.2f}  {tops}"
    if t == "event_start":
        return f"{rec['start']:9.2f}      ...  + {rec['label']} ({rec['score']:.2f})"
    if t == "event":
        return f"{rec['start']:9.2f} {rec['end']:9.2f}  = {rec['label']} ({rec['score']:.2f})"
    if t == "error":
        return f"error: {rec['error']['message']}"
    return "summary: " + json.dumps({k: v for k, v in rec.items() if k != "type"}, ensure_ascii=False)


def run(source: Any, *, fmt: str = "jsonl", output: Any = None, **options: Any) -> int:
    """The CLI: one record per line (``fmt`` jsonl, or text for people), flushed as it comes, to `output`
    (a path or a text file object; default stdout). Returns 0, or 1 when the source failed.
    Stops cleanly on EOF, Ctrl-C, ``max_seconds`` or a closed output pipe."""
    if fmt not in ("jsonl", "text"):
        raise ValueError(f"fmt must be jsonl or text, got {fmt!r}")
    own = isinstance(output, str | os.PathLike)
    out = open(output, "w", encoding="utf-8") if own else (output or sys.stdout)  # noqa: SIM115
    status = 0

    def write(rec: dict[str, Any]) -> None:
        nonlocal status
        if rec["type"] == "error":
            status = 1
        out.write((json.dumps(rec, ensure_ascii=False) if fmt == "jsonl" else _text(rec)) + "\n")
        out.flush()

    try:
        try:
            records = stream(source, **options)
        except (EarshotError, ValueError, TypeError) as e:
            err = e.to_dict() if isinstance(e, EarshotError) else {"type": type(e).__name__, "reason": "usage",
                                                                     "message": str(e)}
            write({"type": "error", "source": str(source), "at": 0.0, "error": err})
            return 1
        it = iter(records)
        while True:
            try:
                for rec in it:
                    write(rec)
                break
            except KeyboardInterrupt:  # in our own writing: let the stream finish with its summary
                if getattr(it, "gi_frame", None) is None:
                    break
                try:
                    write(it.throw(KeyboardInterrupt()))
                except StopIteration:
                    break
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return status
    finally:
        if own:
            out.close()
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earshot stream", description="Classify a live stream continuously "
                                "(one JSON record per line).")
    p.add_argument("source", help="'-' (stdin), a file, an http(s)/rtsp/rtmp URL (with --allow-url), 'mic' or "
                                  "'mic:N'")
    p.add_argument("--model", "-m", default="mn04-as", help="registry name or bundle directory")
    p.add_argument("--window", type=float, default=1.0, help="seconds per analysis window (default 1.0)")
    p.add_argument("--hop", type=float, default=0.5, help="seconds between windows (default 0.5)")
    p.add_argument("--threshold", type=float, default=None, help="event threshold for every label")
    p.add_argument("--top-k", "-k", type=int, default=3, help="labels per segment (default 3)")
    p.add_argument("--min-duration", type=float, default=0.0, help="shortest event reported, seconds")
    p.add_argument("--realtime", action="store_true", help="pace a file at real time (simulate a live feed)")
    p.add_argument("--allow-url", action="store_true", help="allow fetching SOURCE when it is a URL")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this much audio")
    p.add_argument("--raw-format", choices=RAW_FORMATS, default=None, help="headerless PCM on the input")
    p.add_argument("--rate", type=int, default=None, help="sample rate of raw PCM (or the microphone)")
    p.add_argument("--channels", type=int, default=1, help="channels of raw PCM (default 1)")
    p.add_argument("--no-event-start", action="store_true", help="do not print event_start records")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait on a URL")
    p.add_argument("--format", "-f", dest="fmt", choices=("jsonl", "text"), default="jsonl")
    p.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return run(a.source, fmt=a.fmt, output=a.output, model=a.model, window=a.window, hop=a.hop,
               threshold=a.threshold, top_k=a.top_k, min_duration=a.min_duration, realtime=a.realtime,
               allow_urls=a.allow_url, max_seconds=a.max_seconds, raw_format=a.raw_format, rate=a.rate,
               channels=a.channels, event_starts=not a.no_event_start, timeout=a.timeout)


if __name__ == "__main__":
    sys.exit(main())
