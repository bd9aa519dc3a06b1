"""Leakage-free splits of a `Manifest`: `split` (train/validation) and `cv_folds` (cross-validation).

Official folds are used where the layout has them (a validation fold; numbered cross-validation folds);
otherwise whole groups (speaker, source recording) are assigned to sides, stratified by label, so a group never
straddles train and validation. Items of the test fold (the layout's official one, or the one `hold_out` names)
are left out of both. Deterministic for a given seed. No torch here: numpy only.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from earshot.errors import DataError
from earshot.training.manifest import Manifest, canonical_split


def split(
    manifest: Manifest,
    *,
    val_fold: str | int | None = None,
    val_split: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) into `manifest.items`, with no group on both sides.

    - `val_fold`: the items of that official fold are validation, the rest train.
    - `val_split`: a fraction, stratified by label and group-aware (whole groups go to one side).
    - neither: the layout's official validation fold if it has one, else ``val_split=0.2``.
    Items of the layout's official test fold (`Manifest.test_fold`) are left out of both sides unless that
    fold is asked for as `val_fold`. Deterministic for a given `seed`.
    """
    if val_fold is not None and val_split is not None:
        raise DataError(
            "give either a validation fold or a validation fraction, not both", reason="bad_split"
        )
    _check_classes(manifest)
    if val_fold is None and val_split is None:
        if manifest.val_fold is not None:
            val_fold = manifest.val_fold
        else:
            val_split = 0.2
    if val_fold is not None:
        return _fold_split(manifest, str(val_fold))

    assert val_split is not None
    if not 0.0 < float(val_split) < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {val_split}", reason="bad_split")
    pool = _pool(manifest)
    _check_groups(manifest, pool, need=2)
    assign = _assign_groups(manifest, pool, [1.0 - float(val_split), float(val_split)], seed)
    return pool[assign == 0], pool[assign == 1]


def hold_out(manifest: Manifest, fold: str | int, val_fold: str | int | None = None) -> None:
    """Make `fold` the manifest's test fold: its items are then left out of training and validation alike (by
    `split` and `cv_folds`), to be scored once on the exported bundle (the card's ``metrics.test``). Named
    splits (``test``, ``eval``) match as validation folds do; the validation fold must be another one."""
    name = _known_fold(manifest, str(fold), "test")
    if val_fold is not None and _known_fold(manifest, str(val_fold), "validation") == name:
        raise DataError(f"fold {name!r} cannot be both the validation and the test fold", reason="bad_split")
    manifest.test_fold = name


