"""`earshot embed`: per-window embeddings of every clip of a labelled data set → a packed HDF5 file.

Each clip is embedded by a backbone bundle on onnxruntime (`Classifier.embed_windows`: `window` seconds every
`hop`, the last window ending at the end of the clip) and appended to the file as it comes (`PackedWriter`), so
memory holds one clip and one write buffer whatever the data set's size. Embeddings are cached per file content
(sha256), backbone and windowing under ``$EARSHOT_HOME/embeddings/<backbone>/windows-<window>-<hop>/``: multi-label
training embeds through the same cache. Unreadable files are skipped, counted and listed in the file's attributes.
No torch here.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earshot import __version__
from earshot.errors import AudioError, DataError
from earshot.packed import PackedWriter
from earshot.training.loading import load_manifest
from earshot.training.manifest import Item, Manifest

Progress = Callable[[int, int], None]
Log = Callable[..., None]  # log(message, **event), as `earshot.training.loop.Log`


def printer(quiet: bool) -> Log:
    """A `Log` that prints messages on stderr unless `quiet`."""

    def log(message: str, **_: Any) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def backbone_key(backbone: str) -> str:
    """The cache folder name of a backbone: its registry name, or a digest of a bundle directory's graph."""
    from earshot.models import REGISTRY

    if backbone in REGISTRY:
        return backbone
    p = Path(backbone).expanduser().absolute() / "model.onnx"
    st = p.stat() if p.is_file() else None
    stamp = f"{p}|{st.st_size}|{st.st_mtime_ns}" if st else str(p)
    return "bundle-" + hashlib.sha256(stamp.encode()).hexdigest()[:16]


def windows_cache(backbone: str, window: float, hop: float) -> Path:
    from earshot.models.weights import earshot_home

    return earshot_home() / "embeddings" / backbone_key(backbone) / f"windows-{window:g}-{hop:g}"


def clip_id(item: Item, base: Path | None) -> str:
    """A clip's id in the file: its path relative to the data set's folder (the path itself outside it)."""
    if base is not None:
        try:
            return item.path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return str(item.path)


def embed_manifest(manifest: Manifest, out: str | os.PathLike, *, backbone: str = "mn04-as", window: float = 1.0,
                   hop: float | None = None, dtype: str = "float16", cache: bool = True,
                   progress: Progress | None = None, log: Log | None = None) -> dict[str, Any]:
    """Embed every item of `manifest` into the packed file `out`; returns a summary (n, n_bad, frames, ...,
    `items`: the manifest index of each row written)."""
    from earshot.classifier import Classifier

    log = log or printer(True)
    hop = hop or window
    if window <= 0 or hop <= 0:
        raise DataError("--window and --hop must be positive", reason="bad_option")
    labels = manifest.labels
    index = {lab: i for i, lab in enumerate(labels)}
    folder = windows_cache(backbone, window, hop)
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
    root = manifest.root
    base = root.parent if root is not None and root.is_file() else root
    # Resampled to the backbone's rate whatever the input's own rate: the heads trained on these embeddings are
    # exported behind the backbone's model-rate graph, which computes them that way when the bundle serves.
    clf = Classifier.load(backbone, native_rates=False)
    attrs = {"backbone": backbone, "window": float(window), "hop": float(hop), "sample_rate": clf.sample_rate,
             "layout": manifest.layout, "multi_label": bool(manifest.multi_label), "earshot_version": __version__}
    writer: PackedWriter | None = None
    bad = [(s["path"], s["reason"]) for s in manifest.skipped]
    hits, t0, n = 0, time.time(), len(manifest)
    written: list[int] = []
    try:
        for i, it in enumerate(manifest.items):
            emb, hit, reason = _clip_embeddings(clf, it, folder if cache else None, window, hop)
            hits += hit
            if emb is None:
                bad.append((str(it.path), reason))
                log(f"skipped unreadable {it.path}: {reason}", stage="skip", path=str(it.path), reason=reason)
            else:
                if writer is None:
                    writer = PackedWriter(out, dim=emb.shape[1], labels=labels, dtype=dtype,
                                          attrs={**attrs, "embedding_dim": int(emb.shape[1])})
                y = np.zeros(len(labels), dtype=bool)
                y[[index[lab] for lab in it.labels]] = True
                writer.add(clip_id(it, base), emb, y)
                written.append(i)
            if progress is not None:
                progress(i + 1, n)
        if writer is None:
            raise DataError(f"none of the {n} clips could be embedded", reason="empty")
        for path, reason in bad:
            writer.skip(path, reason)
    finally:
        if writer is not None:
            writer.close()
    summary = {"out": str(out), "n": writer.n, "n_bad": len(bad), "frames": writer.frames, "embedding_dim": writer.dim,
               "classes": len(labels), "dtype": dtype, "backbone": backbone, "window": window, "hop": hop,
               "cached": hits, "seconds": round(time.time() - t0, 2), "bad_files": [p for p, _ in bad][:50],
               "items": written}
    log(f"embedded {writer.n} clips ({hits} from cache, {len(bad)} skipped) in {summary['seconds']}s",
        stage="embedded", **{k: summary[k] for k in ("n", "n_bad", "cached")})
    return summary


def _clip_embeddings(clf: Any, item: Item, cache: Path | None, window: float,
                     hop: float) -> tuple[np.ndarray | None, bool, str]:
    """(window embeddings [T, D] float32 or None, from cache, reason when unreadable)."""
    try:
        raw = item.data if item.data is not None else item.path.read_bytes()
    except OSError as e:
        return None, False, f"read_error: {e}"
    f = cache / f"{hashlib.sha256(raw).hexdigest()}.npy" if cache is not None else None
    if f is not None and f.is_file():
        try:
            return np.load(f, allow_pickle=False), True, ""
        except (OSError, ValueError):
            pass
    try:
        _, emb = clf.embed_windows(raw, window=window, hop=hop, title=str(item.path))
    except AudioError as e:
        return None, False, f"{e.reason or 'unreadable'}: {e}"
    emb = emb.astype(np.float32)
    if f is not None:
        tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, emb, allow_pickle=False)
        os.replace(tmp, f)
    return emb, False, ""


def embed(data: str | os.PathLike, out: str | os.PathLike, *, backbone: str = "mn04-as", window: float = 1.0,
          hop: float | None = None, dtype: str = "float16", filters: Sequence[str] = (),
          label_regex: str | None = None, group_regex: str | None = None, cache: bool = True,
          endpoint_url: str | None = None, progress: Progress | None = None, quiet: bool = True) -> dict[str, Any]:
    """`earshot embed`: DATA (any layout `load_manifest` reads; a folder or s3:// prefix) → packed file `out`
    (a path or an s3:// URL, uploaded once written)."""
    from earshot.pipeline.remote import local_input, local_output

    log = printer(quiet)
    with local_input(data, endpoint_url) as local, local_output(out, endpoint_url, folder=False) as target:
        manifest = load_manifest(local, label_regex=label_regex, group_regex=group_regex, filters=filters,
                                 min_classes=1)
        log(f"{manifest.layout} layout: {len(manifest)} clips, {len(manifest.labels)} labels", stage="manifest")
        target.parent.mkdir(parents=True, exist_ok=True)
        summary = embed_manifest(manifest, target, backbone=backbone, window=window, hop=hop, dtype=dtype,
                                 cache=cache, progress=progress, log=log)
    summary["out"] = str(out)
    del summary["items"]
    return summary
