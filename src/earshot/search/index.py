"""A search index of window embeddings and its portable on-disk format.

An index is a folder or an `s3://bucket/prefix` holding:

- `index.json` — format and version, the library and its file, the model (name, reference, sample rate,
  embedding `dim`), `window` / `hop` in seconds, the metric (`cosine`: vectors are stored L2-normalised), and one
  entry per indexed file: `id` (its key under the indexed root), `location` (path or URL), `version` (mtime and
  size, or ETag), `sha256` of its bytes, `duration`, and its rows `first` .. `first + count - 1`.
- `windows.<token>.npz` — per row: `file_number` (the file's `n`, -1 once replaced), `start`, `end` (seconds).
- `vectors.<token>.faiss` — the faiss HNSW graph (`IndexHNSWFlat`, inner product) of the unit vectors, row `i`
  being faiss's id `i`; rows whose `file_number` is -1 are dead and skipped by searches.

No pickle anywhere: JSON, `np.load(allow_pickle=False)` and faiss's own file (versioned, the same on every
platform, read by faiss from C++ and Python). A save writes new data files under a fresh token, then replaces
`index.json`, then removes the old ones: a reader (or a crash) sees either the old index or the new one. A save
where more than a quarter of the rows are dead rebuilds the vectors without them. Writers of a local index take a
lock on `.lock` in the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from earshot.errors import StorageError
from earshot.search.vectors import FILE_SUFFIX, LIBRARY, SearchError, VectorIndex, library_version

FORMAT = "earshot-search-index"
FORMAT_VERSION = 1
META = "index.json"
COLUMNS = ("file_number", "start", "end")
COMPACT_DEAD = 0.25  # a save rebuilds the vectors once more than this share of rows is dead


@dataclass
class FileEntry:
    """One indexed file: its id, where it was read, what it was, and its rows."""

    n: int
    id: str
    location: str
    version: str
    sha256: str
    duration: float
    first: int
    count: int

    def rows(self) -> np.ndarray:
        return np.arange(self.first, self.first + self.count, dtype=np.int64)


class SearchIndex:
    """Window embeddings of many files under one model, window and hop, searchable by cosine similarity."""

    def __init__(self, url: str, meta: dict[str, Any], files: list[FileEntry], windows: dict[str, np.ndarray],
                 vectors: VectorIndex | None, *, store: Any, workdir: Path, writable: bool = True) -> None:
        self.url, self.meta, self.store, self.workdir, self.writable = url, meta, store, workdir, writable
        self.files: dict[str, FileEntry] = {f.id: f for f in files}
        self._by_number = {f.n: f for f in files}
        self._windows = {k: windows[k] for k in COLUMNS}
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._rows = len(windows["file_number"])
        self.vectors = vectors

    def _table(self) -> dict[str, np.ndarray]:
        """The per-row arrays (`COLUMNS`), with rows added since the last call appended."""
        if self._pending:
            parts = [tuple(self._windows[k] for k in COLUMNS), *self._pending]
            self._windows = {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(COLUMNS)}
            self._pending = []
        return self._windows

    def spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) in seconds of rows."""
        t = self._table()
        return t["start"][rows], t["end"][rows]

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def window(self) -> float:
        return float(self.meta["window"])

    @property
    def hop(self) -> float:
        return float(self.meta["hop"])

    @property
    def live_rows(self) -> int:
        return sum(f.count for f in self.files.values())

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"SearchIndex({self.url!r}, {len(self.files)} files, {self.live_rows} windows, {self.model})"

    def summary(self) -> dict[str, Any]:
        """What `earshot index` reports and the server lists: model, window, hop, counts."""
        return {"index": self.url, "model": self.model, "window": self.window, "hop": self.hop,
                "dim": self.meta.get("dim"), "files": len(self.files), "windows": self.live_rows,
                "library": self.meta.get("library"), "updated": self.meta.get("updated")}

    @classmethod
    def create(cls, url: str | os.PathLike, *, model: str, model_ref: str, sample_rate: int, window: float,
               hop: float, endpoint_url: str | None = None) -> SearchIndex:
        """An empty index at `url` (written by the first `save`)."""
        store, workdir = _open(os.fspath(url), endpoint_url, create=True)
        now = _now()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "library": LIBRARY, "library_version": library_version(),
                "metric": "cosine", "model": model, "model_ref": model_ref, "sample_rate": sample_rate, "dim": None,
                "window": float(window), "hop": float(hop), "created": now, "updated": now, "next_file": 0}
        return cls(store.url, meta, [], _empty_windows(), None, store=store, workdir=workdir)

    @classmethod
    def exists(cls, url: str | os.PathLike, endpoint_url: str | None = None) -> bool:
        from earshot.pipeline.storage import open_store

        s = os.fspath(url)
        if not s.startswith("s3://") and not Path(s).is_dir():
            return False
        return open_store(s, endpoint_url=endpoint_url).head(META) is not None

    @classmethod
    def open(cls, url: str | os.PathLike, endpoint_url: str | None = None, *, writable: bool = False) -> SearchIndex:
        """The index saved at `url` (a folder or an s3:// prefix, fetched into a local cache), read-only unless
        `writable`. Raises SearchError (reason not_found, corrupt or version)."""
        s = os.fspath(url)
        if not s.startswith("s3://") and not (Path(s) / META).is_file():
            raise SearchError("no search index here (index.json missing); build one with `earshot index`",
                              source=s, reason="not_found")
        store, workdir = _open(s, endpoint_url, create=False)
        for attempt in range(3):  # a save between reading index.json and its data files: read the new one
            meta = _read_meta(store)
            try:
                return cls._load(store, workdir, meta, writable)
            except FileNotFoundError:
                if attempt == 2:
                    raise SearchError("index data files missing", source=store.url, reason="corrupt") from None
                time.sleep(0.05)
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, store: Any, workdir: Path, meta: dict[str, Any], writable: bool) -> SearchIndex:
        names = meta.get("data") or {}
        for key in names.values():
            _fetch(store, workdir, key)
        files = [FileEntry(**f) for f in meta.pop("files", [])]
        if "windows" in names:
            try:
                with np.load(workdir / names["windows"], allow_pickle=False) as z:
                    windows = {k: z[k] for k in COLUMNS}
            except (ValueError, KeyError, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                raise SearchError(f"unreadable windows file: {e}", source=store.url, reason="corrupt") from e
        else:
            windows = _empty_windows()
        vectors = None
        if "vectors" in names:
            dead = np.flatnonzero(windows["file_number"] < 0)
            vectors = VectorIndex.load(workdir / names["vectors"], int(meta["dim"]), dead)
        return cls(store.url, meta, files, windows, vectors, store=store, workdir=workdir, writable=writable)

    def entry_of_rows(self, rows: np.ndarray) -> list[FileEntry | None]:
        """The file of each row (None for rows of replaced files)."""
        return [self._by_number.get(int(n)) for n in self._table()["file_number"][rows]]

    def add_file(self, *, id: str, location: str, version: str, sha256: str, duration: float, starts: np.ndarray,
                 ends: np.ndarray, embeddings: np.ndarray) -> FileEntry:
        """Add one file's windows (replacing the file of the same id, if any)."""
        self._check_writable()
        if id in self.files:
            self.remove_file(id)
        dim = int(embeddings.shape[1])
        if self.meta["dim"] is None:
            self.meta["dim"] = dim
        elif dim != self.meta["dim"]:
            raise SearchError(f"embedding dim {dim} differs from the index's {self.meta['dim']}", source=location,
                              reason="dim_mismatch")
        if self.vectors is None:
            self.vectors = VectorIndex(dim)
        n = int(self.meta["next_file"])
        self.meta["next_file"] = n + 1
        entry = FileEntry(n, id, location, version, sha256, round(float(duration), 3), self._rows, len(embeddings))
        rows = entry.rows()
        self.vectors.add(rows, embeddings)
        self._pending.append((np.full(len(rows), n, np.int32), np.asarray(starts, np.float32),
                              np.asarray(ends, np.float32)))
        self._rows += len(rows)
        self.files[id] = entry
        self._by_number[n] = entry
        return entry

    def remove_file(self, id: str) -> None:
        self._check_writable()
        entry = self.files.pop(id)
        del self._by_number[entry.n]
        rows = entry.rows()
        if self.vectors is not None:
            self.vectors.delete(rows)
        self._table()["file_number"][rows] = -1

    def touch(self, id: str, version: str, location: str) -> None:
        """Record that a file of unchanged content has a new version (mtime) or location."""
        entry = self.files[id]
        entry.version, entry.location = version, location

    def save(self) -> None:
        """Write the index: new data files, then `index.json`, then remove files no longer named."""
        self._check_writable()
        if self.vectors is not None and self.vectors.dead_fraction > COMPACT_DEAD:
            self._compact()
        token = secrets.token_hex(4)
        data: dict[str, str] = {}
        staging = Path(tempfile.mkdtemp(prefix=".save-", dir=self.workdir))
        try:
            if self._rows:
                data["windows"] = f"windows.{token}.npz"
                with open(staging / data["windows"], "wb") as f:
                    np.savez(f, **self._table())
            if self.vectors is not None:
                data["vectors"] = f"vectors.{token}{FILE_SUFFIX}"
                self.vectors.save(staging / data["vectors"])
            for key in data.values():
                _publish(self.store, staging / key, self.workdir / key, key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.meta.update(data=data, updated=_now(), library=LIBRARY, library_version=library_version(),
                         rows=self._rows, live_rows=self.live_rows)
        body = {**self.meta, "files": [asdict(f) for f in self.files.values()]}
        self.store.put_atomic(META, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
        for obj in list(self.store.list()):
            if obj.key.startswith(("windows.", "vectors.")) and "/" not in obj.key and obj.key not in data.values():
                self.store.delete(obj.key)
        if not _is_local(self.store):
            _prune_cache(self.workdir, set(data.values()))

    def _compact(self) -> None:
        """Rebuild the vectors from the live rows only, renumbered in order (files keep their order)."""
        assert self.vectors is not None
        table = self._table()
        entries = sorted(self.files.values(), key=lambda e: e.first)
        old = np.concatenate([e.rows() for e in entries]) if entries else np.zeros(0, np.int64)
        fresh = VectorIndex(int(self.meta["dim"]))
        for i in range(0, len(old), 65536):
            part = old[i : i + 65536]
            fresh.add(np.arange(i, i + len(part)), self.vectors.vectors(part))
        first = 0
        for e in entries:
            e.first, first = first, first + e.count
        self._windows = {k: table[k][old] for k in COLUMNS}
        self._rows = len(old)
        self.vectors = fresh

    def _check_writable(self) -> None:
        if not self.writable:
            raise SearchError("this index was opened read-only", source=self.url, reason="read_only")

@contextlib.contextmanager
def writer_lock(url: str | os.PathLike) -> Iterator[None]:
    """Hold the writer's lock of a local index folder (made if missing) while it is read and updated; nothing for
    an object store. Raises SearchError(reason="locked") when another writer holds it."""
    s = os.fspath(url)
    if s.startswith("s3://"):
        yield
        return
    folder = Path(s).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchError("another `earshot index` is writing this index", source=s, reason="locked") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _empty_windows() -> dict[str, np.ndarray]:
    return {"file_number": np.zeros(0, np.int32), "start": np.zeros(0, np.float32), "end": np.zeros(0, np.float32)}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _is_local(store: Any) -> bool:
    return store.local_path(META) is not None


def _open(url: str, endpoint_url: str | None, create: bool) -> tuple[Any, Path]:
    """The store of an index and the local folder its data files are read from (the folder itself, or a cache
    under `$EARSHOT_HOME/indexes` for an object store)."""
    from earshot.models.weights import earshot_home
    from earshot.pipeline.storage import open_store

    try:
        store = open_store(url.rstrip("/") + "/" if url.startswith("s3://") else url, endpoint_url=endpoint_url,
                           create=create)
    except StorageError as e:
        raise SearchError(e.message, source=url, reason=e.reason) from e
    if _is_local(store):
        return store, Path(store.url)
    cache = earshot_home() / "indexes" / hashlib.sha256(store.url.encode()).hexdigest()[:24]
    cache.mkdir(parents=True, exist_ok=True)
    return store, cache


def _read_meta(store: Any) -> dict[str, Any]:
    try:
        raw = store.get(META)
    except StorageError as e:
        reason = "not_found" if e.reason == "not_found" else e.reason
        raise SearchError(f"cannot read {META}: {e.message}", source=store.url, reason=reason) from e
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise SearchError(f"{META} is not JSON: {e}", source=store.url, reason="corrupt") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SearchError(f"{META} is not an earshot search index", source=store.url, reason="corrupt")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise SearchError(f"index format {meta.get('version')} is newer than this earshot reads ({FORMAT_VERSION})",
                          source=store.url, reason="version")
    if meta.get("library") != LIBRARY:
        raise SearchError(f"index made with {meta.get('library')!r}, this earshot reads {LIBRARY}", source=store.url,
                          reason="version")
    return meta


def _fetch(store: Any, workdir: Path, key: str) -> None:
    """Bring an object-store data file into the local cache (names are unique per save, so a cached one is
    current)."""
    path = workdir / key
    if _is_local(store) or path.is_file():
        return
    tmp = workdir / f".{key}.{os.getpid()}.part"
    try:
        if hasattr(store, "client") and hasattr(store, "bucket"):  # S3: streamed, multipart for large files
            try:
                store.client.download_file(store.bucket, store.prefix + key, str(tmp))
            except Exception as e:
                from earshot.pipeline.storage import _s3_error

                err = _s3_error(e, key)
                if err.reason == "not_found":
                    raise FileNotFoundError(key) from e
                raise SearchError(err.message, source=store.child_url(key), reason=err.reason) from e
        else:
            tmp.write_bytes(store.get(key))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _publish(store: Any, staged: Path, local: Path, key: str) -> None:
    """Put a staged data file in place: fsync and rename into a local index, or upload it (and keep it in the
    cache) for an object store."""
    if _is_local(store):
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staged, local)
        return
    try:
        if hasattr(store, "client") and hasattr(store, "bucket"):
            store.client.upload_file(str(staged), store.bucket, store.prefix + key)
        else:
            store.put_atomic(key, staged.read_bytes())
    except StorageError:
        raise
    except Exception as e:
        from earshot.pipeline.storage import _s3_error

        raise _s3_error(e, key) from e
    os.replace(staged, local)


def _prune_cache(workdir: Path, keep: set[str]) -> None:
    for p in workdir.iterdir():
        if p.is_file() and p.name.startswith(("windows.", "vectors.")) and p.name not in keep:
            p.unlink(missing_ok=True)
