"""`load_manifest`: a data set in any supported layout → a `Manifest`, with filters and regex labels/groups.

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
  against the CSV's folder, then ``audio/`` under it. A ``labels`` column (``dog;rain``) makes a multi-label
  manifest (`Item.labels`, `Manifest.multi_label`).
- ``jsonl``: a .jsonl file, one object per line, same keys as ``csv`` (also NeMo's ``audio_filepath``).
- ``split_folders``: ``train/``, ``validation/`` (``val``, ``valid``, ``dev``), ``test/``, each of class
  folders.
- ``filename_regex``: any folder when ``label_regex`` is given: files found recursively, label = first group
  of ``re.search(label_regex, file_name)``.
- ``folder_per_class``: immediate subfolders are labels, audio files inside them (recursive).

``label_regex`` on a layout that already has labels overrides them; ``group_regex`` (first group, on the file
name) sets or overrides the group on every layout. Files listed by a layout but absent from disk are kept in
``Manifest.skipped`` with reason ``missing``; training reports unreadable ones through ``Manifest.skip``.
No torch here: stdlib, numpy and (for ``hf_disk`` only) pyarrow.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from earshot.errors import DataError
from earshot.training import hf_disk, layouts
from earshot.training.layouts import first_group
from earshot.training.manifest import TEST_NAMES, VALIDATION_NAMES, Item, Manifest


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

    layout, records, meta = detect(root, label_re)
    skipped: list[dict[str, str]] = list(meta.pop("skipped", []))
    records = _apply_filters(records, filters, source=str(data))

    if label_re is not None and layout != "filename_regex":
        relabelled, hits = [], 0
        for rec in records:
            m = label_re.search(rec.path.name)
            if m is None:
                skipped.append({"path": str(rec.path), "reason": "label_regex_no_match"})
                continue
            rec.label = first_group(m)
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
                rec.group = first_group(m)
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
        options={"filters": list(filters), "label_regex": label_regex, "group_regex": group_regex,
                 "multi_label": layout in ("csv", "jsonl") and label_re is None
                 and layouts.is_multi_label_table(items)},
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



def detect(root: Path, label_re: re.Pattern | None) -> tuple[str, list[Item], dict[str, Any]]:
    """(layout name, items, metadata: ``fold_kind``, ``root``, ``skipped``) of `root`, in the order above."""
    if root.is_file():
        name = root.name.lower()
        if name == "esc50.csv":
            return "esc50", layouts.esc50(root.parent.parent, root), {"fold_kind": "cv", "root": root.parent.parent}
        if name == "urbansound8k.csv":
            return (
                "urbansound8k",
                layouts.urbansound8k(root.parent.parent, root),
                {"fold_kind": "cv", "root": root.parent.parent},
            )
        if name in ("dataset_info.json", "state.json", "dataset_dict.json"):
            return detect(root.parent, label_re)
        if root.suffix.lower() in (".csv", ".tsv"):
            records, kind = layouts.csv_manifest(root)
            return "csv", records, {"fold_kind": kind}
        if root.suffix.lower() in (".jsonl", ".ndjson"):
            records, kind = layouts.jsonl_manifest(root)
            return "jsonl", records, {"fold_kind": kind}
        raise DataError(
            "a file DATA must be a .csv/.tsv/.jsonl manifest", source=str(root), reason="unsupported"
        )

    if (
        (root / "dataset_dict.json").is_file()
        or (root / "dataset_info.json").is_file()
        and (root / "state.json").is_file()
    ):
        records, kind = hf_disk.read(root)
        return "hf_disk", records, {"fold_kind": kind}
    if (root / "meta" / "esc50.csv").is_file():
        return "esc50", layouts.esc50(root, root / "meta" / "esc50.csv"), {"fold_kind": "cv"}
    if (root / "metadata" / "UrbanSound8K.csv").is_file():
        return (
            "urbansound8k",
            layouts.urbansound8k(root, root / "metadata" / "UrbanSound8K.csv"),
            {"fold_kind": "cv"},
        )
    if (root / "validation_list.txt").is_file() or (root / "testing_list.txt").is_file():
        return "speech_commands", layouts.speech_commands(root), {"fold_kind": "split"}
    csv_path = layouts.single_manifest_csv(root)
    if csv_path is not None:
        records, kind = layouts.csv_manifest(csv_path)
        return "csv", records, {"fold_kind": kind}
    if label_re is not None:
        records, skipped = layouts.filename_regex(root, label_re)
        return "filename_regex", records, {"skipped": skipped}
    split_records = layouts.split_folders(root)
    if split_records is not None:
        return "split_folders", split_records, {"fold_kind": "split"}
    records, skipped = layouts.class_folders(root)
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


def _apply_filters(records: list[Item], filters: Sequence[str], source: str) -> list[Item]:
    """The records that pass every ``COL=VALUE`` / ``COL!=VALUE`` filter (see `load_manifest`)."""
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
        if col == "label":
            raw += list(rec.labels)
        return {str(v).strip().lower() for v in raw if v is not None} or {""}

    return [
        rec
        for rec in records
        if all(bool(values_of(rec, col) & values) != negate for (col, negate), values in parsed.items())
    ]


def _reason_text(skipped: list[dict[str, str]]) -> str:
    return ", ".join(f"{r}: {n}" for r, n in Counter(s["reason"] for s in skipped).most_common())
