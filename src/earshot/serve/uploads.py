"""Upload checks: content sniffing by magic bytes and safe extraction of training archives."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from earshot.audio import formats
from earshot.errors import AudioError, DataError

# audio.formats kinds accepted as uploads → the container name sniff_audio reports
_UPLOAD_KINDS = {"wav": "wav", "avi": "wav", "flac": "flac", "ogg": "ogg", "matroska": "webm", "mp4": "mp4",
                 "mp3": "mpeg", "aac": "mpeg", "aiff": "aiff", "au": "au", "caf": "caf", "amr": "amr", "asf": "asf"}


def sniff_audio(head: bytes) -> str | None:
    """The container format from the first bytes, or None when it does not look like audio/video: wav, flac,
    ogg, webm, mp4, mpeg (mp3 or ADTS aac), aiff, au, caf, amr or asf. The magic bytes are `audio.formats`'s."""
    return _UPLOAD_KINDS.get(formats.sniff(head) or "")


def upload_title(name: str | None, fallback: str = "upload") -> str:
    """The name to report for an upload: the base name of `name` (either slash), at most 255 characters."""
    parts = [p for p in (name or fallback).replace("\\", "/").split("/") if p and p != "."]
    return parts[-1][:255] if parts else fallback


def check_audio(data: bytes, title: str) -> str:
    """Raise AudioError (empty / unsupported) unless `data` starts like a known audio container."""
    if not data:
        raise AudioError("empty upload", source=title, reason="empty")
    kind = sniff_audio(data[:64])
    if kind is None:
        raise AudioError(
            "not a recognised audio format (content checked, not the file name)",
            source=title,
            reason="unsupported",
        )
    return kind


def sniff_archive(head: bytes) -> str | None:
    """zip, tar (plain/gz/bz2/xz) or None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """Path components of an archive member, None when it is to be skipped; raises on escape attempts."""
    name = name.replace("\\", "/")
    p = PurePosixPath(name)
    if p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"absolute path in archive: {name!r}", reason="unsafe_archive")
    parts = tuple(x for x in p.parts if x not in ("", "."))
    if any(x == ".." for x in parts):
        raise DataError(f"path escapes the archive root: {name!r}", reason="unsafe_archive")
    if not parts or parts[0] == "__MACOSX" or any(x.startswith(".") for x in parts):
        return None
    return parts


class _Budget:
    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.left = max_bytes
        self.files_left = max_files

    def file(self) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise DataError("archive has too many files", reason="too_large")

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise DataError("archive expands past the size limit", reason="too_large")


def _copy(src, dst: Path, budget: _Budget) -> None:
    budget.file()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            budget.take(len(chunk))  # counted as written, whatever the headers claim
            out.write(chunk)


def extract_archive(archive: Path, dest: Path, *, max_bytes: int, max_files: int) -> Path:
    """Extract a zip/tar of class folders into `dest` safely; returns the data root.

    No member may be absolute or contain `..`; links and devices are refused; hidden files and `__MACOSX`
    are skipped; total size and file count are capped while writing. The data root is `dest`, descended
    through single wrapping folders (`data.zip` holding `data/dog/...`).
    """
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(max_bytes, max_files)
    with open(archive, "rb") as f:
        kind = sniff_archive(f.read(512))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    parts = _safe_parts(info.filename)
                    mode = info.external_attr >> 16
                    if parts is None or info.is_dir():
                        continue
                    if mode and not (stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0):
                        raise DataError(f"link or special file in archive: {info.filename!r}", reason="unsafe_archive")
                    with z.open(info) as src:
                        _copy(src, dest.joinpath(*parts), budget)
        elif kind == "tar":
            with tarfile.open(archive, "r:*") as t:
                for m in t:
                    parts = _safe_parts(m.name)
                    if parts is None or m.isdir():
                        continue
                    if not m.isreg():
                        raise DataError(f"link or special file in archive: {m.name!r}", reason="unsafe_archive")
                    src = t.extractfile(m)
                    if src is not None:
                        _copy(src, dest.joinpath(*parts), budget)
        else:
            raise DataError("not a zip or tar archive (content checked, not the file name)", reason="unsupported")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"corrupt archive: {e}", reason="corrupt") from e
    root = dest
    while True:
        entries = [e for e in root.iterdir() if not e.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            break
    if not any(p.is_file() for p in root.rglob("*")):
        raise DataError("archive holds no files", reason="empty")
    return root


def copy_stream_to(fileobj, path: Path) -> int:
    """Copy a (spooled) upload to disk; returns bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "wb") as out:
        while chunk := fileobj.read(1 << 20):
            out.write(chunk)
            n += len(chunk)
    return n


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
