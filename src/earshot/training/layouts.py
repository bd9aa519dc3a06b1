"""Readers of the supported data-set layouts: each turns a folder or manifest file into `Item`s.

ESC-50, UrbanSound8K, Speech Commands, class folders (optionally under train/validation/test folders), file
names matched by a regular expression, and CSV/TSV/JSONL tables. Hugging Face on-disk datasets are read by
`earshot.training.hf_disk`; which reader applies is decided by `earshot.training.loading.detect`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from earshot import audio
from earshot.errors import DataError
from earshot.training.manifest import SPLIT_NAMES, Item, canonical_split

PATH_COLUMNS = ("path", "filename", "filepath", "file_path", "file", "fname", "audio_filepath", "audio_path")
LABEL_COLUMNS = ("label", "category", "class")
MULTI_LABEL_COLUMNS = ("labels",)  # ";"-separated labels: a multi-label manifest
LABEL_SEPARATOR = ";"
FOLD_COLUMNS = ("fold", "split")
GROUP_COLUMNS = ("group",)
IGNORED_FOLDERS = frozenset({"_background_noise_"})


def esc50(root: Path, csv_path: Path) -> list[Item]:
    """ESC-50 (``meta/esc50.csv`` + ``audio/``): label ``category``, fold ``fold``, group ``src_file``."""
    rows = _read_csv(csv_path)
    _require(rows, csv_path, ("filename", "category"))
    return [
        Item(
            path=root / "audio" / r["filename"],
            label=r["category"].strip(),
            fold=fold_text(r.get("fold")),
            group=cell_text(r.get("src_file")),
            extra=r,
        )
        for r in rows
    ]


def urbansound8k(root: Path, csv_path: Path) -> list[Item]:
    """UrbanSound8K (``metadata/UrbanSound8K.csv`` + ``audio/foldN/``): label ``class``, fold ``fold``,
    group ``fsID``."""
    rows = _read_csv(csv_path)
    _require(rows, csv_path, ("slice_file_name", "class", "fold"))
    return [
        Item(
            path=root / "audio" / f"fold{r['fold'].strip()}" / r["slice_file_name"],
            label=r["class"].strip(),
            fold=fold_text(r["fold"]),
            group=cell_text(r.get("fsID")),
            extra=r,
        )
        for r in rows
    ]


def speech_commands(root: Path) -> list[Item]:
    """Speech Commands: class folders, fold from ``validation_list.txt`` / ``testing_list.txt`` (else
    ``train``), group = speaker hash (the file name before ``_nohash_``); ``_``-prefixed folders are ignored."""
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


def class_folders(root: Path) -> tuple[list[Item], list[dict[str, str]]]:
    """Items of the immediate subfolders of `root` (label = folder name, files found recursively), and the
    audio files lying directly in `root` (skipped: outside any class folder)."""
    records, skipped = [], []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not _ignored(entry.name):
            records.extend(Item(path=p, label=entry.name) for p in _audio_files(entry))
        elif entry.is_file() and audio.is_audio_name(entry):
            skipped.append({"path": str(entry), "reason": "outside_class_folder"})
    return records, skipped


def filename_regex(root: Path, label_re: re.Pattern) -> tuple[list[Item], list[dict[str, str]]]:
    """Audio files under `root` (recursive) labelled by the first group of `label_re` on the file name, and
    the files it does not match; raises `DataError` when it matches none."""
    records, skipped = [], []
    for p in _audio_files(root):
        m = label_re.search(p.name)
        if m is None:
            skipped.append({"path": str(p), "reason": "label_regex_no_match"})
        else:
            records.append(Item(path=p, label=first_group(m)))
    if not records:
        example = f" (e.g. {skipped[0]['path'].rsplit('/', 1)[-1]!r})" if skipped else ""
        raise DataError(
            f"--label-regex {label_re.pattern!r} matches none of the {len(skipped)} audio files{example}",
            source=str(root),
            reason="regex_no_match",
        )
    return records, skipped


def split_folders(root: Path) -> list[Item] | None:
    """Class folders under ``train/``, ``validation/``, ``test/`` (and their synonyms), the split as fold;
    None unless every subfolder of `root` is such a split."""
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not _ignored(d.name)]
    if not subdirs or not all(d.name.lower() in SPLIT_NAMES for d in subdirs):
        return None
    records = []
    for split_dir in subdirs:
        fold = canonical_split(split_dir.name)
        for rec in class_folders(split_dir)[0]:
            rec.fold = fold
            records.append(rec)
    return records


def single_manifest_csv(root: Path) -> Path | None:
    """The one CSV/TSV at the top of `root` with a path column, if any; several are ambiguous (`DataError`)."""
    found = []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
            with open(p, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ","), [])
            if pick_column({h.strip(): h for h in header}, PATH_COLUMNS):
                found.append(p)
    if len(found) > 1:
        raise DataError(
            f"several manifest CSVs here ({', '.join(p.name for p in found)}); pass the one to use",
            source=str(root),
            reason="ambiguous",
        )
    return found[0] if found else None


def csv_manifest(csv_path: Path) -> tuple[list[Item], str | None]:
    """Items of a CSV/TSV table and its fold kind (see `_table_manifest`)."""
    return _table_manifest(_read_csv(csv_path), csv_path)


def jsonl_manifest(path: Path) -> tuple[list[Item], str | None]:
    """Items of a JSON-lines table (one object per line) and its fold kind (see `_table_manifest`)."""
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
    """Rows with a path and a label column [+ fold/split, group] → items, and the fold kind: ``"split"`` for a
    ``split`` column (names made canonical), ``"cv"`` for a ``fold`` column, else None. Relative paths resolve
    against the table's folder, then ``audio/`` under it."""
    if not rows:
        raise DataError("manifest has no rows", source=str(path), reason="empty")
    columns = {c: c for c in rows[0]}
    path_col = pick_column(columns, PATH_COLUMNS)
    multi_col = pick_column(columns, MULTI_LABEL_COLUMNS)
    label_col = multi_col or pick_column(columns, LABEL_COLUMNS)
    if path_col is None or label_col is None:
        raise DataError(
            f"manifest needs a path column ({'/'.join(PATH_COLUMNS[:2])}) and a label column "
            f"({'/'.join(LABEL_COLUMNS[:2])}, or labels for ';'-separated labels); it has {list(columns)}",
            source=str(path),
            reason="bad_manifest",
        )
    fold_col = pick_column(columns, FOLD_COLUMNS)
    group_col = pick_column(columns, GROUP_COLUMNS)
    kind = None
    if fold_col is not None:
        kind = "split" if fold_col.lower() == "split" else "cv"
    base = path.parent
    records = []
    for r in rows:
        raw = cell_text(r.get(path_col)) or ""
        fold = fold_text(r.get(fold_col)) if fold_col else None
        if kind == "split" and fold is not None:
            fold = canonical_split(fold)
        labels = split_labels(r.get(label_col)) if multi_col else ()
        records.append(
            Item(
                path=_resolve(base, raw),
                label=labels[0] if labels else cell_text(r.get(label_col)) or "",
                fold=fold,
                group=cell_text(r.get(group_col)) if group_col else None,
                extra=dict(r),
                labels=labels,
            )
        )
    return records, kind


