"""Training manifests from common dataset layouts, and leakage-free (group-aware) splits.

`load_manifest(DATA)` recognises, in this order:

- ``hf_disk``: a Hugging Face ``datasets`` folder written by ``save_to_disk`` (``dataset_info.json`` +
  ``state.json`` + ``data-*.arrow``, or ``dataset_dict.json`` + one such folder per split). Read with pyarrow
  only; items carry the audio ``data`` bytes; ClassLabel ints become names; fold = a ``fold`` column if any,
  else the split name.
- ``esc50``: ``meta/esc50.csv`` + ``audio/``; label ``category``, fold ``fold``, group ``src_file``.
- ``urbansound8k``: ``metadata/UrbanSound8K.csv`` + ``audio/foldN/``; label ``class``, fold ``fold``,
  group ``fsID``.
- ``speech_commands``: class folders + ``validation_list.txt`` / ``testing_list.txt``; fold
  validation/testing/train, group = speaker hash (file name before ``_nohash_``); ``_background_noise_``
  is ignored.
- ``csv``: a .csv/.tsv file (or a folder whose top holds exactly one csv with a path column):
  ``path``/``filename`` + ``label``/``category`` [+ ``fold``/``split``, ``group``]. Relative paths resolve
  against the CSV's folder, then ``audio/`` under it.
- ``jsonl``: a .jsonl file, one object per line, same keys as ``csv`` (also NeMo's ``audio_filepath``).
- ``split_folders``: ``train/``, ``validation/`` (``val``, ``valid``, ``dev``), ``test/``, each of class
  folders.
- ``filename_regex``: any folder when ``label_regex`` is given: files found recursively, label = first group
  of ``re.search(label_regex, file_name)``.
- ``folder_per_class``: immediate subfolders are labels, audio files inside them (recursive).

``label_regex`` on a layout that already has labels overrides them; ``group_regex`` (first group, on the file
name) sets or overrides the group on every layout. Files listed by a layout but absent from disk are kept in
``Manifest.skipped`` with reason ``missing``; the embedding step reports unreadable ones through
``Manifest.skip``.

Splits: `split` (official validation fold, or a stratified group-aware fraction) and `cv_folds` (official
folds or stratified group-aware k folds). A group (speaker, source recording) never straddles train and
validation. No torch here: stdlib, numpy and (for ``hf_disk`` only) pyarrow.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earshot import audio
from earshot.errors import DataError

PATH_COLUMNS = ("path", "filename", "filepath", "file_path", "file", "fname", "audio_filepath", "audio_path")
LABEL_COLUMNS = ("label", "category", "class")
FOLD_COLUMNS = ("fold", "split")
GROUP_COLUMNS = ("group",)

VALIDATION_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("testing", "test", "eval")
SPLIT_NAMES = frozenset({"train", "training", *VALIDATION_NAMES, *TEST_NAMES})
IGNORED_FOLDERS = frozenset({"_background_noise_"})


@dataclass
class Item:
    """One labelled clip: a file on disk, or in-memory encoded audio (`data`) for Hugging Face datasets."""

    path: Path
    label: str
    fold: str | None = None
    group: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None

    @property
    def source(self) -> Path | bytes:
        """What to hand to the decoder: the encoded bytes when the item carries them, else the path."""
        return self.data if self.data is not None else self.path

    @property
    def name(self) -> str:
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
        """Sorted distinct labels: the class order of a model trained on this manifest."""
        return sorted({it.label for it in self.items})

    @property
    def folds(self) -> list[str]:
        """Sorted distinct folds (numerically when they are all numbers)."""
        return _sort_folds({it.fold for it in self.items if it.fold is not None})

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
        counts = Counter(it.label for it in self.items)
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
            "folds": {f: folds[f] for f in _sort_folds(folds)} or None,
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


# ----------------------------------------------------------------------------------------------- loading


def load_manifest(
    data: str | Path,
    *,
    label_regex: str | None = None,
    group_regex: str | None = None,
    filters: Sequence[str] = (),
    min_classes: int = 2,
) -> Manifest:
    """Read a data set in any supported layout (see the module doc) into a `Manifest`.

    `filters`: ``"COL=VALUE"`` (or ``"COL!=VALUE"``) on the layout's metadata columns and on ``label``,
    ``fold``, ``group``; compared as strings, case-insensitively; several filters on one column are OR-ed,
    on different columns AND-ed. `min_classes`: raise `DataError` if fewer classes remain (use 1 for
    evaluation subsets).
    """
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError("data set not found", source=str(data), reason="not_found")
    label_re = _compile(label_regex, "label_regex")
    group_re = _compile(group_regex, "group_regex")

    layout, records, meta = _detect(root, label_re)
    skipped: list[dict[str, str]] = list(meta.pop("skipped", []))
    records = _apply_filters(records, filters, source=str(data))

    if label_re is not None and layout != "filename_regex":
        relabelled, hits = [], 0
        for rec in records:
            m = label_re.search(rec.path.name)
            if m is None:
                skipped.append({"path": str(rec.path), "reason": "label_regex_no_match"})
                continue
            rec.label = _first_group(m)
            hits += 1
            relabelled.append(rec)
        if records and not hits:
            raise DataError(
                f"--label-regex {label_regex!r} matches none of the {len(records)} file names "
                f"(e.g. {records[0].path.name!r})",
                source=str(data),
                reason="regex_no_match",
            )
        records = relabelled
    if group_re is not None:
        hits = 0
        for rec in records:
            m = group_re.search(rec.path.name)
            if m is not None:
                rec.group = _first_group(m)
                hits += 1
        if records and not hits:
            raise DataError(
                f"--group-regex {group_regex!r} matches none of the {len(records)} file names "
                f"(e.g. {records[0].path.name!r})",
                source=str(data),
                reason="regex_no_match",
            )

    items: list[Item] = []
    for rec in records:
        if not rec.label:
            skipped.append({"path": str(rec.path), "reason": "no_label"})
        elif rec.data is None and not rec.path.is_file():
            skipped.append({"path": str(rec.path), "reason": "missing"})
        else:
            items.append(rec)

    manifest = Manifest(
        items=items,
        skipped=skipped,
        layout=layout,
        root=meta.get("root", root),
        fold_kind=meta.get("fold_kind"),
        options={"filters": list(filters), "label_regex": label_regex, "group_regex": group_regex},
    )
    if manifest.fold_kind == "split":
        present = set(manifest.folds)
        manifest.val_fold = next((f for f in VALIDATION_NAMES if f in present), None)
        manifest.test_fold = next((f for f in TEST_NAMES if f in present), None)
    if manifest.fold_kind is not None and not manifest.folds:
        manifest.fold_kind = None

    if not items:
        why = f"; skipped {len(skipped)} ({_reason_text(skipped)})" if skipped else ""
        hint = f" after filters {list(filters)}" if filters else ""
        raise DataError(f"no usable items ({layout} layout){hint}{why}", source=str(data), reason="empty")
    n_classes = len(manifest.labels)
    if n_classes < min_classes:
        hint = ""
        if layout == "folder_per_class":
            hint = "; if the labels are in the file names, pass --label-regex"
        raise DataError(
            f"found {n_classes} class ({manifest.labels[0]!r}, {len(items)} items); "
            f"a classifier needs at least {min_classes}{hint}",
            source=str(data),
            reason="one_class",
        )
    return manifest


def _detect(root: Path, label_re: re.Pattern | None) -> tuple[str, list[Item], dict[str, Any]]:
    if root.is_file():
        name = root.name.lower()
        if name == "esc50.csv":
            return "esc50", _esc50(root.parent.parent, root), {"fold_kind": "cv", "root": root.parent.parent}
        if name == "urbansound8k.csv":
            return (
                "urbansound8k",
                _urbansound(root.parent.parent, root),
                {"fold_kind": "cv", "root": root.parent.parent},
            )
        if name in ("dataset_info.json", "state.json", "dataset_dict.json"):
            return _detect(root.parent, label_re)
        if root.suffix.lower() in (".csv", ".tsv"):
            records, kind = _csv_manifest(root)
            return "csv", records, {"fold_kind": kind}
        if root.suffix.lower() in (".jsonl", ".ndjson"):
            records, kind = _jsonl_manifest(root)
            return "jsonl", records, {"fold_kind": kind}
        raise DataError(
            "a file DATA must be a .csv/.tsv/.jsonl manifest", source=str(root), reason="unsupported"
        )

    if (
        (root / "dataset_dict.json").is_file()
        or (root / "dataset_info.json").is_file()
        and (root / "state.json").is_file()
    ):
        records, kind = _hf_disk(root)
        return "hf_disk", records, {"fold_kind": kind}
    if (root / "meta" / "esc50.csv").is_file():
        return "esc50", _esc50(root, root / "meta" / "esc50.csv"), {"fold_kind": "cv"}
    if (root / "metadata" / "UrbanSound8K.csv").is_file():
        return "urbansound8k", _urbansound(root, root / "metadata" / "UrbanSound8K.csv"), {"fold_kind": "cv"}
    if (root / "validation_list.txt").is_file() or (root / "testing_list.txt").is_file():
        return "speech_commands", _speech_commands(root), {"fold_kind": "split"}
    csv_path = _single_manifest_csv(root)
    if csv_path is not None:
        records, kind = _csv_manifest(csv_path)
        return "csv", records, {"fold_kind": kind}
    if label_re is not None:
        records, skipped = [], []
        for p in _audio_files(root):
            m = label_re.search(p.name)
            if m is None:
                skipped.append({"path": str(p), "reason": "label_regex_no_match"})
            else:
                records.append(Item(path=p, label=_first_group(m)))
        if not records:
            example = f" (e.g. {skipped[0]['path'].rsplit('/', 1)[-1]!r})" if skipped else ""
            raise DataError(
                f"--label-regex {label_re.pattern!r} matches none of the {len(skipped)} audio files{example}",
                source=str(root),
                reason="regex_no_match",
            )
        return "filename_regex", records, {"skipped": skipped}

    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not _ignored(d.name)]
    if subdirs and all(d.name.lower() in SPLIT_NAMES for d in subdirs):
        records = []
        for split_dir in subdirs:
            fold = _canonical_split(split_dir.name)
            for rec in _class_folders(split_dir)[0]:
                rec.fold = fold
                records.append(rec)
        return "split_folders", records, {"fold_kind": "split"}
    records, skipped = _class_folders(root)
    if records:
        return "folder_per_class", records, {"skipped": skipped}
    n_top = len(skipped)
    if n_top:
        raise DataError(
            f"a flat folder of {n_top} audio files: pass --label-regex to take labels from the file names",
            source=str(root),
            reason="no_labels",
        )
    raise DataError("no audio files and no known manifest here", source=str(root), reason="empty")


def _esc50(root: Path, csv_path: Path) -> list[Item]:
    rows = _read_csv(csv_path)
    _require(rows, csv_path, ("filename", "category"))
    return [
        Item(
            path=root / "audio" / r["filename"],
            label=r["category"].strip(),
            fold=_fold(r.get("fold")),
            group=_str(r.get("src_file")),
            extra=r,
        )
        for r in rows
    ]


def _urbansound(root: Path, csv_path: Path) -> list[Item]:
    rows = _read_csv(csv_path)
    _require(rows, csv_path, ("slice_file_name", "class", "fold"))
    return [
        Item(
            path=root / "audio" / f"fold{r['fold'].strip()}" / r["slice_file_name"],
            label=r["class"].strip(),
            fold=_fold(r["fold"]),
            group=_str(r.get("fsID")),
            extra=r,
        )
        for r in rows
    ]


def _speech_commands(root: Path) -> list[Item]:
    lists: dict[str, str] = {}
    for fold, name in (("testing", "testing_list.txt"), ("validation", "validation_list.txt")):
        f = root / name
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.strip():
                    lists[line.strip().replace("\\", "/")] = fold
    records = []
    for class_dir in sorted(root.iterdir()):
        if not class_dir.is_dir() or _ignored(class_dir.name) or class_dir.name.startswith("_"):
            continue
        for p in _audio_files(class_dir):
            rel = p.relative_to(root).as_posix()
            group = p.name.split("_nohash_")[0] if "_nohash_" in p.name else None
            records.append(Item(path=p, label=class_dir.name, fold=lists.get(rel, "train"), group=group))
    return records


def _class_folders(root: Path) -> tuple[list[Item], list[dict[str, str]]]:
    records, skipped = [], []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not _ignored(entry.name):
            records.extend(Item(path=p, label=entry.name) for p in _audio_files(entry))
        elif entry.is_file() and audio.is_audio_name(entry):
            skipped.append({"path": str(entry), "reason": "outside_class_folder"})
    return records, skipped


def _single_manifest_csv(root: Path) -> Path | None:
    found = []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
            with open(p, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ","), [])
            if _pick({h.strip(): h for h in header}, PATH_COLUMNS):
                found.append(p)
    if len(found) > 1:
        raise DataError(
            f"several manifest CSVs here ({', '.join(p.name for p in found)}); pass the one to use",
            source=str(root),
            reason="ambiguous",
        )
    return found[0] if found else None


def _csv_manifest(csv_path: Path) -> tuple[list[Item], str | None]:
    return _table_manifest(_read_csv(csv_path), csv_path)


def _jsonl_manifest(path: Path) -> tuple[list[Item], str | None]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append({str(k): v for k, v in json.loads(line).items()})
            except (json.JSONDecodeError, AttributeError) as e:
                raise DataError(
                    f"line {n} is not a JSON object", source=str(path), reason="bad_manifest"
                ) from e
    return _table_manifest(rows, path)


def _table_manifest(rows: list[dict[str, Any]], path: Path) -> tuple[list[Item], str | None]:
    if not rows:
        raise DataError("manifest has no rows", source=str(path), reason="empty")
    columns = {c: c for c in rows[0]}
    path_col = _pick(columns, PATH_COLUMNS)
    label_col = _pick(columns, LABEL_COLUMNS)
    if path_col is None or label_col is None:
        raise DataError(
            f"manifest needs a path column ({'/'.join(PATH_COLUMNS[:2])}) and a label column "
            f"({'/'.join(LABEL_COLUMNS[:2])}); it has {list(columns)}",
            source=str(path),
            reason="bad_manifest",
        )
    fold_col = _pick(columns, FOLD_COLUMNS)
    group_col = _pick(columns, GROUP_COLUMNS)
    kind = None
    if fold_col is not None:
        kind = "split" if fold_col.lower() == "split" else "cv"
    base = path.parent
    records = []
    for r in rows:
        raw = _str(r.get(path_col)) or ""
        fold = _fold(r.get(fold_col)) if fold_col else None
        if kind == "split" and fold is not None:
            fold = _canonical_split(fold)
        records.append(
            Item(
                path=_resolve(base, raw),
                label=_str(r.get(label_col)) or "",
                fold=fold,
                group=_str(r.get(group_col)) if group_col else None,
                extra=dict(r),
            )
        )
    return records, kind


def _resolve(base: Path, raw: str) -> Path:
    p = Path(raw).expanduser()
    candidates = [p] if p.is_absolute() else [base / p, base / "audio" / p]
    for c in candidates:
        if c.is_file():
            return c
        if not c.suffix:
            for ext in (".wav", ".flac", ".ogg", ".mp3"):
                if c.with_suffix(ext).is_file():
                    return c.with_suffix(ext)
    return candidates[0]


# ------------------------------------------------------------------------------ Hugging Face save_to_disk


def _hf_disk(root: Path) -> tuple[list[Item], str | None]:
    """`datasets.save_to_disk` output, read with pyarrow (no `datasets` dependency)."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits") or sorted(
            d.name for d in root.iterdir() if (d / "state.json").is_file()
        )
        records: list[Item] = []
        any_fold_column = False
        for name in splits:
            recs, has_fold = _hf_split(root / name, split=name)
            any_fold_column |= has_fold
            records.extend(recs)
        return records, "cv" if any_fold_column else "split"
    records, has_fold = _hf_split(root, split=None)
    return records, "cv" if has_fold else None


