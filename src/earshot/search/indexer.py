"""`earshot index`: window embeddings of every audio file under a folder, glob or `s3://` prefix, into an index.

Run again on the same index, only what is new is embedded: a file whose id (its key under the root), location and
version (mtime and size, or ETag) are unchanged is not read; one whose version changed is hashed, and embedded
again only when its bytes (sha256) changed, its old windows then being replaced. Bad files are reported, skipped
and counted. Windows of digital silence are left out (`earshot.search.silence`). Embedding runs on one
single-threaded model session per core.
"""

from __future__ import annotations

import glob
import hashlib
import io
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from earshot import audio, cores, limits
from earshot.errors import EarshotError, StorageError
from earshot.search.index import SearchIndex, writer_lock
from earshot.search.silence import audible
from earshot.search.vectors import SearchError

if TYPE_CHECKING:
    from earshot.classifier import Classifier

CHECKPOINT_S = 300.0  # a long run saves what it has at least this often


@dataclass(frozen=True)
class SourceFile:
    """An audio file to index: its id under the root, where it is, its version, and how to read it."""

    id: str
    location: str
    version: str
    path: str | None  # a local file, read by path
    read: Callable[[], bytes]


@dataclass
class Report:
    """What one `earshot index` run did."""

    index: str
    model: str
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    windows: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_sources(data: str, endpoint_url: str | None = None) -> tuple[str, list[SourceFile]]:
    """(root, audio files) of a folder (recursive), a glob, one file, or an `s3://` prefix; ids are keys under the
    root. Raises SearchError when there is nothing to read there."""
    from earshot.pipeline.storage import LocalStore, open_store

    if data.startswith("s3://"):
        store = open_store(data.rstrip("/") + "/", endpoint_url=endpoint_url)
        found = sorted((o for o in store.list() if audio.is_audio_name(o.key)), key=lambda o: o.key)
        return store.url, [SourceFile(o.key, store.child_url(o.key), o.version, None,
                                      lambda k=o.key: store.get(k)) for o in found]
    p = Path(data).expanduser()
    if p.is_dir():
        store = LocalStore(p)
        found = sorted((o for o in store.list() if audio.is_audio_name(o.key)), key=lambda o: o.key)
        return store.url, [_local(store.local_path(o.key), o.key, o.version) for o in found]
    if any(c in data for c in "*?[") and not p.exists():
        root = _glob_root(data)
        matches = sorted(Path(m).absolute() for m in glob.glob(data, recursive=True) if Path(m).is_file())
        files = []
        for m in matches:
            st = m.stat()
            files.append(_local(m, m.relative_to(root).as_posix(), f"{st.st_mtime_ns}-{st.st_size}"))
        return str(root), files
    if p.is_file():
        st = p.stat()
        return str(p.absolute().parent), [_local(p.absolute(), p.name, f"{st.st_mtime_ns}-{st.st_size}")]
    raise SearchError("no such file, folder, glob or s3:// prefix", source=data, reason="not_found")


def _local(path: Path, key: str, version: str) -> SourceFile:
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise StorageError(str(e), source=str(path), reason="read_error") from e

    return SourceFile(key, str(path), version, str(path), read)


def _glob_root(pattern: str) -> Path:
    """The folder above a glob's first wildcard."""
    parts = Path(pattern).expanduser().parts
    fixed = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return Path(*fixed).absolute() if fixed else Path.cwd()


