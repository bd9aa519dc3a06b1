"""Leakage-free splits on the real shared data sets: stratified group splits, official folds and cross-validation
folds never put one speaker or source recording on both sides."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from shareddata import ESC50, SPEECH, check_partition, groups_of

from earshot.errors import DataError
from earshot.training import Manifest, cv_folds, load_manifest, split


@pytest.mark.parametrize("name", ["fsdd", "us8k"])
def test_no_leakage_in_any_split_mode(name: str, request: pytest.FixtureRequest):
    m: Manifest = request.getfixturevalue(name)
    y = m.targets()
    per_class = np.bincount(y)
    seen_val = set()
    # whole groups move, so the achievable precision is about half the largest group's share
    tol = 0.06 + max(Counter(m.group_keys()).values()) / len(m) / 2
    for fraction in (0.2, 0.3):
        for seed in range(5):
            train, val = split(m, val_split=fraction, seed=seed)
            check_partition(m, train, val)
            share = np.bincount(y[val], minlength=len(per_class)) / per_class
            assert np.all(np.abs(share - fraction) < tol), f"stratification off: {share}"
            assert abs(len(val) / len(m) - fraction) < tol
            again_train, again_val = split(m, val_split=fraction, seed=seed)
            assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
            seen_val.add(tuple(val.tolist()))
    assert len(seen_val) > 2, "the seed should change the split"

    train, val = split(m)  # the default: no official validation fold here, so 20 % by group
    check_partition(m, train, val)

    modes = [cv_folds(m, 5, seed=0), cv_folds(m, 3, seed=7)]
    if m.fold_kind == "cv":
        modes.append(cv_folds(m))  # the official folds
    for folds in modes:
        validated = np.concatenate([val for _, val in folds])
        assert sorted(validated.tolist()) == list(range(len(m))), "each item validated exactly once"
        for train, val in folds:
            check_partition(m, train, val)
        k = len(folds)
        sizes = [len(val) for _, val in folds]
        assert max(sizes) - min(sizes) <= len(m) / k * 0.6
    assert [v.tolist() for _, v in cv_folds(m, 3, seed=7)] == [v.tolist() for _, v in modes[1]]


def test_us8k_official_fold_split(us8k: Manifest):
    train, val = split(us8k, val_fold=2)
    assert {us8k[i].fold for i in val} == {"2"} and len(val) == 150
    check_partition(us8k, train, val)


def test_speech_commands_random_cv_keeps_speakers_apart():
    m = load_manifest(SPEECH)
    for train, val in cv_folds(m, 4, seed=2):
        assert not groups_of(m, train) & groups_of(m, val)


def test_official_fold_that_contradicts_groups_is_refused(esc10: Manifest):
    regrouped = load_manifest(ESC50, filters=["esc10=True"], group_regex=r"-(\d+)\.wav$")  # group = class id
    with pytest.raises(DataError, match="contradict") as e:
        split(regrouped, val_fold=1)
    assert e.value.reason == "group_leak"