def _hf_split(folder: Path, split: str | None) -> tuple[list[Item], bool]:
    try:
        import pyarrow as pa
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(
            "reading a Hugging Face dataset folder needs pyarrow (pip install pyarrow)",
            source=str(folder),
            reason="needs_pyarrow",
        ) from e
    info = (
        json.loads((folder / "dataset_info.json").read_text())
        if (folder / "dataset_info.json").is_file()
        else {}
    )
    state = json.loads((folder / "state.json").read_text()) if (folder / "state.json").is_file() else {}
    files = [folder / f["filename"] for f in state.get("_data_files", [])] or sorted(folder.glob("*.arrow"))
    if not files:
        raise DataError("no .arrow files in the dataset folder", source=str(folder), reason="empty")
    tables = []
    for f in files:
        try:
            with pa.memory_map(str(f)) as src:
                try:
                    tables.append(pa.ipc.open_stream(src).read_all())
                except pa.ArrowInvalid:
                    src.seek(0)
                    tables.append(pa.ipc.open_file(src).read_all())
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"unreadable arrow file: {e}", source=str(f), reason="read_error") from e
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    features = info.get("features") or {}
    if not features:  # fall back on the metadata datasets embeds in the arrow schema
        meta = (table.schema.metadata or {}).get(b"huggingface")
        if meta:
            features = (json.loads(meta).get("info") or {}).get("features") or {}
    names = table.column_names
    audio_col = next((c for c in names if _ftype(features.get(c)) == "Audio"), None)
    if audio_col is None:
        audio_col = next(
            (
                c
                for c in names
                if pa.types.is_struct(table.schema.field(c).type)
                and {"bytes", "path"} <= {x.name for x in table.schema.field(c).type}
            ),
            None,
        )
    label_col = next(
        (c for c in names if _ftype(features.get(c)) == "ClassLabel" and c in LABEL_COLUMNS), None
    )
    label_col = label_col or next((c for c in names if _ftype(features.get(c)) == "ClassLabel"), None)
    label_col = label_col or _pick({c: c for c in names}, LABEL_COLUMNS)
    if audio_col is None or label_col is None:
        raise DataError(
            f"no Audio and/or label column among {names}", source=str(folder), reason="bad_manifest"
        )
    class_names = (features.get(label_col) or {}).get("names")
    fold_col = _pick({c: c for c in names if c not in (audio_col, label_col)}, FOLD_COLUMNS)
    group_col = _pick({c: c for c in names if c not in (audio_col, label_col)}, GROUP_COLUMNS)
    scalar_cols = [
        c
        for c in names
        if c not in (audio_col,)
        and not (
            pa.types.is_nested(table.schema.field(c).type) or pa.types.is_binary(table.schema.field(c).type)
        )
    ]

    audio = table.column(audio_col).to_pylist()
    labels = table.column(label_col).to_pylist()
    extras = table.select(scalar_cols).to_pylist() if scalar_cols else [{} for _ in audio]
    records = []
    for i, (a, lab, extra) in enumerate(zip(audio, labels, extras, strict=True)):
        a = a or {}
        data, apath = a.get("bytes"), a.get("path")
        path = Path(apath) if apath else folder / f"{split or 'row'}-{i:06d}"
        if not data and apath and not path.is_absolute():
            path = folder / apath
        if class_names is not None and isinstance(lab, int):
            label = class_names[lab] if 0 <= lab < len(class_names) else ""
        else:
            label = _str(lab) or ""
        fold = _fold(extra.get(fold_col)) if fold_col else (_canonical_split(split) if split else None)
        group = _str(extra.get(group_col)) if group_col else None
        records.append(Item(path=path, label=label, fold=fold, group=group, extra=extra, data=data or None))
    return records, fold_col is not None and fold_col.lower() == "fold"


