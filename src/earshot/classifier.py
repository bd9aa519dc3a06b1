"""`Classifier`: a bundle on onnxruntime — clip prediction, sliding-window timelines with events, embeddings.

This is the only place where audio meets the model; every shell (CLI, server, watcher, batch, stream) calls it.
It never imports torch. The clip-length policy is `earshot.clips`, the scores → labels policy `earshot.ranking`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import platform
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnxruntime as ort

from earshot import audio, clips, cores, limits, ranking
from earshot.bundle import Bundle, read_bundle
from earshot.errors import AudioError, ModelError
from earshot.events import EventTracker
from earshot.prediction import Prediction, Segment

Source = str | os.PathLike | bytes | BinaryIO
NATIVE_RATES_ENV = "EARSHOT_NATIVE_RATES"

def optimized_graph_path(model_path: os.PathLike) -> Path | None:
    """Where onnxruntime's optimised form of a bundle's graph is kept on this machine: under
    `$EARSHOT_HOME/graphs`, keyed by the graph file (path, size, mtime), the onnxruntime version and the CPU, since
    the optimised graph may use kernels of this processor. None where the graph cannot be found."""
    from earshot.models.weights import earshot_home

    try:
        st = os.stat(model_path)
    except OSError:
        return None
    key = "|".join([os.path.abspath(model_path), str(st.st_size), str(st.st_mtime_ns), ort.__version__,
                    platform.machine(), _cpu_flags()])
    return earshot_home() / "graphs" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor()


def source_title(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return getattr(source, "name", None) or "<bytes>"


class Classifier:
    """Runs a model bundle. Thread-safe: one onnxruntime session serves concurrent calls."""

    BATCH_SECONDS = 8  # audio per model call when many windows are scored

    def __init__(self, bundle: Bundle, *, threads: int | None = None, providers: list[str] | None = None,
                 native_rates: bool | None = None) -> None:
        self.bundle = bundle
        # onnxruntime execution providers in order of preference; the optimised-graph cache is for the CPU only
        self.providers: list[str] = list(providers or ["CPUExecutionProvider"])
        card = bundle.card
        if card.get("input", "waveform") != "waveform":
            raise ModelError(
                f"a head-only bundle: its model.onnx scores {card.get('input')} [batch, frames, dim], not audio, "
                f"so it cannot decode audio; score packed embedding files with "
                f"`earshot predict --model {bundle.path} FILE.h5`", source=str(bundle.path), reason="head_only")
        self.card: dict[str, Any] = card
        self.name: str = card["name"]
        self.labels: list[str] = list(card["labels"])
        self.label_ids: list[str | None] = list(card.get("label_ids") or [None] * len(self.labels))
        self.sample_rate: int = int(card["sample_rate"])
        self.window_seconds: float = float(card["window_seconds"])
        self.min_seconds: float = float(card.get("min_seconds", clips.DEFAULT_MIN_SECONDS))
        self.multi_label: bool = bool(card["multi_label"])
        self.thresholds = ranking.card_thresholds(card)
        # Inputs at a rate the bundle has a graph for are decoded at that rate and scored by that graph, skipping
        # the resampling (see `earshot.bundle`); off with native_rates=False or EARSHOT_NATIVE_RATES=0.
        if native_rates is None:
            native_rates = os.environ.get(NATIVE_RATES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        self.graphs: dict[int, Path] = {self.sample_rate: bundle.model_path}
        if native_rates:
            self.graphs.update({r: g for r, g in bundle.rate_graphs.items() if self.sample_rate % r == 0})
        self._lock, self._st_lock = threading.Lock(), threading.Lock()
        self._sessions: dict[tuple[int, int], ort.InferenceSession] = {}  # (rate, threads) → session, made on use
        self._single = False  # set on single_threaded() views
        self._inflight = 0
        self._masks: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray | None] = {}
        self.cores = cores.usable()  # counted once: the window pool and predict_many size themselves on it
        self.threads: int = threads or self.cores

    @property
    def session(self) -> ort.InferenceSession:
        """The session of the model-rate graph with this classifier's threads."""
        return self._session_at(self.sample_rate, self.threads)

    def warm(self) -> Classifier:
        """Create the sessions now rather than on first use (a server, before its first request)."""
        for rate in self.graphs:
            self._session_at(rate, self.threads)
        return self

    def _session_at(self, rate: int, threads: int) -> ort.InferenceSession:
        key = (rate, threads)
        session = self._sessions.get(key)
        if session is None:
            with self._st_lock:
                session = self._sessions.get(key)
                if session is None:
                    session = self._sessions[key] = self._session(self.graphs[rate], threads)
        return session

    def _session(self, graph: Path, threads: int) -> ort.InferenceSession:
        def options(level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = level
            # Idle pool threads must not spin: other sessions' calls and decoding share the same cores.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return opts

        providers = self.providers
        cached = optimized_graph_path(graph) if providers == ["CPUExecutionProvider"] else None
        if cached is not None and cached.is_file():
            try:  # optimised once on this machine: loading it skips the graph optimisation at every start
                return ort.InferenceSession(str(cached), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                                            providers=providers)
            except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt below
                cached.unlink(missing_ok=True)
        opts = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        tmp = None
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
                opts.optimized_model_filepath = str(tmp)
                opts.log_severity_level = 3  # the "hardware-specific graph" notice is why the key names the CPU
            except OSError:
                tmp = None
        try:
            session = ort.InferenceSession(str(graph), opts, providers=providers)
        except Exception as e:  # a damaged or foreign graph file: a typed error naming it
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise ModelError(f"onnxruntime cannot load this graph: {e}", source=str(graph),
                             reason="bad_graph") from e
        if tmp is not None and cached is not None:
            with contextlib.suppress(OSError):
                os.replace(tmp, cached)
        return session

    @classmethod
    def load(cls, model: str | os.PathLike = "mn04-as", **options: Any) -> Classifier:
        from earshot.models import resolve

        return cls(read_bundle(resolve(model)), **options)

    def __repr__(self) -> str:
        return f"Classifier({self.name!r}, {len(self.labels)} labels, {self.sample_rate} Hz)"

    def single_threaded(self) -> Classifier:
        """A view of this classifier (same bundle, same sessions) whose model calls each run on one intra-op
        thread: for callers that make model calls from several threads at once (pipeline workers), where a
        session using every core would oversubscribe the CPU."""
        view = copy.copy(self)
        view._single = True
        return view

    def run(self, waveforms: np.ndarray, outputs: tuple[str, ...] = ("scores",), *,
            rate: int | None = None) -> list[np.ndarray]:
        """Raw model outputs for a batch of equal-length waveforms [batch, samples] at the model rate (or at
        `rate`, one of `graphs`)."""
        return self._call(waveforms, outputs, rate or self.sample_rate, single=self._single)

    def _call(self, waveforms: np.ndarray, outputs: tuple[str, ...], rate: int, single: bool = False):
        x = np.ascontiguousarray(waveforms, dtype=np.float32)
        if single:
            return self._single_thread_session(rate).run(list(outputs), {"waveform": x})
        # Concurrent callers (server pool, watch workers) each get a single-threaded call: a session that uses
        # every core, called from several threads at once, oversubscribes the CPU.
        with self._lock:
            self._inflight += 1
            busy = self._inflight > 1
        try:
            chosen = self._single_thread_session(rate) if busy else self._session_at(rate, self.threads)
            return chosen.run(list(outputs), {"waveform": x})
        finally:
            with self._lock:
                self._inflight -= 1

    def pad(self, y: np.ndarray, *, rate: int | None = None) -> np.ndarray:
        """`y` (at the model rate, or `rate`) followed by silence up to the card's `min_seconds` (the short-clip
        rule of `earshot.clips`)."""
        step = self.sample_rate // (rate or self.sample_rate)
        return clips.pad_to(y, -(-self._min_samples // step))

    def input_rate(self, native: int, *lengths: int) -> int:
        """The rate at which to score audio that arrives at `native` Hz: `native` itself where the bundle has a
        graph for it (and native rates are on) and each of `lengths` (window sizes in model-rate samples) is a
        whole number of its samples; else the model's rate, the audio being resampled to it."""
        sr = self.sample_rate
        if native != sr and native in self.graphs and all(n % (sr // native) == 0 for n in lengths):
            return native
        return sr

    def _native_rates(self, *lengths: int) -> list[int]:
        """The rates below the model's at which `input_rate` keeps an input (for `audio.blocks`)."""
        return [r for r in self.graphs if r != self.sample_rate and self.input_rate(r, *lengths) == r]

    def run_windows(self, frames: np.ndarray, outputs: tuple[str, ...] = ("scores",), *,
                    stop: Callable[[], None] | None = None, rate: int | None = None) -> list[np.ndarray]:
        """Outputs for many equal-length windows: batches of up to 8 s of audio (8 one-second windows, one
        ten-second window) spread over the cores, one single-threaded session call per batch (on 2 cores 2x
        faster than one call with intra-op threads); the batch bound keeps the model's working memory small. `stop`
        (`earshot.limits.stopper`) is called before each batch and raises to abandon the rest. `rate`: as in `run`."""
        rate = rate or self.sample_rate
        per = max(1, min(8, self.BATCH_SECONDS * rate // max(1, frames.shape[1])))
        chunks = [frames[i : i + per] for i in range(0, len(frames), per)]
        workers = min(len(chunks), self.cores)
        if workers > 1:

            def batch(c: np.ndarray) -> list[np.ndarray]:
                if stop is not None:
                    stop()
                return self._call(c, outputs, rate, single=True)

            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(batch, chunks))
        else:
            parts = []
            for c in chunks:
                if stop is not None:
                    stop()
                parts.append(self.run(c, outputs, rate=rate))
        return [np.concatenate([p[k] for p in parts]) for k in range(len(outputs))]

    def clip_inputs(self, y: np.ndarray) -> np.ndarray:
        """The model inputs [n, samples] of a decoded clip (at the model rate) under the clip-length policy
        (`earshot.clips`) with this card's window and `min_seconds`."""
        return clips.clip_frames(y, self.sample_rate, self.window_seconds, self.min_seconds)

    def _clip_rows(self, y: np.ndarray, output: str) -> np.ndarray:
        """One output row per model input of a decoded clip under the clip-length policy (`earshot.clips`)."""
        frames = self.clip_inputs(y)
        return self.run(frames, (output,))[0] if len(frames) == 1 else self.run_windows(frames, (output,))[0]

    def clip_scores(self, y: np.ndarray) -> np.ndarray:
        """Scores [classes] for one decoded clip: max over windows (multi-label) or mean (single-label)."""
        return clips.aggregate(self._clip_rows(y, "scores"), self.multi_label)

    def decode(self, source: Source, title: str | None = None) -> np.ndarray:
        return audio.decode(source, self.sample_rate, name=title)

    def predict(
        self,
        source: Source,
        *,
        top_k: int = 5,
        timeline: bool = False,
        window: float | None = None,
        hop: float | None = None,
        threshold: float | None = None,
        title: str | None = None,
        links: bool = False,
        classes: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        max_seconds: float | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Prediction:
        """Top labels for one input (raises AudioError on bad input). With `timeline`, adds segments and events.

        `links` adds each label's `links`, `descriptions` and `parents` (`earshot.ontology.annotate`).
        `classes` / `exclude` keep / drop whole ontology subtrees, named by class name or id (label names for
        models without ontology ids), in clip labels, segments and events alike: see `class_mask`.

        `max_seconds` bounds the input's length (AudioError too_long; None: EARSHOT_MAX_SECONDS). The work stops
        between model batches, raising `earshot.limits.Cancelled`, once `time.monotonic()` passes `deadline` or
        `cancel` is set. Timeline parameters are checked by `earshot.limits` (LimitError, a ValueError).
        """
        title = title or source_title(source)
        if timeline:
            return self.timeline(source, window=window or 1.0, hop=hop, threshold=threshold, top_k=top_k, title=title,
                                 links=links, classes=classes, exclude=exclude, max_seconds=max_seconds,
                                 deadline=deadline, cancel=cancel)
        allowed = self.class_mask(classes, exclude)
        scores, total = self._clip_reduce(source, title, "scores", max_seconds=max_seconds,
                                          stop=limits.stopper(deadline, cancel))
        return self._prediction(title, scores, total / self.sample_rate, top_k, threshold, allowed, links)

    def class_mask(self, classes: Iterable[str] | None = None,
                   exclude: Iterable[str] | None = None) -> np.ndarray | None:
        """The labels a class filter keeps, one bool per label (None without a filter), as
        `earshot.ontology.label_mask` builds it. Raises LabelError, with close names as suggestions, for a value
        that names neither an ontology class nor a label of this model. Cached per filter."""
        key = tuple((v,) if isinstance(v, str) else tuple(v or ()) for v in (classes, exclude))
        if key == ((), ()):
            return None
        if key not in self._masks:
            from earshot.ontology import label_mask

            if len(self._masks) >= 256:
                self._masks.clear()
            self._masks[key] = label_mask(self.labels, self.label_ids, key[0], key[1], model=self.name)
        return self._masks[key]

    def predict_many(
        self,
        sources: Iterable[Source],
        *,
        top_k: int = 5,
        timeline: bool = False,
        window: float | None = None,
        hop: float | None = None,
        threshold: float | None = None,
        workers: int | None = None,
        links: bool = False,
        classes: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions in input order; a bad input yields its failure object instead of raising.

        Inputs are decoded and classified on `workers` threads (default: one per core), each model call on a
        single-threaded session: for one clip at a time that beats both batching and intra-op threads on CPU.
        """
        classes = (classes,) if isinstance(classes, str) else tuple(classes or ())
        exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
        self.class_mask(classes, exclude)  # an unknown class fails the call, not every input
        workers = workers or self.cores
        if isinstance(sources, Sized):  # one input needs no pool, nor a second session
            workers = max(1, min(workers, len(sources)))
        clf = self.single_threaded() if workers > 1 else self

        def one(s: Source) -> Prediction:
            try:
                return clf.predict(s, top_k=top_k, timeline=timeline, window=window, hop=hop, threshold=threshold,
                                   links=links, classes=classes, exclude=exclude)
            except Exception as e:  # noqa: BLE001 - every input ends with a result or an error record
                return Prediction.failure(source_title(s), e, self.name)

        it = iter(sources)
        with ThreadPoolExecutor(workers) as pool:
            pending: deque[Future] = deque(pool.submit(one, s) for s in islice(it, 2 * workers))
            while pending:
                result = pending.popleft().result()
                for s in islice(it, 1):
                    pending.append(pool.submit(one, s))
                yield result

    def _single_thread_session(self, rate: int | None = None) -> ort.InferenceSession:
        """A session with one intra-op thread, shared by every view: the main one when it has a single thread,
        else a second one created once."""
        return self._session_at(rate or self.sample_rate, 1)

    def timeline(
        self,
        source: Source,
        *,
        window: float = 1.0,
        hop: float | None = None,
        threshold: float | None = None,
        top_k: int = 3,
        min_duration: float = 0.0,
        title: str | None = None,
        links: bool = False,
        classes: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        max_seconds: float | None = None,
        max_segments: int = limits.MAX_SEGMENTS,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Prediction:
        """Sliding-window analysis streamed block by block: per-window top labels, merged events, clip labels.
        `links`, `classes`, `exclude`, `max_seconds`, `deadline` and `cancel` as in `predict`.

        `window` and `hop` (default window/2) must be within `earshot.limits` bounds, and the input may make at
        most `max_segments` windows (refused from its header when it tells the length, else once passed):
        LimitError otherwise, before the memory or the time is spent."""
        title = title or source_title(source)
        window, hop = limits.check_timeline(window, hop or None)
        labels_per_segment = max(1, min(top_k, len(self.labels)))
        allowed = self.class_mask(classes, exclude)
        sr = self.sample_rate
        w, h = int(round(window * sr)), max(1, int(round(hop * sr)))
        # a clip shorter than one window is one frame of its own length; the last frame is what follows the
        # last full window
        windows = clips.Windows(w, h, one_pass=w - 1, tail="rest", min_samples=self._min_samples)
        starts, rows = [], []
        for s, r in self._scan(source, title, windows, "scores", limits.timeline_block_seconds(window, hop),
                               max_seconds=max_seconds, stop=limits.stopper(deadline, cancel),
                               segments=lambda n: limits.check_segments(n, labels_per_segment, max_segments)):
            starts.append(s)
            rows.append(r)
        total = windows.total
        scores = np.concatenate(rows)
        begin = np.concatenate(starts).astype(np.float64) / sr
        end = np.minimum(begin + window, total / sr)
        pred = self._prediction(title, clips.aggregate(scores, self.multi_label), total / sr, top_k, threshold,
                                allowed, links)
        pred.segments = []
        for b, e, s in zip(begin, end, scores):
            labels, probs, _ = ranking.ranked(s, self.labels, self.label_ids, top_k, allowed=allowed)
            pred.segments.append(Segment(round(float(b), 3), round(float(e), 3), labels, probs))
        tracker = EventTracker.for_classifier(self, threshold, min_duration, allowed)
        pred.events = tracker.events(scores, begin, end)
        return pred

    def embed(self, source: Source, title: str | None = None) -> np.ndarray:
        """The clip embedding (mean over windows for audio longer than 1.5 windows), streamed."""
        return self._clip_reduce(source, title or source_title(source), "embedding", mean=True)[0]

    def embed_waveform(self, y: np.ndarray) -> np.ndarray:
        """`embed` for a clip already decoded at the model's rate."""
        return self._clip_rows(y, "embedding").mean(axis=0)

    def embed_windows(self, source: Source, *, window: float = 1.0, hop: float | None = None,
                      title: str | None = None, max_seconds: float | None = None, deadline: float | None = None,
                      cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-window embeddings of an input, streamed like `timeline`: (starts in seconds [n], embeddings
        [n, dim]). A clip shorter than one window is one row of its own length (padded to `min_seconds`).

        Bounded like `timeline` (`earshot.limits`): window, hop and the number of windows are checked (LimitError)
        and at most `limits.FRAME_BUDGET_S` seconds of windows are held at once; `max_seconds` refuses longer
        inputs; past `deadline` (`time.monotonic()`) or once `cancel` is set the scan stops with `Cancelled`."""
        title = title or source_title(source)
        window, hop = limits.check_timeline(window, hop or window)
        max_seconds = limits.check_max_seconds(max_seconds)
        sr = self.sample_rate
        w, h = int(round(window * sr)), max(1, int(round(hop * sr)))
        windows = clips.Windows(w, h, one_pass=w - 1, tail="end", min_samples=self._min_samples)
        starts, rows = [], []
        for s, r in self._scan(source, title, windows, "embedding", limits.timeline_block_seconds(window, hop),
                               max_seconds=max_seconds, stop=limits.stopper(deadline, cancel),
                               segments=limits.check_segments):
            starts.append(s)
            rows.append(r)
        return np.concatenate(starts).astype(np.float64) / sr, np.concatenate(rows)

    def logmel(self, source: Source, title: str | None = None, max_seconds: float = 60.0) -> np.ndarray:
        """The model's own input features [mels, frames] for the first `max_seconds` (for display)."""
        with audio.blocks(source, self.sample_rate, max_seconds, name=title or source_title(source),
                          native_rates=self._native_rates()) as blocks:  # as `predict` reads it: same graph
            y, rate = next(blocks, None), blocks.sample_rate
        if y is None or not len(y):
            raise AudioError("no samples after decoding", source=title or source_title(source), reason="no_samples")
        return self.run(self.pad(y, rate=rate)[None], ("logmel",), rate=rate)[0][0]

    @property
    def _min_samples(self) -> int:
        return int(round(self.min_seconds * self.sample_rate))

    def _scan(self, source: Source, title: str, windows: clips.Windows, output: str, block_seconds: float, *,
              max_seconds: float | None = None, stop: Callable[[], None] | None = None,
              segments: Callable[[int], object] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(starts, output rows) for the windows of an input decoded block by block: memory stays bounded by
        a block and a batch of windows, whatever the input's length. `max_seconds` bounds the input's length,
        `stop` is called between batches and raises to abandon the scan, `segments` is given the number of
        windows the header promises, then the running count, and raises to refuse the input."""
        sr = self.sample_rate
        seconds_per_window, seconds_per_hop = windows.window / sr, windows.hop / sr
        native = self._native_rates(windows.window, windows.hop)
        with audio.blocks(source, sr, block_seconds=block_seconds, max_seconds=max_seconds, name=title,
                          native_rates=native) as blocks:
            rate = blocks.sample_rate
            if rate != sr:  # the input's own rate, scored by the bundle's graph for it
                windows.at_lower_rate(sr // rate)
            if segments is not None and blocks.info.frames:
                seconds = blocks.info.frames / blocks.info.sample_rate
                segments(limits.timeline_segments(seconds, seconds_per_window, seconds_per_hop))
            made = 0
            for block in blocks:
                if stop is not None:
                    stop()
                got = windows.push(block)
                if got is not None:
                    made += len(got[0])
                    if segments is not None:
                        segments(made)
                    yield got[0], self.run_windows(got[1], (output,), stop=stop, rate=rate)[0]
        if windows.total == 0:
            raise AudioError("no samples after decoding", source=title, reason="no_samples")
        got = windows.finish()
        if got is not None:
            yield got[0], self.run(got[1], (output,), rate=rate)[0]

    def _clip_reduce(self, source: Source, title: str, output: str, mean: bool = False, *,
                     max_seconds: float | None = None,
                     stop: Callable[[], None] | None = None) -> tuple[np.ndarray, int]:
        """The clip-level output of a streamed input under `earshot.clips` (max or mean over its windows,
        `mean` forcing the mean), and its length in samples."""
        win = int(round(self.window_seconds * self.sample_rate))
        windows = clips.Windows(win, win // 2, one_pass=int(clips.ONE_PASS * win), tail="end",
                                min_samples=self._min_samples)
        use_max = self.multi_label and not mean
        acc: np.ndarray | None = None
        n = 0
        for _, rows in self._scan(source, title, windows, output, 4 * self.window_seconds, max_seconds=max_seconds,
                                  stop=stop):
            part = rows.max(axis=0) if use_max else rows.sum(axis=0, dtype=np.float64)
            acc = part if acc is None else (np.maximum(acc, part) if use_max else acc + part)
            n += len(rows)
        assert acc is not None
        return (acc if use_max else (acc / n).astype(np.float32)), windows.total

    def _prediction(self, title: str, scores: np.ndarray, duration: float, top_k: int, threshold: float | None,
                    allowed: np.ndarray | None = None, links: bool = False) -> Prediction:
        if threshold is None:  # a multi-label card's tuned thresholds, else plain top-k
            threshold = ranking.label_thresholds(self.card)
        labels, probs, ids = ranking.ranked(scores, self.labels, self.label_ids, top_k, threshold, allowed)
        pred = Prediction(title=title, labels=labels, probabilities=probs, labels_info=ids, model=self.name,
                          duration=round(duration, 3))
        if links:
            from earshot.ontology import annotate

            annotate(pred)
        return pred


