"""Bounds on what one call may ask of earshot, defined once, and the checks that enforce them.

Every knob a caller sets (window, hop, top_k, threshold, segments per timeline, audio seconds) has its bounds
here, so the library (`Classifier.timeline`), the HTTP server (422 answers) and the CLI refuse the same values
with the same message. Each check returns the value it accepted, or raises `LimitError` (a `ValueError` and an
`EarshotError`) whose message states the bound and whose `param` / `bound` name it.

Together with an upload cap, the bounds keep one call's memory bounded by design: a timeline never holds more
than `MAX_SEGMENTS` rows of scores nor `MAX_SEGMENT_LABELS` labels, and the audio it windows at once is at most
`FRAME_BUDGET_S` seconds (`timeline_block_seconds`).

Cooperative cancellation lives here too: `stopper(deadline, cancel)` is the check a long call makes between
model batches; it raises `Cancelled` once a `time.monotonic()` deadline has passed or a `threading.Event` is set.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable

from earshot.errors import EarshotError

MIN_WINDOW_S = 0.1  # shortest timeline window
MAX_WINDOW_S = 60.0  # longest timeline window
MIN_HOP_S = 0.01  # shortest hop between timeline windows
MAX_HOP_S = 60.0  # longest hop
MAX_OVERLAP = 100  # at most this many windows cover one instant: hop >= window / MAX_OVERLAP
MAX_SEGMENTS = 100_000  # windows (segments) of one timeline: ~211 MB of scores for a 527-class model
MAX_SEGMENT_LABELS = 1_000_000  # segments x top_k of one timeline (the size of its JSON)
FRAME_BUDGET_S = 64.0  # audio held as windows at once while a timeline is scanned
DEFAULT_TIMELINE_BLOCK_S = 30.0  # decoding block of a timeline when the budget allows
MIN_PCM_RATE = 1000  # slowest sample rate of raw PCM sent to a stream
MAX_PCM_RATE = 384_000  # fastest
MAX_PCM_CHANNELS = 32  # channels of raw PCM (interleaved, averaged to mono)


class LimitError(EarshotError, ValueError):
    """A parameter outside its bounds; `param` names it, `bound` is the limit it passed (a number, or a
    (low, high) pair), and the message states it."""

    def __init__(self, param: str, bound: float | tuple[float, float], message: str) -> None:
        super().__init__(message, reason="out_of_bounds")
        self.param, self.bound = param, bound

    def to_dict(self) -> dict:
        return {**super().to_dict(), "param": self.param}


class Cancelled(EarshotError):
    """Work stopped before its end: `reason` is "deadline" (its deadline passed) or "cancelled" (its caller
    gave up, e.g. an HTTP client that disconnected)."""


def _number(param: str, value: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise LimitError(param, math.nan, f"{param} must be a number, got {value!r}") from None
    if math.isnan(x):
        raise LimitError(param, math.nan, f"{param} must be a number, got {value!r}")
    return x


def check_window(window: float) -> float:
    """A timeline window in seconds, between `MIN_WINDOW_S` and `MAX_WINDOW_S`."""
    w = _number("window", window)
    if not MIN_WINDOW_S <= w <= MAX_WINDOW_S:
        raise LimitError(
            "window", (MIN_WINDOW_S, MAX_WINDOW_S), f"window must be between {MIN_WINDOW_S:g} and {MAX_WINDOW_S:g} s"
        )
    return w


def min_hop(window: float) -> float:
    """The shortest hop allowed for `window`: `MIN_HOP_S`, or `window / MAX_OVERLAP` when that is longer."""
    return max(MIN_HOP_S, window / MAX_OVERLAP)


def check_hop(hop: float | None, window: float) -> float:
    """A timeline hop in seconds for `window` (None: half the window): at least `min_hop(window)` (0.01 s, and
    window/100 so that at most 100 windows cover one instant), at most `MAX_HOP_S`."""
    if hop is None:
        return window / 2
    h, low = _number("hop", hop), min_hop(window)
    if h < low:
        if low > MIN_HOP_S:
            msg = f"hop must be at least {low:g} s for a {window:g} s window (window/{MAX_OVERLAP})"
        else:
            msg = f"hop must be at least {MIN_HOP_S:g} s"
        raise LimitError("hop", low, msg)
    if h > MAX_HOP_S:
        raise LimitError("hop", MAX_HOP_S, f"hop must be at most {MAX_HOP_S:g} s")
    return h


def check_top_k(top_k: int, bound: int) -> int:
    """A number of labels to report, between 1 and `bound` (the model's number of labels, or a server's cap)."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise LimitError("top_k", (1, bound), f"top_k must be an integer between 1 and {bound}, got {top_k!r}")
    if not 1 <= top_k <= bound:
        raise LimitError("top_k", (1, bound), f"top_k must be between 1 and {bound}")
    return int(top_k)


