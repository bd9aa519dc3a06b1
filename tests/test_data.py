"""Manifests from every supported layout, on the real shared data sets, and clear errors for bad ones."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from shareddata import ESC50, FSDD, FSDD_GROUP, FSDD_LABEL, SPEECH, check_partition, groups_of

from earshot.audio import EXTENSIONS as AUDIO_EXTENSIONS
from earshot.errors import DataError
from earshot.training import Manifest, cv_folds, load_manifest, split


def test_esc50_layout_with_esc10_filter(esc10: Manifest):
    assert esc10.layout == "esc50"
    assert len(esc10) == 320
    assert len(esc10.labels) == 10 and "dog" in esc10.labels and "chainsaw" in esc10.labels
    assert set(esc10.class_counts().values()) == {32}
    assert esc10.folds == ["1", "2", "3", "4"]
    assert esc10.fold_kind == "cv" and esc10.val_fold is None
    first = esc10[0]
    assert first.path.is_file() and first.path.parent == ESC50 / "audio"
    assert first.group == first.extra["src_file"]
    assert first.data is None and first.source == first.path
    # the value compares case-insensitively, and the CSV itself can be given as DATA
    again = load_manifest(ESC50 / "meta" / "esc50.csv", filters=["esc10=true"])
    assert again.layout == "esc50" and [it.path for it in again] == [it.path for it in esc10]
    s = esc10.summary()
    assert s["n"] == 320 and s["n_classes"] == 10 and s["layout"] == "esc50" and s["skipped"] == 0
    assert s["filters"] == ["esc10=True"] and s["folds"] == {"1": 80, "2": 80, "3": 80, "4": 80}
    json.dumps(s)


def test_esc50_filters_combine(esc10: Manifest):
    dogs = load_manifest(ESC50, filters=["esc10=True", "category=dog", "category=rooster"])
    assert dogs.labels == ["dog", "rooster"] and len(dogs) == 64
    not_dogs = load_manifest(ESC50, filters=["esc10=true", "category!=dog"])
    assert len(not_dogs) == 320 - 32 and "dog" not in not_dogs.labels


def test_esc50_official_folds(esc10: Manifest):
    folds = cv_folds(esc10)
    assert len(folds) == 4
    for fold, (train, val) in zip(esc10.folds, folds, strict=True):
        assert {esc10[i].fold for i in val} == {fold}
        assert len(val) == 80
        check_partition(esc10, train, val)
    train, val = split(esc10, val_fold=4)
    assert len(val) == 80 and {esc10[i].fold for i in train} == {"1", "2", "3"}
    # no official validation fold: the default is a 20 % group-aware split
    train, val = split(esc10)
    check_partition(esc10, train, val)
    assert 0.15 < len(val) / len(esc10) < 0.25


def test_urbansound8k_layout(us8k: Manifest):
    assert us8k.layout == "urbansound8k"
    assert len(us8k) == 300 and len(us8k.labels) == 10
    assert us8k.folds == ["1", "2"]
    assert all(it.path.parent.name == f"fold{it.fold}" and it.path.is_file() for it in us8k)
    assert all(it.group == it.extra["fsID"] for it in us8k)
    assert us8k.summary()["n_groups"] == len({it.extra["fsID"] for it in us8k}) < 300


def test_speech_commands_layout():
    m = load_manifest(SPEECH)
    assert m.layout == "speech_commands"
    assert len(m) == 249 and len(m.labels) == 30
    assert m.class_counts()["bed"] >= 5
    folds = Counter(it.fold for it in m)
    assert folds == {"train": 205, "validation": 44}
    assert m.val_fold == "validation"
    listed = set((SPEECH / "validation_list.txt").read_text().split())
    assert all((f"{it.label}/{it.name}" in listed) == (it.fold == "validation") for it in m)
    assert all(it.group == it.name.split("_nohash_")[0] for it in m)
    train, val = split(m)  # the official validation list
    assert {m[i].fold for i in val} == {"validation"} and len(val) == 44
    assert not groups_of(m, train) & groups_of(m, val)


def test_speech_commands_testing_list_is_held_out(tmp_path: Path):
    for word in ("yes", "no"):
        (tmp_path / word).mkdir()
        for src in sorted((SPEECH / word).iterdir())[:6]:
            (tmp_path / word / src.name).symlink_to(src)
    (tmp_path / "_background_noise_").mkdir()
    (tmp_path / "_background_noise_" / "white.wav").symlink_to(next((SPEECH / "yes").iterdir()))
    names = sorted(f"{w}/{p.name}" for w in ("yes", "no") for p in (tmp_path / w).iterdir())
    (tmp_path / "testing_list.txt").write_text("\n".join(names[:2]) + "\n")
    m = load_manifest(tmp_path)
    assert m.layout == "speech_commands" and len(m) == 12
    assert m.test_fold == "testing" and m.val_fold is None
    held = set(m.holdout_indices().tolist())
    assert len(held) == 2
    train, val = split(m, val_split=0.3)
    assert not held & (set(train.tolist()) | set(val.tolist()))


def test_fsdd_filename_regex(fsdd: Manifest):
    assert fsdd.layout == "filename_regex"
    assert len(fsdd) == 2500
    assert fsdd.labels == [str(d) for d in range(10)]
    speakers = {it.group for it in fsdd}
    assert len(speakers) == 5 and speakers <= set(json.loads((FSDD / "speakers.json").read_text()))
    assert fsdd.summary()["n_groups"] == 5


def test_folder_per_class(tmp_path: Path):
    for category in ("dog", "rooster", "rain"):
        nested = tmp_path / category / "take1"
        nested.mkdir(parents=True)
        for i in range(4):
            src = ESC50 / "audio" / _esc50_file(category, i)
            (tmp_path / category / src.name if i < 3 else nested / src.name).symlink_to(src)
    (tmp_path / "rain" / "notes.txt").write_text("not audio")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.wav").symlink_to(ESC50 / "audio" / _esc50_file("dog", 0))
    stray = tmp_path / "stray.wav"
    stray.symlink_to(ESC50 / "audio" / _esc50_file("dog", 5))
    m = load_manifest(tmp_path)
    assert m.layout == "folder_per_class"
    assert m.class_counts() == {"dog": 4, "rain": 4, "rooster": 4}
    assert m.skipped == [{"path": str(stray), "reason": "outside_class_folder"}]
    assert m.fold_kind is None
    train, val = split(m, val_split=0.25, seed=3)
    check_partition(m, train, val)
    assert Counter(m[i].label for i in val) == {"dog": 1, "rain": 1, "rooster": 1}
    # --group-regex works on any layout: the take (A/B/...) of a clip, here just to prove it applies
    g = load_manifest(tmp_path, group_regex=r"^\d-(\d+)-")
    assert all(it.group == it.name.split("-")[1] for it in g)


def test_split_folders(tmp_path: Path):
    for split_name, n in (("train", 3), ("val", 2)):
        for category in ("dog", "rooster"):
            (tmp_path / split_name / category).mkdir(parents=True)
            for i in range(n):
                src = ESC50 / "audio" / _esc50_file(category, i + (0 if split_name == "train" else 3))
                (tmp_path / split_name / category / src.name).symlink_to(src)
    m = load_manifest(tmp_path)
    assert m.layout == "split_folders" and m.val_fold == "validation"
    assert Counter(it.fold for it in m) == {"train": 6, "validation": 4}
    train, val = split(m)
    assert {m[i].fold for i in val} == {"validation"} and len(train) == 6


def test_csv_manifest_with_missing_file(tmp_path: Path):
    files = [ESC50 / "audio" / _esc50_file(c, i) for c in ("dog", "rooster") for i in range(3)]
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / files[1].name).symlink_to(files[1])  # resolved through audio/
    (tmp_path / files[2].name).symlink_to(files[2])  # resolved next to the CSV
    rows = [
        {"filename": str(files[0]), "category": "dog", "group": "a"},  # absolute
        {"filename": files[1].name, "category": "dog", "group": "b"},
        {"filename": files[2].name, "category": "dog", "group": "c"},
        {"filename": "gone.wav", "category": "dog", "group": "d"},
        *({"filename": str(f), "category": "rooster", "group": f"r{i}"} for i, f in enumerate(files[3:])),
    ]
    manifest = tmp_path / "labels.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "category", "group"])
        w.writeheader()
        w.writerows(rows)
    for data in (manifest, tmp_path):  # the CSV, or the folder holding exactly one manifest CSV
        m = load_manifest(data)
        assert m.layout == "csv"
        assert len(m) == 6 and m.class_counts() == {"dog": 3, "rooster": 3}
        assert all(it.path.is_file() for it in m)
        assert m.skipped == [{"path": str(tmp_path / "gone.wav"), "reason": "missing"}]
        s = m.summary()
        assert s["skipped"] == 1 and s["skipped_reasons"] == {"missing": 1}
        assert [it.group for it in m] == ["a", "b", "c", "r0", "r1", "r2"]


def test_csv_manifest_path_label_fold_columns(tmp_path: Path):
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold"])
        for i, c in enumerate(("dog", "rooster") * 3):
            w.writerow([str(ESC50 / "audio" / _esc50_file(c, i // 2)), c, i // 2 + 1])
    m = load_manifest(tmp_path / "m.csv")
    assert m.folds == ["1", "2", "3"] and m.fold_kind == "cv"
    assert len(cv_folds(m)) == 3
    train, val = split(m, val_fold="2")
    assert {m[i].fold for i in val} == {"2"} and len(train) == 4


def test_jsonl_manifest(tmp_path: Path):
    lines = [
        json.dumps({"audio_filepath": str(ESC50 / "audio" / _esc50_file(c, i)), "label": c})
        for c in ("dog", "rooster")
        for i in range(2)
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    m = load_manifest(tmp_path / "m.jsonl")
    assert m.layout == "jsonl" and m.class_counts() == {"dog": 2, "rooster": 2}


def _write_hf_split(
    folder: Path, files: list[Path], labels: list[int], names: list[str], speakers: list[str]
):
    """What `datasets.Dataset.save_to_disk` writes (checked against datasets 5.2): an Arrow *stream* file,
    dataset_info.json with the features, state.json listing the data files."""
    pa = pytest.importorskip("pyarrow")
    features = {
        "audio": {"sampling_rate": 16000, "_type": "Audio"},
        "label": {"names": names, "_type": "ClassLabel"},
        "speaker": {"dtype": "string", "_type": "Value"},
    }
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [("audio", audio_type), ("label", pa.int64()), ("speaker", pa.string())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    table = pa.table(
        {
            "audio": pa.array([{"bytes": f.read_bytes(), "path": f.name} for f in files], type=audio_type),
            "label": pa.array(labels, type=pa.int64()),
            "speaker": pa.array(speakers),
        },
        schema=schema,
    )
    folder.mkdir(parents=True)
    arrow = folder / "data-00000-of-00001.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table, max_chunksize=4)
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    state = {
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2))


def test_hf_save_to_disk_layout(tmp_path: Path):
    names = ["dog", "rooster", "rain"]
    files = [ESC50 / "audio" / _esc50_file(c, i) for c in names for i in range(4)]
    labels = [names.index(c) for c in names for _ in range(4)]
    speakers = [f"s{i % 4}" for i in range(len(files))]
    _write_hf_split(tmp_path / "ds", files, labels, names, speakers)
    m = load_manifest(tmp_path / "ds")
    assert m.layout == "hf_disk" and len(m) == 12
    assert m.class_counts() == {"dog": 4, "rain": 4, "rooster": 4}
    assert all(it.data == f.read_bytes() and it.source is it.data for it, f in zip(m, files, strict=True))
    assert [it.name for it in m] == [f.name for f in files]
    assert m.summary()["in_memory"] == 12
    assert len(load_manifest(tmp_path / "ds", filters=["speaker=s1"])) == 3
    assert len(load_manifest(tmp_path / "ds", filters=["label=dog"], min_classes=1)) == 4  # ClassLabel name
    g = load_manifest(tmp_path / "ds", group_regex=r"^\d-(\d+)-")
    train, val = split(g, val_split=0.25, seed=1)
    check_partition(g, train, val)

    # a DatasetDict: one folder per split, listed in dataset_dict.json; the split name becomes the fold
    _write_hf_split(tmp_path / "dd" / "train", files[::2], labels[::2], names, speakers[::2])
    _write_hf_split(tmp_path / "dd" / "validation", files[1::2], labels[1::2], names, speakers[1::2])
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    d = load_manifest(tmp_path / "dd")
    assert d.layout == "hf_disk" and d.val_fold == "validation"
    assert Counter(it.fold for it in d) == {"train": 6, "validation": 6}
    train, val = split(d)
    assert {d[i].fold for i in val} == {"validation"}


def test_errors_are_clear(tmp_path: Path, esc10: Manifest):
    with pytest.raises(DataError, match="not found"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files") as e:
        load_manifest(tmp_path / "empty")
    assert e.value.reason == "empty"
    with pytest.raises(DataError, match="no usable items") as e:
        load_manifest(ESC50, filters=["category=unicorn"])
    assert e.value.reason == "empty"
    with pytest.raises(DataError, match="unknown filter column 'colour'") as e:
        load_manifest(ESC50, filters=["colour=red"])
    assert e.value.reason == "unknown_column"
    with pytest.raises(DataError, match="not COL=VALUE"):
        load_manifest(ESC50, filters=["esc10"])
    with pytest.raises(DataError, match="label-regex .* matches none") as e:
        load_manifest(FSDD, label_regex=r"^([a-z]+)-")
    assert e.value.reason == "regex_no_match"
    with pytest.raises(DataError, match="group-regex .* matches none"):
        load_manifest(FSDD, label_regex=FSDD_LABEL, group_regex=r"^zzz(.)")
    with pytest.raises(DataError, match="not a valid regular expression"):
        load_manifest(FSDD, label_regex=r"^(\d")
    # a flat folder without --label-regex, and a single class
    with pytest.raises(DataError, match="--label-regex") as e:
        load_manifest(FSDD / "recordings")
    with pytest.raises(DataError, match="found 1 class") as e:
        load_manifest(ESC50, filters=["category=dog"])
    assert e.value.reason == "one_class"
    one = load_manifest(ESC50, filters=["category=dog"], min_classes=1)
    with pytest.raises(DataError, match="only one class"):
        split(one)

    # too few items / groups to split
    few = load_manifest(FSDD, label_regex=FSDD_LABEL, filters=["label=1", "label=2"])
    few.items = [it for it in few if it.label == "1"][:5] + [it for it in few if it.label == "2"][:1]
    with pytest.raises(DataError, match="class '2' has only 1 item") as e:
        split(few, val_split=0.2)
    assert e.value.reason == "too_few_items"
    lumped = load_manifest(
        FSDD, label_regex=FSDD_LABEL, group_regex=r"^(\d)_", filters=["label=1", "label=2"]
    )
    with pytest.raises(DataError, match="in one group") as e:
        split(lumped)
    assert e.value.reason == "too_few_groups"
    fsdd_two = load_manifest(FSDD, label_regex=FSDD_LABEL, group_regex=FSDD_GROUP)
    with pytest.raises(DataError, match="needs at least 6 groups"):
        cv_folds(fsdd_two, 6)

    with pytest.raises(DataError, match="no fold '7'"):
        split(esc10, val_fold=7)
    with pytest.raises(DataError, match="has no folds"):
        split(fsdd_two, val_fold=1)
    with pytest.raises(DataError, match="not both"):
        split(esc10, val_fold=1, val_split=0.2)
    with pytest.raises(DataError, match="between 0 and 1"):
        split(esc10, val_split=1.5)


def test_skip_hook(tmp_path: Path):
    m = load_manifest(ESC50, filters=["esc10=True", "fold=1"])
    victim, first = m[3], m[0]
    m.skip(victim, "unreadable")
    m.skip(0, "too_short")
    assert len(m) == 78 and victim not in m.items and first not in m.items
    assert m.skipped == [
        {"path": str(victim.path), "reason": "unreadable"},
        {"path": str(first.path), "reason": "too_short"},
    ]
    assert m.summary()["skipped_reasons"] == {"too_short": 1, "unreadable": 1}
    sub = m.subset([0, 1, 2])
    assert len(sub) == 3 and sub.layout == "esc50"


def test_audio_extensions_cover_common_formats():
    for ext in ("wav", "flac", "ogg", "mp3", "opus", "m4a", "aac", "webm", "mp4", "aiff", "au"):
        assert f".{ext}" in AUDIO_EXTENSIONS


def _esc50_file(category: str, index: int) -> str:
    with open(ESC50 / "meta" / "esc50.csv", newline="") as f:
        rows = sorted(r["filename"] for r in csv.DictReader(f) if r["category"] == category)
    return rows[index]
