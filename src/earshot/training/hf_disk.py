"""The Hugging Face on-disk layout: a ``datasets`` folder written by ``save_to_disk``, read with pyarrow only.

``dataset_info.json`` + ``state.json`` + ``data-*.arrow``, or ``dataset_dict.json`` + one such folder per split.
Items carry the audio ``data`` bytes; ClassLabel integers become names; fold = a ``fold`` column if any, else
the split name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from earshot.errors import DataError
from earshot.training.layouts import FOLD_COLUMNS, GROUP_COLUMNS, LABEL_COLUMNS, cell_text, fold_text, pick_column
from earshot.training.manifest import Item, canonical_split


def read(root: Path) -> tuple[list[Item], str | None]:
    """Items of a `datasets.save_to_disk` folder (no `datasets` dependency) and the fold kind: ``"cv"`` when
    a ``fold`` column numbers the folds, else ``"split"`` for a dataset dict of named splits, else None."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits") or sorted(
            d.name for d in root.iterdir() if (d / "state.json").is_file()
        )
        records: list[Item] = []
        any_fold_column = False
        for name in splits:
            recs, has_fold = _read_split(root / name, split=name)
            any_fold_column |= has_fold
            records.extend(recs)
        return records, "cv" if any_fold_column else "split"
    records, has_fold = _read_split(root, split=None)
    return records, "cv" if has_fold else None


def _read_split(folder: Path, split: str | None) -> tuple[list[Item], bool]:
    """Items of one split folder, and whether it has a ``fold`` column."""
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
    label_col = label_col or pick_column({c: c for c in names}, LABEL_COLUMNS)
    if audio_col is None or label_col is None:
        raise DataError(
            f"no Audio and/or label column among {names}", source=str(folder), reason="bad_manifest"
        )
    class_names = (features.get(label_col) or {}).get("names")
    fold_col = pick_column({c: c for c in names if c not in (audio_col, label_col)}, FOLD_COLUMNS)
    group_col = pick_column({c: c for c in names if c not in (audio_col, label_col)}, GROUP_COLUMNS)
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
            label = cell_text(lab) or ""
        fold = fold_text(extra.get(fold_col)) if fold_col else (canonical_split(split) if split else None)
        group = cell_text(extra.get(group_col)) if group_col else None
        records.append(Item(path=path, label=label, fold=fold, group=group, extra=extra, data=data or None))
    return records, fold_col is not None and fold_col.lower() == "fold"


def _ftype(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None