def check_threshold(threshold: float | None) -> float | None:
    """A score threshold between 0 and 1 (None: the model's defaults)."""
    if threshold is None:
        return None
    t = _number("threshold", threshold)
    if not 0.0 <= t <= 1.0:
        raise LimitError("threshold", (0.0, 1.0), "threshold must be between 0 and 1")
    return t


def check_pcm(rate: int, channels: int) -> tuple[int, int]:
    """Raw PCM's sample rate (`MIN_PCM_RATE` to `MAX_PCM_RATE` Hz) and channels (1 to `MAX_PCM_CHANNELS`)."""
    for param, value, low, high in (("rate", rate, MIN_PCM_RATE, MAX_PCM_RATE),
                                    ("channels", channels, 1, MAX_PCM_CHANNELS)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
            raise LimitError(param, (low, high), f"{param} must be an integer between {low} and {high}, "
                             f"got {value!r}")
    return int(rate), int(channels)


def check_max_seconds(max_seconds: float | None) -> float | None:
    """An audio-length bound in seconds (None or math.inf: none); it must be positive."""
    if max_seconds is None or max_seconds == math.inf:
        return max_seconds
    s = _number("max_seconds", max_seconds)
    if s <= 0:
        raise LimitError("max_seconds", 0.0, "max_seconds must be positive (math.inf for no bound)")
    return s


def timeline_segments(duration: float, window: float, hop: float) -> int:
    """The number of segments (windows) of a timeline over `duration` seconds: one for audio no longer than a
    window, else one per hop until the last window reaches the end (about duration / hop)."""
    if duration <= window:
        return 1
    return math.ceil((duration - window) / hop - 1e-9) + 1


def check_segments(segments: int, top_k: int = 1, max_segments: int = MAX_SEGMENTS) -> int:
    """A timeline's number of segments: at most `max_segments`, and at most `MAX_SEGMENT_LABELS` segment labels
    (segments x top_k)."""
    if segments > max_segments:
        raise LimitError(
            "hop",
            max_segments,
            f"a timeline may have at most {max_segments} segments (duration/hop), this one {segments}; "
            "raise hop or shorten the audio",
        )
    if segments * top_k > MAX_SEGMENT_LABELS:
        raise LimitError(
            "top_k",
            MAX_SEGMENT_LABELS,
            f"a timeline may have at most {MAX_SEGMENT_LABELS} segment labels (segments x top_k), this one "
            f"{segments} x {top_k}; lower top_k, raise hop or shorten the audio",
        )
    return segments


def check_timeline(
    window: float,
    hop: float | None = None,
    top_k: int = 1,
    duration: float | None = None,
    max_segments: int = MAX_SEGMENTS,
) -> tuple[float, float]:
    """(window, hop) of a timeline once both are within bounds, and, when `duration` (seconds) is known, its
    segments too (`check_segments`). The whole check a caller can make before decoding anything."""
    window = check_window(window)
    hop = check_hop(hop, window)
    if duration is not None:
        check_segments(timeline_segments(duration, window, hop), top_k, max_segments)
    return window, hop


def timeline_block_seconds(window: float, hop: float) -> float:
    """The decoding block of a timeline: 30 s (or 4 windows) unless the windows one block yields would hold more
    than `FRAME_BUDGET_S` seconds of audio at once; then fewer hops per block, at least one."""
    per_block = max(1, int(FRAME_BUDGET_S // window))
    return min(max(DEFAULT_TIMELINE_BLOCK_S, 4 * window), hop * per_block)


def stopper(deadline: float | None = None, cancel: threading.Event | None = None) -> Callable[[], None] | None:
    """The check a long call makes between model batches: raises `Cancelled` once `time.monotonic()` passes
    `deadline` or `cancel` is set. None when there is nothing to check."""
    if deadline is None and cancel is None:
        return None

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped: its caller cancelled it", reason="cancelled")
        if deadline is not None and time.monotonic() >= deadline:
            raise Cancelled("stopped: its deadline passed", reason="deadline")

    return check