def _sha256(src: SourceFile) -> tuple[str, bytes | None]:
    """The content hash, and the bytes when they had to be read whole (object stores)."""
    h = hashlib.sha256()
    if src.path is not None:
        try:
            with open(src.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            raise StorageError(str(e), source=src.location, reason="read_error") from e
        return h.hexdigest(), None
    data = src.read()
    h.update(data)
    return h.hexdigest(), data


@dataclass
class _Embedded:
    src: SourceFile
    sha256: str
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    duration: float = 0.0
    unchanged: bool = False


def index_sources(
    data: str | Iterable[str],
    out: str,
    *,
    model: str | None = None,
    window: float | None = None,
    hop: float | None = None,
    endpoint_url: str | None = None,
    prune: bool = False,
    workers: int | None = None,
    load: Callable[[str], Classifier] | None = None,
    on_error: Callable[[dict[str, Any]], None] | None = None,
) -> Report:
    """Index (or update the index of) every audio file under `data` into the index at `out`.

    `model`, `window` and `hop` default to the existing index's, else `mn04-as`, 1 s and the window; asking an
    existing index for others raises SearchError(reason="mismatch"). `prune` drops indexed files under these roots
    that are gone. `on_error` sees each failure record as it happens.
    """
    t0 = time.perf_counter()
    roots = [data] if isinstance(data, str) else list(data)
    with writer_lock(out):
        report = _update(roots, out, model, window, hop, endpoint_url, prune, workers, load, on_error)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _update(roots: list[str], out: str, model: str | None, window: float | None, hop: float | None,
            endpoint_url: str | None, prune: bool, workers: int | None,
            load: Callable[[str], Classifier] | None,
            on_error: Callable[[dict[str, Any]], None] | None) -> Report:
    import earshot

    if SearchIndex.exists(out, endpoint_url):
        index: SearchIndex | None = SearchIndex.open(out, endpoint_url, writable=True)
        for name, asked, have in (("model", model, index.meta.get("model_ref")), ("window", window, index.window),
                                  ("hop", hop, index.hop)):
            if asked is not None and asked != have and not (name == "model" and asked == index.model):
                raise SearchError(f"the index was built with {name} {have!r}, not {asked!r}; index into a new "
                                  "folder to change it", source=index.url, reason="mismatch")
        clf_ref = index.meta.get("model_ref") or index.model
    else:
        index = None
        clf_ref = model or "mn04-as"
        window = limits.check_window(window or 1.0)
        hop = limits.check_hop(hop or window, window)
    listed = [list_sources(r, endpoint_url) for r in roots]
    clf: Classifier = (load or earshot.load)(clf_ref)
    if index is None:
        index = SearchIndex.create(out, model=clf.name, model_ref=clf_ref, sample_rate=clf.sample_rate,
                                   window=window, hop=hop, endpoint_url=endpoint_url)
    report = Report(index.url, index.model)

    def fail(src: SourceFile, e: Exception) -> None:
        record = {"source": src.location, "type": type(e).__name__,
                  "reason": getattr(e, "reason", "error"), "message": str(e)}
        report.failed += 1
        report.errors.append(record)
        if on_error:
            on_error(record)

    todo: list[SourceFile] = []
    for (root, files), name in zip(listed, roots):
        if not files:
            fail(SourceFile(name, name, "", None, bytes), SearchError(
                f"no audio files here ({', '.join(sorted(audio.EXTENSIONS))})", source=name, reason="no_audio"))
        seen = set()
        for src in files:
            seen.add(src.id)
            entry = index.files.get(src.id)
            if entry is not None and entry.version == src.version and entry.location == src.location:
                report.unchanged += 1
            else:
                todo.append(src)
        if prune:
            prefix = root.rstrip("/") + "/"
            for entry in [e for e in index.files.values() if e.id not in seen and e.location.startswith(prefix)]:
                index.remove_file(entry.id)
                report.removed += 1
    saved = time.monotonic()
    for src, got in _embed_all(index, clf, todo, workers):
        if isinstance(got, Exception):
            fail(src, got)
            continue
        entry = index.files.get(src.id)
        if got.unchanged:
            index.touch(src.id, src.version, src.location)
            report.unchanged += 1
            continue
        try:
            index.add_file(id=src.id, location=src.location, version=src.version, sha256=got.sha256,
                           duration=got.duration, starts=got.starts, ends=got.ends, embeddings=got.embeddings)
        except SearchError as e:
            fail(src, e)
            continue
        if entry is None:
            report.added += 1
        else:
            report.replaced += 1
        if time.monotonic() - saved > CHECKPOINT_S:
            index.save()
            saved = time.monotonic()
    if report.added or report.replaced or report.removed or todo or not SearchIndex.exists(out, endpoint_url):
        index.save()
    report.files, report.windows = len(index), index.live_rows
    return report


def _embed_all(index: SearchIndex, clf: Classifier, todo: list[SourceFile],
               workers: int | None) -> Iterator[tuple[SourceFile, _Embedded | Exception]]:
    """(file, window embeddings or the failure) for each file, in order, embedded on `workers` threads."""
    workers = max(1, min(workers or cores.usable(), len(todo) or 1))
    model = clf.single_threaded() if workers > 1 else clf
    known = {e.id: e.sha256 for e in index.files.values()}

    def one(src: SourceFile) -> _Embedded | Exception:
        try:
            sha, data = _sha256(src)
            if known.get(src.id) == sha:
                return _Embedded(src, sha, unchanged=True)
            source: Any = src.path if src.path is not None else io.BytesIO(data or b"")
            starts, emb = model.embed_windows(source, window=index.window, hop=index.hop, title=src.location)
            if src.path is None:
                source.seek(0)
            duration = _duration(source, src.location, float(starts[-1]) + index.window)
            keep = audible(model, index.window, emb)
            starts, emb = starts[keep], emb[keep]
            return _Embedded(src, sha, starts, np.minimum(starts + index.window, duration), emb, duration)
        except EarshotError as e:
            return e
        except Exception as e:  # noqa: BLE001 - every file ends indexed or reported
            return SearchError(f"{type(e).__name__}: {e}", source=src.location, reason="error")

    it = iter(todo)
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[tuple[SourceFile, Future]] = deque((s, pool.submit(one, s)) for s in islice(it, 2 * workers))
        while pending:
            src, fut = pending.popleft()
            for s in islice(it, 1):
                pending.append((s, pool.submit(one, s)))
            yield src, fut.result()


def _duration(source: Any, title: str, fallback: float) -> float:
    """Seconds of audio from the header, else the end of the last window."""
    try:
        i = audio.info(source, name=title)
    except EarshotError:
        return fallback
    frames = getattr(i, "frames", None)
    return frames / i.sample_rate if frames else fallback
