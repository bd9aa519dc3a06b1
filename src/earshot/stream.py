"""`earshot stream SOURCE`: a live stream classified continuously, one JSON record per line as audio arrives.

Sources (read by :mod:`earshot.audio.live`): ``-`` (stdin: a WAV is parsed header-first and streamed, other
containers go through PyAV on the pipe, headerless PCM with ``raw_format``/``rate``/``channels``), a binary file
object, a file path (``realtime=True`` paces it at real time, simulating a live feed), an http/https/rtsp/rtmp URL
(PyAV; only with ``allow_urls``), ``mic`` / ``mic:N`` (the ``sounddevice`` package).

Nothing is decoded ahead: chunks are resampled as they arrive (``soxr.ResampleStream``) into a ring buffer of
one window (or kept at their own rate where the bundle has a graph for it: ``Classifier.input_rate``), and
the model scores the newest window every hop, so a record follows the audio by about one hop.
Records (JSON-ready dicts):

- ``{"type": "segment", "start", "end", "labels", "probabilities", "labels_info"}`` per window;
- ``{"type": "event_start", "label", "label_id", "start", "score"}`` once an event is on and has lasted
  ``min_duration`` (every event_start is later followed by its event);
- ``{"type": "event", "label", "label_id", "start", "end", "score"}`` when an event closes;
- ``{"type": "summary", "source", "model", "duration", "segments", "events", "event_counts", "labels",
  "probabilities", "labels_info", "stopped", "error"}`` at the end (``stopped``: eof, max_seconds, interrupted or
  error; ``event_counts``: how many events each label had, most first: the commands or alarms heard);
- ``{"type": "error", "source", "at", "error": {"type", "reason", "message"}}`` last, when the source failed
  part-way (a truncated or undecodable stream, a dropped connection): never a traceback.

Events follow the rule of :meth:`Classifier.timeline` (see :class:`EventTracker`); labels are ranked by
:func:`earshot.ranking.ranked`. Times are audio seconds from the start of the stream. The command line is
``earshot stream`` (:mod:`earshot.cli`). No torch here.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import soxr

from earshot import ranking
from earshot.audio import live
from earshot.audio.live import RAW_FORMATS, URL_SCHEMES
from earshot.errors import EarshotError
from earshot.events import EventTracker
from earshot.prediction import Event

__all__ = ["EventTracker", "RAW_FORMATS", "URL_SCHEMES", "classify_feed", "run", "stream"]


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
    classes: list[str] | None = None,
    exclude: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Classify `source` continuously; yields JSON-ready records (see the module doc) as audio arrives.

    `model`: a registry name / bundle path, or a loaded Classifier. `window`/`hop`: seconds (the model scores
    the newest window every hop). `threshold`: events' on-threshold for every label (default: the model's).
    `realtime`: pace the input at real time. `allow_urls`: URLs are refused unless set. `max_seconds`: stop
    after this much audio. `on_segment(record)`: called for each segment record. `raw_format`
    (one of RAW_FORMATS) with `rate` and `channels`: headerless PCM. `event_starts`: yield event_start records.
    `timeout`: seconds to wait on a URL (open and each read). `classes` / `exclude`: keep or drop whole ontology
    subtrees (or label names) in segments, events and the summary (`Classifier.class_mask`).

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
    src = live.resolve(source, realtime=realtime, allow_urls=allow_urls, raw_format=raw_format, rate=rate,
                       channels=channels, timeout=timeout)
    clf = model
    if isinstance(model, str | os.PathLike):
        from earshot.classifier import Classifier

        clf = Classifier.load(model)
    allowed = clf.class_mask(classes, exclude) if hasattr(clf, "class_mask") else None
    return classify_feed(lambda: src.open(mic_block=min(hop, 0.05)), src.name, clf, window=window, hop=hop,
                         threshold=threshold, top_k=top_k, min_duration=min_duration, max_seconds=max_seconds,
                         on_segment=on_segment, event_starts=event_starts, allowed=allowed)


def classify_feed(open_feed: Callable[[], live.Feed], name: str, clf: Any, *, window: float = 1.0,
                  hop: float = 0.5, threshold: float | None = None, top_k: int = 3, min_duration: float = 0.0,
                  max_seconds: float | None = None, on_segment: Callable[[dict[str, Any]], None] | None = None,
                  event_starts: bool = True, allowed: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
    """The records of an opened feed (`open_feed()` is called when iteration starts) classified by the loaded
    classifier `clf`: what :func:`stream` yields, for callers that bring their own source of chunks (the
    server's WebSocket). Arguments are :func:`stream`'s, already checked; `allowed`: `clf.class_mask(...)`.
    A chunk iterator that raises ends the records with an error record, as a failing source does."""
    sr = clf.sample_rate
    w, h = max(1, round(window * sr)), max(1, round(hop * sr))
    limit = None if max_seconds is None else max(1, round(max_seconds * sr))
    tracker = EventTracker.for_classifier(clf, threshold, min_duration, allowed)
    ring = _Ring(w)
    state = {"total": 0, "next_end": w, "scored_to": 0, "segments": 0}
    heard: Counter[str] = Counter()  # events closed, by label
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
            rows = clf.run_windows(np.stack([x for _, _, x in pending]), rate=sr)[0]
            for (b, e, _), s in zip(pending, rows):
                clip_max = s if clip_max is None else np.maximum(clip_max, s)
                clip_sum = s.astype(np.float64) if clip_sum is None else clip_sum + s
                labels, probabilities, ids = ranking.ranked(s, clf.labels, clf.label_ids, top_k, allowed=allowed)
                rec = {"type": "segment", "start": round(b / sr, 3), "end": round(e / sr, 3), "labels": labels,
                       "probabilities": probabilities, "labels_info": ids}
                state["segments"] += 1
                state["scored_to"] = e
                if on_segment is not None:
                    on_segment(rec)
                yield rec
                opened, closed = tracker.update(s, b / sr, e / sr)
                if event_starts:
                    yield from (event_record(ev, "event_start") for ev in opened)
                heard.update(ev.label for ev in closed)
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

    feed: live.Feed | None = None
    try:
        feed = open_feed()
        native = feed.rate
        if clf.input_rate(native, w, h) != sr:  # a rate the bundle has a graph for: no resampling
            step, sr = sr // native, native
            w, h = w // step, h // step
            limit = None if max_seconds is None else max(1, round(max_seconds * sr))
            ring, state["next_end"] = _Ring(w), w
        rs = None if native == sr else soxr.ResampleStream(native, sr, 1, dtype="float32")
        done = False
        for chunk in feed.chunks:
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
                tail = clf.pad(tail, rate=sr)
            yield from score([(total - n, total, tail)])
        except Exception as e:  # noqa: BLE001
            stopped, error = "error", e
    closed = tracker.flush()
    heard.update(ev.label for ev in closed)
    yield from (event_record(ev, "event") for ev in closed)

    err = None
    if error is not None:
        err = error.to_dict() if isinstance(error, EarshotError) else {
            "type": type(error).__name__, "reason": "internal", "message": f"{name}: {error}"}
    summary: dict[str, Any] = {"type": "summary", "source": name, "model": getattr(clf, "name", None),
                               "duration": round(total / sr, 3), "segments": state["segments"],
                               "events": heard.total(), "event_counts": dict(heard.most_common()), "labels": [],
                               "probabilities": [], "labels_info": [], "stopped": stopped, "error": err}
    if clip_max is not None:
        clip = clip_max if clf.multi_label else (clip_sum / state["segments"]).astype(np.float32)
        labels, probabilities, ids = ranking.ranked(clip, clf.labels, clf.label_ids, top_k, threshold, allowed=allowed)
        summary.update(labels=labels, probabilities=probabilities, labels_info=ids)
    yield summary
    if err is not None:
        yield {"type": "error", "source": name, "at": round(total / sr, 3), "error": err}


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
