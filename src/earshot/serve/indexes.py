"""The search indexes a server answers from (`EARSHOT_INDEX`): one index, or a folder of them, each loaded once
and loaded again when `earshot index` has updated it.

An index's name is its folder's name. Hits whose file lies under the samples folder (`EARSHOT_SAMPLES`) get the
URL that plays it (`/v1/samples/...`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from earshot.search.index import META

if TYPE_CHECKING:
    from earshot.search import SearchIndex

CHECK_S3_EVERY_S = 10.0  # an object-store index is checked for a newer version at most this often


class IndexShelf:
    """Finds indexes under a path (or one `s3://` index), loads them on first use, reloads changed ones."""

    def __init__(self, root: str | os.PathLike | None, samples_dir: Path | None = None) -> None:
        self.root = os.fspath(root) if root else None
        self.samples = samples_dir.resolve() if samples_dir else None
        self._loaded: dict[str, tuple[str, SearchIndex]] = {}  # name -> (version seen, index)
        self._checked: dict[str, float] = {}
        self._lock = threading.Lock()

    def locations(self) -> dict[str, str]:
        """Index name -> folder or URL, sorted by name."""
        if not self.root:
            return {}
        if self.root.startswith("s3://"):
            return {self.root.rstrip("/").rsplit("/", 1)[-1]: self.root}
        root = Path(self.root).expanduser()
        if (root / META).is_file():
            return {root.resolve().name: str(root)}
        if not root.is_dir():
            return {}
        return {p.name: str(p) for p in sorted(root.iterdir())
                if not p.name.startswith(".") and (p / META).is_file()}

    def default(self) -> str | None:
        names = list(self.locations())
        return "default" if "default" in names else (names[0] if names else None)

    def get(self, name: str | None) -> SearchIndex:
        """The index of that name (None: the default), current on disk. KeyError for an unknown name. Blocking:
        call off the event loop."""
        from earshot.search import SearchIndex

        found = self.locations()
        name = name or self.default()
        if name is None or name not in found:
            raise KeyError(name)
        url = found[name]
        with self._lock:
            seen = self._loaded.get(name)
            version = self._version(name, url, seen)
            if seen is not None and seen[0] == version:
                return seen[1]
            index = SearchIndex.open(url)
            self._loaded[name] = (version, index)
            return index

    def _version(self, name: str, url: str, seen: tuple[str, SearchIndex] | None) -> str:
        if not url.startswith("s3://"):
            try:
                st = os.stat(Path(url).expanduser() / META)
            except OSError:
                return ""
            return f"{st.st_mtime_ns}-{st.st_size}"
        now = time.monotonic()
        if seen is not None and now - self._checked.get(name, 0.0) < CHECK_S3_EVERY_S:
            return seen[0]
        self._checked[name] = now
        info = seen[1].store.head(META) if seen is not None else None
        return info.version if info is not None else ""

    def summaries(self) -> list[dict[str, Any]]:
        """What `/v1/indexes` lists: each index's name and, once loaded, its model and counts."""
        out = []
        for name in self.locations():
            entry: dict[str, Any] = {"name": name}
            seen = self._loaded.get(name)
            if seen is not None:
                s = seen[1].summary()
                entry.update({k: s[k] for k in ("model", "window", "hop", "files", "windows", "updated")})
            out.append(entry)
        return out

    def playable(self, location: str) -> str | None:
        """The URL that plays an indexed file, when it lies inside the samples folder."""
        if self.samples is None or location.startswith("s3://"):
            return None
        try:
            rel = Path(location).resolve().relative_to(self.samples)
        except (ValueError, OSError):
            return None
        if any(part.startswith(".") for part in rel.parts):
            return None
        return "/v1/samples/" + quote(rel.as_posix())
