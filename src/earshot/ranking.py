"""Scores → labels, defined once: the top-k labels of a score vector, optionally only those at or above a
threshold, and the default per-class thresholds of a model card. Used by clip predictions, timeline segments,
stream records and summaries. A class mask (`allowed`, one bool per label, from `earshot.ontology.label_mask`)
is applied to labels here and to events by `earshot.events.EventTracker`: a label it leaves out is never
reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_THRESHOLD_MULTI = 0.3
DEFAULT_THRESHOLD_SINGLE = 0.5


def card_thresholds(card: dict[str, Any]) -> np.ndarray:
    """Per-class thresholds from `card["thresholds"]`, else the family default for every class."""
    n = len(card["labels"])
    given = card.get("thresholds")
    default = DEFAULT_THRESHOLD_MULTI if card.get("multi_label") else DEFAULT_THRESHOLD_SINGLE
    return np.asarray(given if given else [default] * n, dtype=np.float32)


def label_thresholds(card: dict[str, Any]) -> np.ndarray | None:
    """The per-class thresholds clip labels must reach when no threshold is asked for: those a multi-label card
    states (tuned on validation, e.g. by `earshot train` on multi-label data); None otherwise (plain top-k)."""
    if card.get("multi_label") and card.get("thresholds"):
        return card_thresholds(card)
    return None


def top(scores: np.ndarray, top_k: int, threshold: float | np.ndarray | None = None,
        allowed: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `top_k` best scores, best first; with `threshold` (one value, or one per class), only
    those scoring at least it; with `allowed`, only labels it marks True."""
    if allowed is None:
        idx = np.argsort(-scores, kind="stable")[: max(0, top_k)]
    else:
        keep = np.flatnonzero(allowed)
        idx = keep[np.argsort(-scores[keep], kind="stable")][: max(0, top_k)]
    if threshold is not None:
        idx = idx[scores[idx] >= (threshold[idx] if np.ndim(threshold) else threshold)]
    return idx


def ranked(scores: np.ndarray, labels: Sequence[str], label_ids: Sequence[str | None], top_k: int,
           threshold: float | np.ndarray | None = None,
           allowed: np.ndarray | None = None) -> tuple[list[str], list[float], list[str | None]]:
    """(labels, probabilities rounded to 4 places, label ids) of the top labels: the JSON contract's triple."""
    idx = top(scores, top_k, threshold, allowed)
    return ([labels[i] for i in idx], [round(float(scores[i]), 4) for i in idx], [label_ids[i] for i in idx])
