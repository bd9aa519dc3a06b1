"""Object stores of the pipeline: local folders and S3-compatible buckets behind one interface.

A store is rooted at a folder or at `s3://bucket/prefix`; keys are relative, `/`-separated, any unicode. Output keys
are checked by `safe_key` so that a result can never land outside the store's root.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tempfile
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from earshot.errors import StorageError
from earshot.permissions import dir_mode, file_mode

TEMP_MARK = ".earshot-tmp"


@dataclass(frozen=True)
class ObjectInfo:
    """One object: key relative to the store root, size in bytes, and a version (ETag or mtime+size)."""

    key: str
    size: int
    version: str


def safe_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise StorageError(reason="unsafe_key").

    Rejected: empty, absolute (`/x`, `C:x`), backslashes, NUL/control characters, empty, `.` or `..` segments.
    """
    bad = None
    if not isinstance(key, str) or not key:
        bad = "empty key"
    elif key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        bad = "absolute key"
    elif "\\" in key:
        bad = "backslash in key"
    elif any(unicodedata.category(c) == "Cc" for c in key):
        bad = "control character in key"
    else:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            bad = "empty, '.' or '..' segment in key"
    if bad:
        raise StorageError(bad, source=repr(key), reason="unsafe_key")
    return key


class Store(ABC):
    """A flat key space under a root: list, get, atomic put, delete."""

    url: str

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in no particular order."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; StorageError(reason="not_found"|"unreachable"|...) on failure."""

    @abstractmethod
    def put_atomic(self, key: str, data: bytes, *, sync_folder: bool = True) -> None:
        """Write the whole object or nothing (readers never see a partial object), durably. `sync_folder=False`
        leaves the new name's durability to a later `sync_folders` covering it (one sync for many objects)."""

    def sync_folders(self, keys: Iterable[str]) -> None:  # noqa: B027 - nothing to do for most stores
        """Make the names of objects written with `sync_folder=False` (and deletions beside them) durable."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; missing is fine."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for the object when the store is local, else None."""
        return None

    def child_url(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalStore(Store):
    """A folder. Hidden entries (dot files/folders) are not listed; puts are temp file + fsync + os.replace."""

    def __init__(self, root: str | os.PathLike, *, create: bool = False):
        self.root = Path(root).expanduser().absolute()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)
        self._real_root = os.path.realpath(self.root)

    def _path(self, key: str) -> Path:
        safe_key(key)
        parts = key.split("/")
        # Folders of the key that are symlinks must not lead out of the root either (the root was resolved once).
        # Only existing folders can be links: the first missing one (to be created) ends the check.
        folder = self.root
        for name in parts[:-1]:
            folder = folder / name
            try:
                if not stat.S_ISLNK(os.lstat(folder).st_mode):
                    continue
            except FileNotFoundError:
                break
            real = os.path.realpath(folder)
            if real != self._real_root and not real.startswith(os.path.join(self._real_root, "")):
                raise StorageError("key resolves outside the store", source=key, reason="unsafe_key")
        return self.root.joinpath(*parts)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            raise StorageError("folder not found", source=str(self.root), reason="not_found")
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if prefix and not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")

    def stat_age(self, key: str) -> float | None:
        """Seconds since the file was last modified (None when missing)."""
        try:
            return time.time() - self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise StorageError("no such file", source=key, reason="not_found") from e
        except OSError as e:
            raise StorageError(str(e), source=key, reason="read_error") from e

    def put_atomic(self, key: str, data: bytes, *, sync_folder: bool = True) -> None:
        path = self._path(key)

        def temp() -> tuple[int, str]:
            return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_MARK)

        try:
            try:
                fd, tmp = temp()
            except FileNotFoundError:  # the first file in this folder
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = temp()
            try:
                try:
                    os.fchmod(fd, file_mode())  # readable as a plain write would be, not mkstemp's 0600
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                with _suppress():
                    os.unlink(tmp)
                raise
            if sync_folder:
                _fsync_folder(path.parent)
        except OSError as e:
            raise StorageError(str(e), source=key, reason="write_error") from e

    def sync_folders(self, keys: Iterable[str]) -> None:
        for folder in {self._path(k).parent for k in keys}:
            try:
                _fsync_folder(folder)
            except OSError as e:
                raise StorageError(str(e), source=str(folder), reason="write_error") from e

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(str(e), source=key, reason="write_error") from e

    def sweep_temp(self) -> int:
        """Remove temp files left by writers that died (their pid is gone); returns how many."""
        n = 0
        if not self.root.is_dir():
            return 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if not name.endswith(TEMP_MARK):
                    continue
                try:
                    pid = int(name[: -len(TEMP_MARK)].rsplit(".", 2)[-2])
                except (ValueError, IndexError):
                    continue
                if not pid_alive(pid):
                    with _suppress():
                        os.unlink(os.path.join(dirpath, name))
                        n += 1
        return n


def _fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename or an unlink in it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


_UNREACHABLE = ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError")