def cv_folds(
    manifest: Manifest, k: int | None = None, seed: int = 0, *, use_folds: bool | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, validation) index pairs; every usable item is validated exactly once; no group straddles.

    Official cross-validation folds (ESC-50, UrbanSound8K, a CSV `fold` column) are used when `use_folds` is
    True, or when it is None and `k` is None or equals their number. Otherwise `k` stratified group-aware
    folds are drawn (deterministic for `seed`). Items of the official test fold are left out.
    """
    _check_classes(manifest)
    official = [f for f in manifest.folds if f != manifest.test_fold] if manifest.fold_kind == "cv" else []
    if use_folds is None:
        use_folds = bool(official) and (k is None or k == len(official))
    if use_folds:
        if len(official) < 2:
            raise DataError(
                "cross-validation over official folds needs a layout with at least 2 numbered folds",
                reason="bad_split",
            )
        return [_fold_split(manifest, f) for f in official]
    if k is None or k < 2:
        raise DataError(f"cross-validation needs k >= 2 folds (got {k})", reason="bad_split")
    pool = _pool(manifest)
    _check_groups(manifest, pool, need=2)
    all_keys = manifest.group_keys()
    n_groups = len({all_keys[i] for i in pool})
    if n_groups < k:
        raise DataError(
            f"{k}-fold cross-validation needs at least {k} groups; there are {n_groups}",
            reason="too_few_groups",
        )
    assign = _assign_groups(manifest, pool, [1.0 / k] * k, seed)
    return [(pool[assign != f], pool[assign == f]) for f in range(k)]


def _pool(manifest: Manifest) -> np.ndarray:
    held = set(manifest.holdout_indices().tolist())
    return np.array([i for i in range(len(manifest.items)) if i not in held], dtype=np.int64)


def _check_classes(manifest: Manifest) -> None:
    if not manifest.items:
        raise DataError("the data set is empty", reason="empty")
    if len(manifest.labels) < 2:
        raise DataError(
            f"only one class ({manifest.labels[0]!r}); a classifier needs at least 2", reason="one_class"
        )


def _check_groups(manifest: Manifest, pool: np.ndarray, need: int) -> None:
    keys = manifest.group_keys()
    items_per: dict[str, int] = Counter()
    groups_per: dict[str, set[str]] = {}
    for i in pool:
        lab = manifest.items[i].label
        items_per[lab] += 1
        groups_per.setdefault(lab, set()).add(keys[i])
    for lab in sorted(items_per):
        if items_per[lab] < need:
            raise DataError(
                f"class {lab!r} has only {items_per[lab]} item(s); at least {need} are needed to "
                f"split it into train and validation",
                reason="too_few_items",
            )
        if len(groups_per[lab]) < need:
            grp = next(iter(groups_per[lab]))[2:]
            raise DataError(
                f"all {items_per[lab]} items of class {lab!r} are in one group ({grp!r}), so a "
                "group-aware split cannot put it on both sides; add data, leave the class out with "
                "--filter, or change --group-regex",
                reason="too_few_groups",
            )


def _known_fold(manifest: Manifest, fold: str, role: str) -> str:
    """`fold` as the manifest names it (``val`` / ``dev`` / ``test`` match named splits), else `DataError`."""
    folds = manifest.folds
    if not folds:
        raise DataError(f"{role} fold {fold!r} asked for, but the {manifest.layout} layout has no folds",
                        reason="no_folds")
    if fold not in folds and canonical_split(fold) in folds:
        fold = canonical_split(fold)
    if fold not in folds:
        raise DataError(f"no fold {fold!r}; folds are {folds}", reason="unknown_fold")
    return fold


def _fold_split(manifest: Manifest, fold: str) -> tuple[np.ndarray, np.ndarray]:
    fold = _known_fold(manifest, fold, "validation")
    held = manifest.test_fold if fold != manifest.test_fold else None
    val = np.array([i for i, it in enumerate(manifest.items) if it.fold == fold], dtype=np.int64)
    train = np.array(
        [i for i, it in enumerate(manifest.items) if it.fold != fold and (held is None or it.fold != held)],
        dtype=np.int64,
    )
    if len(train) == 0:
        raise DataError(f"nothing left to train on with validation fold {fold!r}", reason="bad_split")
    train_labels = {manifest.items[i].label for i in train}
    absent = sorted({manifest.items[i].label for i in val} - train_labels)
    if absent:
        raise DataError(
            f"class(es) {absent} occur only in validation fold {fold!r}, never in training",
            reason="class_only_in_validation",
        )
    train_groups = {manifest.items[i].group for i in train} - {None}
    leaked = sorted({manifest.items[i].group for i in val} & train_groups)
    if leaked:
        raise DataError(
            f"{len(leaked)} group(s) (e.g. {leaked[0]!r}) are in validation fold {fold!r} and in "
            f"training; the official folds contradict the grouping",
            reason="group_leak",
        )
    return train, val


def _assign_groups(manifest: Manifest, pool: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """Part `pool` into len(fractions) sides by whole groups, stratified by label; returns the side per item.

    Greedy (as in scikit-learn's StratifiedGroupKFold, generalised to unequal sides): groups in random order,
    largest first, each to the side that keeps the per-class fill (count / target) most even across sides;
    ties go to the least-filled side. A repair pass then puts every class on every side that needs it.
    """
    labels = manifest.labels
    y = manifest.targets(labels)[pool]
    all_keys = manifest.group_keys()
    keys = [all_keys[i] for i in pool]
    uniq, g_of = np.unique(np.array(keys, dtype=object), return_inverse=True)
    n_groups, n_classes, n_sides = len(uniq), len(labels), len(fractions)
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(counts, (g_of, y), 1)
    sizes = counts.sum(1)
    frac = np.asarray(fractions, dtype=np.float64)
    targets = frac[:, None] * counts.sum(0)[None, :]  # sides x classes
    targets = np.maximum(targets, 1e-9)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]
    fill = np.zeros((n_sides, n_classes), dtype=np.float64)
    side_of_group = np.full(n_groups, -1, dtype=np.int64)
    total_target = frac * len(pool)
    for g in order:
        cols = np.flatnonzero(counts[g])
        best, best_key = 0, None
        for s in range(n_sides):
            cand = fill[:, cols].copy()
            cand[s] += counts[g, cols]
            spread = float(np.mean(np.std(cand / targets[:, cols], axis=0)))
            load = (fill[s].sum() + sizes[g]) / total_target[s]
            key = (round(spread, 12), load)
            if best_key is None or key < best_key:
                best, best_key = s, key
        side_of_group[g] = best
        fill[best] += counts[g]

    _repair(side_of_group, counts, n_sides)
    return side_of_group[g_of]


def _repair(side_of_group: np.ndarray, counts: np.ndarray, n_sides: int) -> None:
    """Make each class (with >= 2 groups) present where it must be: with 2 sides on both of them; with k
    cross-validation folds never all in one fold (so every training part sees it)."""
    for c in range(counts.shape[1]):
        groups = np.flatnonzero(counts[:, c])
        if len(groups) < 2:
            continue
        for _ in range(len(groups)):
            per_side = np.array([counts[groups[side_of_group[groups] == s], c].sum() for s in range(n_sides)])
            if n_sides == 2:
                empty = np.flatnonzero(per_side == 0)
                if len(empty) == 0:
                    break
                dst = int(empty[0])
            else:
                if np.count_nonzero(per_side) >= 2:
                    break
                dst = int(np.argmin(per_side))
            # move the smallest group of this class from the fullest side
            src = int(np.argmax(per_side))
            movable = groups[side_of_group[groups] == src]
            smallest = movable[np.argmin(counts[movable].sum(1))]
            side_of_group[smallest] = dst
