"""The labelled items of a data set (`Item`, `Manifest`) and the fold names every layout shares.

A `Manifest` is what `earshot.training.loading.load_manifest` reads from any supported layout and what
`earshot.training.splits` divides into train and validation. No torch here: stdlib and numpy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earshot.errors import DataError

VALIDATION_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("testing", "test", "eval")
SPLIT_NAMES = frozenset({"train", "training", *VALIDATION_NAMES, *TEST_NAMES})


@dataclass
class Item:
    """One labelled clip: a file on disk, or in-memory encoded audio (`data`) for Hugging Face datasets.

    `labels` holds every label of a multi-label clip (a CSV ``labels`` column of ``;``-separated labels);
    `label` is then the first of them. For a single-label clip `labels` is ``(label,)``. Setting `label` again
    (``--label-regex``, keyword models) makes the clip single-label: ``labels == (label,)``.
    """

    path: Path
    label: str
    fold: str | None = None
    group: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.labels and self.label:
            self.labels = (self.label,)
        elif self.labels and not self.label:
            self.label = self.labels[0]

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "label":
            object.__setattr__(self, "labels", (value,) if value else ())

    @property
    def source(self) -> Path | bytes:
        """What to hand to the decoder: the encoded bytes when the item carries them, else the path."""
        return self.data if self.data is not None else self.path

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.name


@dataclass
class Manifest:
    """The labelled items of a data set, what was skipped and why, and the layout's split conventions.

    `fold_kind` is ``"cv"`` when folds are numbered cross-validation folds (ESC-50, UrbanSound8K, a CSV `fold`
    column), ``"split"`` when they are named train/validation/test splits, ``None`` when there are none.
    `val_fold` / `test_fold` are the layout's official validation / held-out test folds, if it has them.
    """

    items: list[Item]
    skipped: list[dict[str, str]] = field(default_factory=list)
    layout: str = "unknown"
    root: Path | None = None
    fold_kind: str | None = None
    val_fold: str | None = None
    test_fold: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    @property
    def labels(self) -> list[str]:
        """Sorted distinct labels (of every clip's `labels`): the class order of a model trained on this manifest."""
        return sorted({lab for it in self.items for lab in it.labels})

    @property
    def multi_label(self) -> bool:
        """Whether clips carry several labels: the layout says so (a CSV ``labels`` column) or a clip has two."""
        return bool(self.options.get("multi_label")) or any(len(it.labels) > 1 for it in self.items)

    def multi_hot(self, labels: Sequence[str] | None = None) -> np.ndarray:
        """[n, classes] bool: each item's labels, in `labels` order (default: `self.labels`)."""
        order = list(labels if labels is not None else self.labels)
        index = {lab: i for i, lab in enumerate(order)}
        y = np.zeros((len(self.items), len(order)), dtype=bool)
        for r, it in enumerate(self.items):
            for lab in it.labels:
                if lab not in index:
                    raise DataError(f"label {lab!r} is not one of the model's labels", reason="unknown_label")
                y[r, index[lab]] = True
        return y

    @property
    def folds(self) -> list[str]:
        """Sorted distinct folds (numerically when they are all numbers)."""
        return sort_folds({it.fold for it in self.items if it.fold is not None})

    def targets(self, labels: Sequence[str] | None = None) -> np.ndarray:
        """Class index of every item, in `labels` order (default: `self.labels`)."""
        index = {lab: i for i, lab in enumerate(labels if labels is not None else self.labels)}
        try:
            return np.array([index[it.label] for it in self.items], dtype=np.int64)
        except KeyError as e:
            raise DataError(
                f"label {e.args[0]!r} is not one of the model's labels", reason="unknown_label"
            ) from e

    def group_keys(self) -> list[str]:
        """The leakage unit of every item: its group, or the item itself when it has none."""
        return [f"g:{it.group}" if it.group is not None else f"i:{i}" for i, it in enumerate(self.items)]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(lab for it in self.items for lab in it.labels)
        return {lab: counts[lab] for lab in sorted(counts)}

    def skip(self, item: Item | int, reason: str) -> None:
        """Drop an item (e.g. audio that turned out unreadable) and record why. Do this before splitting:
        split indices refer to positions in `items`."""
        if isinstance(item, int):
            item = self.items[item]
        for i, it in enumerate(self.items):
            if it is item:
                del self.items[i]
                break
        else:
            raise ValueError(f"{item.path} is not in this manifest")
        self.skipped.append({"path": str(item.path), "reason": reason})

    def subset(self, indices: Iterable[int]) -> Manifest:
        """A manifest of the items at `indices` (same layout metadata, no skipped entries)."""
        return Manifest(
            items=[self.items[int(i)] for i in indices],
            layout=self.layout,
            root=self.root,
            fold_kind=self.fold_kind,
            val_fold=self.val_fold,
            test_fold=self.test_fold,
            options=dict(self.options),
        )

    def holdout_indices(self) -> np.ndarray:
        """Items of the official test fold: never used for training or validation by `split`/`cv_folds`."""
        if self.test_fold is None:
            return np.zeros(0, dtype=np.int64)
        return np.array([i for i, it in enumerate(self.items) if it.fold == self.test_fold], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for the model card's `data` field."""
        folds = Counter(it.fold for it in self.items if it.fold is not None)
        reasons = Counter(s["reason"] for s in self.skipped)
        return {
            "layout": self.layout,
            "root": str(self.root) if self.root is not None else None,
            "n": len(self.items),
            "n_classes": len(self.labels),
            "classes": self.class_counts(),
            "folds": {f: folds[f] for f in sort_folds(folds)} or None,
            "fold_kind": self.fold_kind,
            "val_fold": self.val_fold,
            "test_fold": self.test_fold,
            "n_groups": len({it.group for it in self.items if it.group is not None}),
            "in_memory": sum(it.data is not None for it in self.items),
            "skipped": len(self.skipped),
            "skipped_reasons": dict(sorted(reasons.items())),
            "skipped_examples": self.skipped[:10],
            **{k: v for k, v in self.options.items() if v},
        }


def canonical_split(name: str) -> str:
    """The fold name of a named split: ``train``, ``validation``, ``test`` / ``testing``; other names as given."""
    low = name.lower()
    if low in ("train", "training"):
        return "train"
    if low in VALIDATION_NAMES:
        return "validation"
    if low in TEST_NAMES:
        return "test" if low != "testing" else "testing"
    return name


def sort_folds(folds: Iterable[str]) -> list[str]:
    """Folds in order: numerically when they are all numbers, else by name."""
    folds = list(folds)
    if all(f.isdigit() for f in folds):
        return sorted(folds, key=int)
    return sorted(folds)
