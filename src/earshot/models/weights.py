"""Pretrained weight files: cache, sha256 pin, air-gapped mirror, official URL — in that order."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from earshot.errors import ModelError
from earshot.permissions import file_mode


def earshot_home() -> Path:
    """Root of earshot's cache (`EARSHOT_HOME`, default ~/.cache/earshot)."""
    return Path(os.environ.get("EARSHOT_HOME") or Path.home() / ".cache" / "earshot").expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(filename: str, url: str, sha256: str) -> Path:
    """Path of a verified local copy of a weight file, fetching it once if needed.

    Looks in the cache, then `EARSHOT_MODEL_MIRROR` (a folder searched recursively by file name, or a base
    URL), then the official URL. Every copy is checked against the pinned sha256 before use.
    """
    target = earshot_home() / "weights" / filename
    if target.is_file() and sha256_of(target) == sha256:
        return target
    mirror = os.environ.get("EARSHOT_MODEL_MIRROR", "").strip()
    tried: list[str] = []
    if mirror and not mirror.startswith(("http://", "https://")):
        for candidate in sorted(Path(mirror).expanduser().rglob(filename)):
            tried.append(str(candidate))
            if sha256_of(candidate) == sha256:
                _install(candidate, target)
                return target
    urls = [f"{mirror.rstrip('/')}/{filename}"] if mirror.startswith(("http://", "https://")) else []
    urls.append(url)
    errors: list[str] = []
    for u in urls:
        tried.append(u)
        try:
            return _download(u, target, sha256)
        except (OSError, ValueError) as e:
            errors.append(f"{u}: {e}")
    raise ModelError(
        f"could not obtain {filename} (sha256 {sha256[:12]}…). Tried: {'; '.join(errors) or ', '.join(tried)}. "
        f"Download {url} by hand and put it in {target.parent}, or set EARSHOT_MODEL_MIRROR to a folder or "
        f"base URL that holds {filename}.",
        source=filename,
        reason="download_failed",
    )


def _install(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.fchmod(fd, file_mode())
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)


def _download(url: str, target: Path, sha256: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        os.fchmod(fd, file_mode())
        import urllib.request  # only when a download is needed: keeps every start-up light

        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        got = sha256_of(Path(tmp))
        if got != sha256:
            raise ValueError(f"sha256 mismatch: got {got}")
        os.replace(tmp, target)
        return target
    finally:
        Path(tmp).unlink(missing_ok=True)
