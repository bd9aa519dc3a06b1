"""Live streams into the server: the bridge between one WebSocket (event loop) and the classifying thread.

The WebSocket route (`earshot.serve.routers.stream`) reads binary frames of raw PCM; `Bridge.push` decodes them
to mono float32 (`earshot.audio.pcm`) and queues them for a thread that runs `earshot.stream.classify_feed`, the
same code as `earshot stream`, so a stream into the server yields exactly the CLI's records. Records come back to
the loop through `Bridge.records`. With `format=file` the frames are the bytes of an audio file instead (WAV, FLAC,
MP3, Ogg, ...: anything `earshot stream -` reads from a pipe); the thread decodes them as they come, so a long
compressed recording needs no decoding on the client and no memory beyond the backlog on either side.

Nothing here can grow without bound or hang:

- audio queued but not yet scored is at most `backlog_s` seconds (`FILE_BACKLOG_BYTES` of a file's bytes); past
  it the route stops reading the socket
  (`Bridge.wait_for_room`), so a client sending faster than real time (a long file) is held back by TCP instead
  of filling memory;
- records not yet sent are at most `max_pending` (a client that stops reading is a slow consumer: its stream
  ends with an `error` record and a close);
- samples that cannot be audio (f32 NaN, infinities, magnitudes past `MAX_ABS_SAMPLE`) end the stream with an
  `error` record, as a corrupt source does in the CLI.

`Streams` is the admission limit: at most `max_streams` streams are open at once; beyond it a new stream is
refused (an `error` record, reason ``overloaded``, and close code 1013) before any model work.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from earshot.audio import live, pcm
from earshot.errors import AudioError
from earshot.serve.inference import Limiter

MAX_ABS_SAMPLE = 1e4  # float PCM past this magnitude is not audio (full scale is 1.0)
FILE_FORMAT = "file"  # the frames are an audio file's bytes, decoded by the server as they come
FILE_BACKLOG_BYTES = 8 << 20  # a file's bytes queued, not yet decoded, past which the socket is not read
STREAM_FORMATS = (*pcm.RAW_FORMATS, FILE_FORMAT)  # the `format` values /v1/stream takes

# WebSocket close codes (RFC 6455 section 7.4.1)
CLOSE_NORMAL = 1000
CLOSE_INVALID = 1007  # payload that is not audio / not a message we know
CLOSE_POLICY = 1008  # no valid API key, bad parameters, slow consumer, idle
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013  # overloaded


class Streams(Limiter):
    """Admission of streams (`try_acquire` / `release`, on the event loop): at most `limit` open at once, each
    with a thread of its own from `pool` (mostly waiting for audio; model calls are short and onnxruntime releases
    the GIL)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.pool = ThreadPoolExecutor(max_workers=max(1, limit), thread_name_prefix="earshot-stream")

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Bridge:
    """One stream's audio in and records out. `push`/`end`/`fail` and `records` are called on the event loop,
    `feed` is read by the classifying thread. `fmt` None: the frames are a file's bytes (`FILE_FORMAT`)."""

    def __init__(self, name: str, fmt: pcm.PcmFormat | None, rate: int | None, *, backlog_s: float = 30.0,
                 max_pending: int = 1000) -> None:
        self.name, self.fmt, self.rate = name, fmt, rate
        self.loop = asyncio.get_running_loop()
        self._audio: queue.Queue[np.ndarray | bytes | BaseException | None] = queue.Queue()
        self._lock = threading.Lock()
        self._backlog = 0  # samples (a file's bytes) queued, not yet taken by the thread
        self._max_backlog = FILE_BACKLOG_BYTES if fmt is None or rate is None else max(1, int(backlog_s * rate))
        self._room = asyncio.Event()
        self._room.set()
        self._rest = b""  # bytes of a frame split across messages
        self._ended = False
        self._stop = threading.Event()  # the thread stops reading audio (slow consumer, server shutting down)
        self._out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.max_pending = max_pending
        self.slow = False  # records piled up past max_pending: the client is not reading
        self.gone = False  # the client closed or dropped the socket
        self.last: dict[str, Any] | None = None  # the last record sent
        self.received = 0  # samples received (per channel); a file's bytes

    # the event loop's side

    def push(self, data: bytes) -> None:
        """Queue a binary frame's PCM (a frame may end mid-sample: the rest waits for the next one)."""
        if self._ended:
            return
        if self.fmt is None:  # a file's bytes: decoded by the thread
            if data:
                self._queue(data, len(data))
            return
        data = self._rest + data
        whole = len(data) - len(data) % self.fmt.frame_bytes
        self._rest = data[whole:]
        if not whole:
            return
        y = self.fmt.decode(data[:whole])
        if self.fmt.fmt in ("f32le", "f64le"):
            peak = float(np.max(np.abs(y))) if len(y) else 0.0
            if not np.isfinite(peak) or peak > MAX_ABS_SAMPLE:
                self.fail(AudioError(f"sent samples that are not audio ({self.fmt.fmt} value {peak:g}; full "
                                     "scale is 1.0): is the format right?", source=self.name, reason="bad_samples"))
                return
        self._queue(y, len(y))

    def _queue(self, item: np.ndarray | bytes, n: int) -> None:
        self.received += n
        with self._lock:
            self._backlog += n
            if self._backlog > self._max_backlog:
                self._room.clear()
        self._audio.put(item)

    def seconds(self) -> float:
        """Audio received so far, in seconds: from the PCM's rate, or for a file the end of the last record."""
        if self.fmt is not None and self.rate:
            return self.received / self.rate
        return float((self.last or {}).get("end") or (self.last or {}).get("at") or 0.0)

    def end(self) -> None:
        """No more audio: the thread scores what is queued, then finishes with the summary."""
        if not self._ended:
            self._ended = True
            self._audio.put(None)

    def fail(self, error: BaseException) -> None:
        """End the audio with an error: the records end with the summary (stopped: error) and an error record."""
        if not self._ended:
            self._ended = True
            self._audio.put(error)

    def stop(self) -> None:
        """Stop at once (the client is gone or not reading): the thread drops queued audio and finishes."""
        self._stop.set()
        self.end()
        self._room.set()

    @property
    def ended(self) -> bool:
        return self._ended

    async def wait_for_room(self) -> None:
        """Return once the audio queued for the thread is under the backlog bound."""
        await self._room.wait()

    def deliver(self, record: dict[str, Any] | None) -> None:
        """A record from the thread (None: no more). Past `max_pending` unsent records the client is slow."""
        if record is not None and self._out.qsize() >= self.max_pending:
            if not self.slow:
                self.slow = True
                self.stop()
            return
        self._out.put_nowait(record)

    async def records(self) -> AsyncIterator[dict[str, Any]]:
        """The records, as the thread makes them, until the last."""
        while True:
            record = await self._out.get()
            if record is None:
                return
            yield record

    # the classifying thread's side

    def feed(self) -> live.Feed:
        """The audio for `classify_feed`: the PCM as it was decoded, or the file's bytes opened as a pipe is
        (`earshot.audio.live`: WAV parsed as it comes, anything else through PyAV)."""
        if self.fmt is None:
            return live.LiveSource(_FileBytes(self._chunks()), "pipe", self.name, timeout=None).open()
        assert self.rate is not None
        return live.Feed(self.name, self.rate, self._chunks())  # type: ignore[arg-type]

    def _chunks(self) -> Iterator[np.ndarray | bytes]:
        while not self._stop.is_set():
            item = self._audio.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            with self._lock:
                self._backlog -= len(item)
                if self._backlog <= self._max_backlog // 2 and not self._room.is_set():
                    self.loop.call_soon_threadsafe(self._room.set)
            yield item


class _FileBytes:
    """A file's bytes as they arrive, read like a pipe (`read` returns what is there, b"" at the end); an error
    the bridge was given (idle, frame too large) is raised by the read that reaches it, and the decoder passes it
    on as it is."""

    def __init__(self, pieces: Iterator[np.ndarray | bytes]) -> None:
        self._pieces = pieces
        self._rest = b""

    def read(self, n: int = -1) -> bytes:
        while not self._rest:  # an empty frame is not the end
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._rest = bytes(piece)
        if n < 0:
            n = len(self._rest)
        out, self._rest = self._rest[:n], self._rest[n:]
        return out

    read1 = read

    def readable(self) -> bool:
        return True