def _s3_error(e: Exception, key: str) -> StorageError:
    name = type(e).__name__
    code = ""
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        code = str(resp.get("Error", {}).get("Code", ""))
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    else:
        status = None
    if code in ("NoSuchKey", "404", "NotFound"):
        reason = "not_found"
    elif code in ("NoSuchBucket",):
        reason = "no_bucket"
    elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        reason = "denied"
    elif name in _UNREACHABLE or "Connection" in name or (status and status >= 500) or code in ("SlowDown",):
        reason = "unreachable"
    else:
        reason = "error"
    return StorageError(f"{name} {code}".strip() + f": {e}", source=key, reason=reason)


class S3Store(Store):
    """A bucket prefix on any S3-compatible endpoint (boto3, standard credential chain)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, *, client=None):
        if not bucket:
            raise StorageError("no bucket in S3 URL", reason="bad_url")
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        self.url = f"s3://{bucket}/{prefix}"
        self._client = client

    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as e:  # pragma: no cover - depends on the install
                raise StorageError(
                    "S3 needs boto3: pip install 'earshot[s3]'", source=self.url, reason="needs_s3_extra"
                ) from e
            session = boto3.session.Session()
            cfg = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
            )
            self._client = session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=session.region_name or "us-east-1",
                config=cfg,
            )
        return self._client

    def __getstate__(self):
        """A pickled store (one shipped to a Ray actor or another process) leaves its client behind and connects
        anew where it is used."""
        d = dict(self.__dict__)
        d["_client"] = None
        return d

    def _full(self, key: str) -> str:
        return self.prefix + key

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) :]
                    if not key or key.endswith("/"):
                        continue
                    yield ObjectInfo(key, int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'))
        except StorageError:
            raise
        except Exception as e:
            raise _s3_error(e, self.url) from e

    def head(self, key: str) -> ObjectInfo | None:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as e:
            err = _s3_error(e, key)
            if err.reason == "not_found":
                return None
            raise err from e
        return ObjectInfo(key, int(r.get("ContentLength", 0)), str(r.get("ETag", "")).strip('"'))

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except Exception as e:
            raise _s3_error(e, key) from e

    def put_atomic(self, key: str, data: bytes, *, sync_folder: bool = True) -> None:
        safe_key(key)  # a PUT is atomic and durable by itself
        ctype = "application/json" if key.endswith(".json") else "application/octet-stream"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=ctype)
        except Exception as e:
            raise _s3_error(e, key) from e

    def delete(self, key: str) -> None:
        safe_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as e:
            err = _s3_error(e, key)
            if err.reason != "not_found":
                raise err from e


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix


def open_store(url: str | os.PathLike, *, endpoint_url: str | None = None, create: bool = False) -> Store:
    """A Store for `s3://bucket/prefix`, `file:///path` or a plain folder path."""
    s = os.fspath(url)
    if s.startswith("s3://"):
        bucket, prefix = parse_s3_url(s)
        return S3Store(bucket, prefix, endpoint_url)
    if "://" in s and not s.startswith("file://"):
        raise StorageError("unsupported URL scheme (use a folder or s3://bucket/prefix)", source=s, reason="bad_url")
    if s.startswith("file://"):
        s = s[len("file://") :]
    return LocalStore(s, create=create)


def nested_prefix(src: Store, dst: Store) -> str | None:
    """The key prefix (relative to `src`) under which `dst` lies, "" when they are the same, None when apart."""
    if isinstance(src, LocalStore) and isinstance(dst, LocalStore):
        a, b = src.root.resolve(), dst.root.resolve()
        if a == b:
            return ""
        if a in b.parents:
            return b.relative_to(a).as_posix() + "/"
    if (isinstance(src, S3Store) and isinstance(dst, S3Store) and src.bucket == dst.bucket
            and dst.prefix.startswith(src.prefix)):
        return dst.prefix[len(src.prefix) :]
    return None


def result_keys(key: str) -> tuple[str, str]:
    """(`<key>.json`, `<key>.error.json`) for a source key, both checked safe."""
    safe_key(key)
    return key + ".json", key + ".error.json"


def join_key(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p])


def fetch_bundle(url: str, cache: Path, *, endpoint_url: str | None = None) -> Path:
    """A local copy of the model bundle stored under an object-store prefix (`model.onnx`, `card.json` and
    whatever sits beside them, such as plots), kept under `cache` and fetched again only when an object's version
    (ETag) changes. Returns the bundle directory. Raises StorageError when the prefix holds no bundle."""
    import hashlib
    import json
    import shutil
    import tempfile

    from earshot.bundle import CARD_FILE, MODEL_FILE

    store = open_store(url.rstrip("/") + "/", endpoint_url=endpoint_url)
    objects = sorted((o for o in store.list() if "/" not in o.key), key=lambda o: o.key)
    names = {o.key for o in objects}
    if not {MODEL_FILE, CARD_FILE} <= names:
        raise StorageError(f"no model bundle here ({MODEL_FILE} and {CARD_FILE} expected)", source=store.url,
                           reason="not_found")
    stamp = json.dumps({o.key: o.version for o in objects}, sort_keys=True)
    dest = Path(cache) / hashlib.sha256(store.url.encode()).hexdigest()[:24]
    marker = dest / ".source.json"
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        os.chmod(tmp, dir_mode())
        for o in objects:
            (tmp / safe_key(o.key)).write_bytes(store.get(o.key))
        (tmp / ".source.json").write_text(stamp)
        old = dest.with_name(dest.name + f".old{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
