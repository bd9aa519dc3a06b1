"""Decoder inputs: a path, bytes or a binary file object resolved to something soundfile and PyAV can open, and
the checks on the arguments every decoding call shares (the sample rate, the length limit)."""

from __future__ import annotations

import io
import math
import os
import shutil
import stat
import tempfile
from typing import IO, Any

from earshot.errors import AudioError

__all__ = ["HEAD_BYTES", "MAX_SECONDS_ENV", "Input", "Source", "check_rate", "max_seconds_limit"]

Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

MAX_SECONDS_ENV = "EARSHOT_MAX_SECONDS"
HEAD_BYTES = 4096  # bytes kept from the start of every input, for sniffing

_SPOOL_BYTES = 64 << 20  # non-seekable streams are spooled; kept in memory up to this size, then on disk


def check_rate(sample_rate: int | None) -> int | None:
    """A requested sample rate as an int (None: the native rate); ValueError unless a positive integer."""
    if sample_rate is None:
        return None
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")
    return int(sample_rate)


def max_seconds_limit(value: float | None) -> float | None:
    """The effective length limit in seconds, or None for no limit (`value` None: MAX_SECONDS_ENV)."""
    if value is None:
        env = os.environ.get(MAX_SECONDS_ENV, "").strip()
        if not env:
            return None
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"{MAX_SECONDS_ENV}={env!r} is not a number of seconds") from None
        if math.isnan(value) or value < 0:
            raise ValueError(f"{MAX_SECONDS_ENV}={env!r} must be >= 0 (0 means no limit)")
        return None if value == 0 or math.isinf(value) else value
    if math.isnan(value) or value <= 0:
        raise ValueError(f"max_seconds must be > 0 (math.inf for no limit), got {value}")
    return None if math.isinf(value) else float(value)


class Input:
    """A source resolved to what soundfile and PyAV can open: a path, or a seekable binary file object.

    ``name`` names it in errors, ``size`` is its length in bytes, ``head`` its first HEAD_BYTES bytes. Pipes and
    non-seekable or mid-stream file objects are spooled (in memory, then on disk). An empty or unreadable input
    raises AudioError on construction. Close it (or use it as a context manager) to free a spooled copy.
    """

    def __init__(self, source: Source, name: str | None) -> None:
        self.target: str | IO[bytes]
        self.path: str | None = None
        self._owned: IO[bytes] | None = None
        if isinstance(source, str | os.PathLike):
            self._from_path(os.fspath(source), name)
        elif isinstance(source, bytes | bytearray | memoryview):
            self.name = name or "<bytes>"
            data = bytes(source)
            self.size = len(data)
            self.target = self._owned = io.BytesIO(data)
        elif hasattr(source, "read"):
            self._from_file(source, name)
        else:
            raise TypeError(
                f"source must be a path, bytes or a binary file object, not {type(source).__name__}"
            )
        if self.size == 0:
            self.close()
            raise self.error("empty", "file is empty (0 bytes)")
        self.head = self._read_head()

    def error(self, reason: str, message: str) -> AudioError:
        """An AudioError about this input."""
        return AudioError(message, source=self.name, reason=reason)

    def _from_path(self, path: str | bytes, name: str | None) -> None:
        path = os.fsdecode(path)
        self.name = name or path
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            hint = (" (URLs are not fetched for a prediction: download the file first, or stream it with "
                    "`earshot stream URL --allow-url`; `earshot predict` reads s3:// objects and prefixes)")
            raise self.error("not_found", "no such file" + (hint if "://" in path else "")) from None
        except OSError as e:
            raise self.error("read_error", f"could not be read: {e.strerror or e}") from None
        if stat.S_ISDIR(st.st_mode):
            raise self.error("read_error", "is a directory, not an audio file")
        if not stat.S_ISREG(st.st_mode):
            # Opening a pipe with no writer, or reading a device, could wait forever: refuse at once.
            raise self.error("not_regular", f"is a {_kind(st.st_mode)}, not a regular file; pipe a stream "
                             "through '-' (standard input) or pass an open binary file object")
        self.path = self.target = path
        self.size = st.st_size

    def _from_file(self, f: Any, name: str | None) -> None:
        fname = getattr(f, "name", None)
        self.name = name or (os.fsdecode(fname) if isinstance(fname, str | bytes) else "<stream>")
        if isinstance(f, io.TextIOBase):
            raise self.error("read_error", "is a text-mode file object; open it in binary mode ('rb')")
        try:
            seekable = bool(f.seekable()) if hasattr(f, "seekable") else False
            if seekable and f.tell() == 0:
                f.seek(0, io.SEEK_END)
                self.size = f.tell()
                f.seek(0)
                self.target = f
            else:  # soundfile seeks to absolute offsets: give it a copy that starts where the caller is
                self._spool(f)
        except (OSError, ValueError, TypeError) as e:
            raise self.error("read_error", f"could not be read: {e}") from None

    def _spool(self, f: IO[bytes]) -> None:
        tmp = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (owned by self)
        try:
            shutil.copyfileobj(f, tmp)  # TypeError for a stream that yields str
            self.size = tmp.tell()
            tmp.seek(0)
        except Exception:
            tmp.close()
            raise
        self.target = self._owned = tmp  # type: ignore[assignment]

    def _read_head(self) -> bytes:
        try:
            if self.path is not None:
                with open(self.path, "rb") as f:
                    return f.read(HEAD_BYTES)
            f = self.target
            assert not isinstance(f, str)
            head = f.read(HEAD_BYTES)
            f.seek(0)
        except (OSError, ValueError) as e:
            self.close()
            raise self.error("read_error", f"could not be read: {getattr(e, 'strerror', None) or e}") from None
        if not isinstance(head, bytes | bytearray):
            self.close()
            raise self.error("read_error", "could not be read: the file object did not return bytes")
        return bytes(head)

    def rewind(self) -> None:
        """Back to the start of a file object (a path is reopened by each reader)."""
        if not isinstance(self.target, str):
            self.target.seek(0)

    def close(self) -> None:
        """Free a spooled copy; idempotent. A caller's file object is left open."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> Input:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"
