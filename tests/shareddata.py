"""The shared data sets' folders and FSDD's file-name patterns, and the checks a split must pass."""

from __future__ import annotations

from conftest import DATA

ESC50 = DATA / "esc50"
US8K = DATA / "urbansound8k_subset"
SPEECH = DATA / "speech_commands_v0.01_subset"
FSDD = DATA / "fsdd"
FSDD_LABEL = r"^(\d)_"  # the digit
FSDD_GROUP = r"^\d_([a-z]+)_"  # the speaker


def groups_of(m, idx) -> set[str]:
    """The groups (speakers, source recordings) of manifest `m`'s items `idx`."""
    keys = m.group_keys()
    return {keys[i] for i in idx}


def check_partition(m, train, val, *, cover: bool = True) -> None:
    """`train` and `val` are disjoint, non-empty, cover `m` (unless `cover` is False), share no group, and every
    class is trained on."""
    train, val = set(train.tolist()), set(val.tolist())
    assert train and val
    assert not train & val
    if cover:
        assert train | val == set(range(len(m)))
    assert not groups_of(m, train) & groups_of(m, val), "a group straddles train and validation"
    assert {m[i].label for i in train} == set(m.labels), "every class must be trained on"