def split_labels(cell: Any) -> tuple[str, ...]:
    """The distinct labels of a ``labels`` cell (``"dog; rain"``, or a JSON-lines list), in order."""
    parts = cell if isinstance(cell, list | tuple) else (cell_text(cell) or "").split(LABEL_SEPARATOR)
    return tuple(dict.fromkeys(t for t in (cell_text(p) for p in parts) if t))


def is_multi_label_table(records: Sequence[Item]) -> bool:
    """Whether table records came from a manifest with a ``labels`` column."""
    return bool(records) and pick_column({str(c): c for c in records[0].extra}, MULTI_LABEL_COLUMNS) is not None


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



def first_group(m: re.Match) -> str:
    """The first group of a regex match (the whole match when the pattern has no group)."""
    return (m.group(1) if m.re.groups else m.group(0)) or ""



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


def pick_column(columns: dict[str, str], candidates: Sequence[str]) -> str | None:
    """The first of `candidates` (lower case) among `columns`, matched case-insensitively; its real name."""
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


def cell_text(v: Any) -> str | None:
    """A metadata value as stripped text; None when absent or empty."""
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def fold_text(v: Any) -> str | None:
    """A fold value as text, with float-looking numbers (``"3.0"``) written as integers."""
    s = cell_text(v)
    if s is not None and re.fullmatch(r"\d+\.0+", s):
        s = s.split(".")[0]
    return s
