"""What `earshot predict PATH...` reads: files, folders (recursive), globs, `s3://` prefixes and `-` (stdin)."""

from __future__ import annotations

import glob
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from earshot import audio
from earshot.errors import AudioError


def expand_inputs(paths: list[str], endpoint_url: str | None = None) -> Iterator[Any]:
    """Files, folders (recursive, audio files only), globs, s3:// prefixes and `-` (stdin) → sources, each file
    once. A named input that yields no audio (an empty folder or prefix, a glob matching nothing) yields an
    `EarshotError` in its place, so every input on the command line ends with a result or an error record."""
    seen: set[str] = set()

    def once(path: str) -> Iterator[str]:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            yield path

    for p in paths:
        if p == "-":
            yield io.BytesIO(sys.stdin.buffer.read())
        elif p.startswith("s3://"):
            from earshot.pipeline.storage import open_store

            store = open_store(p, endpoint_url=endpoint_url)
            found = [obj.key for obj in store.list() if audio.is_audio_name(obj.key)]
            yield from (RemoteObject(store, key) for key in found)
            if not found:
                yield AudioError("no audio objects under this prefix", source=p, reason="no_audio")
        elif Path(p).is_dir():
            files = [str(f) for f in sorted(Path(p).rglob("*")) if f.is_file() and audio.is_audio_name(f)]
            for f in files:
                yield from once(f)
            if not files:
                yield AudioError(f"is a folder with no audio files ({', '.join(sorted(audio.EXTENSIONS))})",
                                 source=p, reason="no_audio")
        elif any(c in p for c in "*?[") and not Path(p).exists():
            matches = sorted(m for m in glob.glob(p, recursive=True) if not Path(m).is_dir())
            for m in matches:
                yield from once(m)
            if not matches:
                yield AudioError("no file matches this pattern", source=p, reason="not_found")
        else:
            yield from once(p)


class RemoteObject(io.BytesIO):
    """An object-store key read lazily when the decoder asks; named by its URL."""

    def __init__(self, store, key: str) -> None:
        super().__init__()
        self.name = store.child_url(key)
        self._store, self._key, self._loaded = store, key, False

    def read(self, *args):  # type: ignore[override]
        self._load()
        return super().read(*args)

    def seek(self, *args):  # type: ignore[override]
        self._load()
        return super().seek(*args)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            super().write(self._store.get(self._key))
            super().seek(0)
