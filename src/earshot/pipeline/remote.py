"""Whole files and folders between object storage and local disk, streamed in chunks (never held in memory).

Large inputs (a packed embedding file, an audio data set under a prefix) are downloaded once into
`$EARSHOT_HOME/downloads`, keyed by URL and kept while the object's version (ETag) is unchanged; outputs (a bundle
folder, an embedding file) are written locally first and uploaded file by file (multipart for large files).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from earshot.errors import StorageError
from earshot.pipeline.storage import S3Store, open_store, parse_s3_url, safe_key

CHUNK = 8 * 2**20


def is_remote(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).startswith("s3://")


def _object(url: str, endpoint_url: str | None) -> tuple[S3Store, str]:
    """The store of an object URL's folder and the object's key in it."""
    bucket, key = parse_s3_url(url)
    folder, _, name = key.rpartition("/")
    if not name:
        raise StorageError("an object URL must name a file, not a prefix", source=url, reason="bad_url")
    store = open_store(f"s3://{bucket}/{folder}", endpoint_url=endpoint_url)
    assert isinstance(store, S3Store)
    return store, name


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=4,
                          use_threads=True)


def _downloads() -> Path:
    from earshot.models.weights import earshot_home

    return earshot_home() / "downloads"


def local_copy(url: str, endpoint_url: str | None = None) -> Path:
    """A local copy of the object at `url`, downloaded in chunks straight to disk once per object version."""
    store, name = _object(url, endpoint_url)
    info = store.head(name)
    if info is None:
        raise StorageError("no such object", source=url, reason="not_found")
    dest_dir = _downloads() / hashlib.sha256(url.encode()).hexdigest()[:24]
    dest, marker = dest_dir / name, dest_dir / ".version"
    if dest.is_file() and marker.is_file() and marker.read_text() == f"{info.version}:{info.size}":
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    try:
        store.client.download_file(store.bucket, store.prefix + name, tmp, Config=_transfer_config())
        os.replace(tmp, dest)
    except Exception as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, StorageError):
            raise
        raise StorageError(f"download failed: {e}", source=url, reason="unreachable") from e
    marker.write_text(f"{info.version}:{info.size}")
    return dest


def download_prefix(url: str, dest: Path, endpoint_url: str | None = None) -> Path:
    """Every object under `url` into folder `dest` (keys become relative paths), one streamed file at a time."""
    store = open_store(url.rstrip("/") + "/", endpoint_url=endpoint_url)
    assert isinstance(store, S3Store)
    n = 0
    for obj in store.list():
        target = dest.joinpath(*safe_key(obj.key).split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.client.download_file(store.bucket, store.prefix + obj.key, str(target), Config=_transfer_config())
        except Exception as e:
            raise StorageError(f"download failed: {e}", source=store.child_url(obj.key), reason="unreachable") from e
        n += 1
    if not n:
        raise StorageError("no objects under this prefix", source=url, reason="not_found")
    return dest


def upload_file(path: Path, url: str, endpoint_url: str | None = None) -> None:
    """Upload a local file to the object URL (multipart above 8 MB, read from disk in chunks)."""
    store, name = _object(url, endpoint_url)
    try:
        store.client.upload_file(str(path), store.bucket, store.prefix + name, Config=_transfer_config())
    except Exception as e:
        raise StorageError(f"upload failed: {e}", source=url, reason="unreachable") from e


def upload_dir(folder: Path, url: str, endpoint_url: str | None = None) -> list[str]:
    """Upload every file under `folder` to the prefix `url` (relative paths become keys); returns the keys."""
    keys = []
    base = url.rstrip("/")
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            key = p.relative_to(folder).as_posix()
            upload_file(p, f"{base}/{key}", endpoint_url)
            keys.append(key)
    return keys


@contextlib.contextmanager
def local_input(data: str | os.PathLike | None, endpoint_url: str | None = None) -> Iterator[Path | None]:
    """A local path for an input: itself when local; a cached download of an s3:// file; a temporary download
    of an s3:// prefix (a data set folder), removed afterwards; None for no input (a keyword model trained from
    its words alone)."""
    if data is None:
        yield None
        return
    text = str(data)
    if not is_remote(text):
        yield Path(text).expanduser()
        return
    if not text.endswith("/"):
        bucket, key = parse_s3_url(text)
        store = open_store(f"s3://{bucket}/", endpoint_url=endpoint_url)
        if key and store.head(key) is not None:
            yield local_copy(text, endpoint_url)
            return
    tmp = Path(tempfile.mkdtemp(prefix="earshot-data-"))
    try:
        yield download_prefix(text, tmp / "data", endpoint_url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_output(out: str | os.PathLike, endpoint_url: str | None = None, *, folder: bool = True) -> Iterator[Path]:
    """Where to write an output: `out` itself when local; for s3:// a temporary local path (a folder, or a file
    when `folder` is False) that is uploaded when the block ends without error, then removed."""
    text = str(out)
    if not is_remote(text):
        yield Path(text).expanduser()
        return
    tmp = Path(tempfile.mkdtemp(prefix="earshot-out-"))
    try:
        local = tmp / (Path(text.rstrip("/")).name or "out")
        yield local
        if folder:
            upload_dir(local, text, endpoint_url)
        else:
            upload_file(local, text, endpoint_url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