def _ftype(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


# ---------------------------------------------------------------------------------------------- helpers


def _compile(pattern: str | None, what: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise DataError(
            f"--{what.replace('_', '-')} {pattern!r} is not a valid regular expression: {e}",
            reason="bad_regex",
        ) from e


def _first_group(m: re.Match) -> str:
    return (m.group(1) if m.re.groups else m.group(0)) or ""


def _apply_filters(records: list[Item], filters: Sequence[str], source: str) -> list[Item]:
    if not filters:
        return records
    parsed: dict[tuple[str, bool], set[str]] = {}
    columns: set[str] = {"label", "fold", "group"}
    for rec in records[:1]:
        columns |= set(rec.extra)
    for flt in filters:
        m = re.fullmatch(r"\s*([^=!]+?)\s*(!?=)\s*(.*?)\s*", flt)
        if m is None:
            raise DataError(f"filter {flt!r} is not COL=VALUE", source=source, reason="bad_filter")
        col, op, value = m.groups()
        if col not in columns:
            by_lower = {c.lower(): c for c in columns}
            if col.lower() not in by_lower:
                raise DataError(
                    f"unknown filter column {col!r}; columns are {sorted(columns)}",
                    source=source,
                    reason="unknown_column",
                )
            col = by_lower[col.lower()]
        parsed.setdefault((col, op == "!="), set()).add(value.lower())

    def values_of(rec: Item, col: str) -> set[str]:
        # label/fold/group match the item's value or the raw metadata column (e.g. a ClassLabel int)
        raw = [rec.extra.get(col), getattr(rec, col, None) if col in ("label", "fold", "group") else None]
        return {str(v).strip().lower() for v in raw if v is not None} or {""}

    return [
        rec
        for rec in records
        if all(bool(values_of(rec, col) & values) != negate for (col, negate), values in parsed.items())
    ]


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"unreadable CSV: {e}", source=str(path), reason="read_error") from e


def _require(rows: list[dict[str, str]], path: Path, cols: Sequence[str]) -> None:
    missing = [c for c in cols if rows and c not in rows[0]]
    if missing:
        raise DataError(f"CSV lacks column(s) {missing}", source=str(path), reason="bad_manifest")


def _pick(columns: dict[str, str], candidates: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if audio.is_audio_name(p)
        and p.is_file()
        and not any(_ignored(part) for part in p.relative_to(folder).parts)
    )


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_FOLDERS


def _str(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _fold(v: Any) -> str | None:
    s = _str(v)
    if s is not None and re.fullmatch(r"\d+\.0+", s):
        s = s.split(".")[0]
    return s


def _canonical_split(name: str) -> str:
    low = name.lower()
    if low in ("train", "training"):
        return "train"
    if low in VALIDATION_NAMES:
        return "validation"
    if low in TEST_NAMES:
        return "test" if low != "testing" else "testing"
    return name


def _sort_folds(folds: Iterable[str]) -> list[str]:
    folds = list(folds)
    if all(f.isdigit() for f in folds):
        return sorted(folds, key=int)
    return sorted(folds)


def _reason_text(skipped: list[dict[str, str]]) -> str:
    return ", ".join(f"{r}: {n}" for r, n in Counter(s["reason"] for s in skipped).most_common())


# ----------------------------------------------------------------------------------------------- splits


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


def _fold_split(manifest: Manifest, fold: str) -> tuple[np.ndarray, np.ndarray]:
    folds = manifest.folds
    if not folds:
        raise DataError(
            f"validation fold {fold!r} asked for, but the {manifest.layout} layout has no folds",
            reason="no_folds",
        )
    if fold not in folds and _canonical_split(fold) in folds:
        fold = _canonical_split(fold)  # --val-fold val / dev / test on named splits
    if fold not in folds:
        raise DataError(f"no fold {fold!r}; folds are {folds}", reason="unknown_fold")
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
