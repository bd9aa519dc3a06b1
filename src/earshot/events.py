"""Event merging shared by timelines and live streams: per-label spans from consecutive window scores."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from earshot.prediction import Event


class EventTracker:
    """Incremental event merging, the rule of ``Classifier.timeline``: a label's event starts at a window scoring
    at least its threshold, stays on while windows score at least half of it, and is kept when it lasts
    ``min_duration`` (first window start to last window end). The score is the peak. For a single-label model
    only each window's winner counts. With ``allowed`` (a class mask, one bool per label) labels it leaves out
    never open an event, and a single-label window's winner is chosen among the labels it keeps. ``background``
    labels (a keyword model's ``_silence_`` / ``_unknown_``: the card's ``background_labels``) compete for the
    window but never open an event: a window they win is a window with no event.

    Feed windows in order with :meth:`update`; :meth:`flush` closes what is still on at the end.
    """

    def __init__(
        self,
        labels: list[str],
        label_ids: list[str | None],
        thresholds: Iterable[float] | np.ndarray,
        *,
        multi_label: bool = True,
        min_duration: float = 0.0,
        allowed: np.ndarray | None = None,
        background: Iterable[str] = (),
    ) -> None:
        self.labels, self.label_ids = list(labels), list(label_ids)
        self.allowed = None if allowed is None else np.asarray(allowed, dtype=bool)
        self.on = np.asarray(thresholds, dtype=np.float32)
        self.on = np.where(np.isin(self.labels, list(background)), np.float32(np.inf), self.on)
        if self.allowed is not None:
            self.on = np.where(self.allowed, self.on, np.float32(np.inf))
        self.off = self.on * 0.5
        self.multi_label, self.min_duration = multi_label, min_duration
        n = len(self.labels)
        self.active = np.zeros(n, dtype=bool)
        self.announced = np.zeros(n, dtype=bool)
        self.first = np.zeros(n, dtype=np.float64)
        self.last = np.zeros(n, dtype=np.float64)
        self.peak = np.zeros(n, dtype=np.float32)

    @classmethod
    def for_classifier(cls, clf: Any, threshold: float | None = None, min_duration: float = 0.0,
                       allowed: np.ndarray | None = None) -> EventTracker:
        on = clf.thresholds if threshold is None else np.full(len(clf.labels), threshold, dtype=np.float32)
        background = (getattr(clf, "card", None) or {}).get("background_labels") or ()
        return cls(clf.labels, clf.label_ids, on, multi_label=clf.multi_label, min_duration=min_duration,
                   allowed=allowed, background=background)

    def update(self, scores: np.ndarray, start: float, end: float) -> tuple[list[Event], list[Event]]:
        """One window's scores → (events that just became reportable, events that just closed)."""
        s = np.asarray(scores, dtype=np.float32)
        if self.allowed is not None:
            s = np.where(self.allowed, s, np.float32(-np.inf))
        if not self.multi_label:
            s = np.where(np.arange(len(s)) == s.argmax(), s, np.float32(0.0))
        stays = self.active & (s >= self.off)
        closed = self._close(np.nonzero(self.active & ~stays)[0])
        new = ~self.active & (s >= self.on)
        self.first[new], self.peak[new], self.announced[new] = start, s[new], False
        self.active = stays | new
        self.peak[stays] = np.maximum(self.peak[stays], s[stays])
        self.last[self.active] = end
        ready = self.active & ~self.announced & (self.last - self.first >= self.min_duration)
        self.announced |= ready
        opened = [self._event(j, self.last[j]) for j in np.nonzero(ready)[0]]
        return sorted(opened, key=lambda e: (e.start, -e.score)), closed

    def flush(self) -> list[Event]:
        """Close every event still on (end of stream)."""
        closed = self._close(np.nonzero(self.active)[0])
        self.active[:] = False
        return closed

    def events(self, scores: np.ndarray, begin: Iterable[float], end: Iterable[float]) -> list[Event]:
        """All events of a whole timeline at once (the `events` of ``Classifier.timeline``)."""
        out: list[Event] = []
        for row, b, e in zip(scores, begin, end):
            out += self.update(row, float(b), float(e))[1]
        out += self.flush()
        return sorted(out, key=lambda e: (e.start, -e.score))

    def _close(self, idx: np.ndarray) -> list[Event]:
        keep = [j for j in idx if self.last[j] - self.first[j] >= self.min_duration]
        self.active[idx] = False
        return sorted((self._event(j, self.last[j]) for j in keep), key=lambda e: (e.start, -e.score))

    def _event(self, j: int, end: float) -> Event:
        return Event(self.labels[j], self.label_ids[j], round(float(self.first[j]), 3), round(float(end), 3),
                     round(float(self.peak[j]), 4))
