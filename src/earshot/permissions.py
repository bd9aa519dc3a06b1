"""File modes that follow the process umask. Temporary files (mkstemp: 0600, mkdtemp: 0700) become results, cards
and caches that other users or services must be able to read, so each gets the mode a plain `open()` or `mkdir()`
would have given it."""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_umask: int | None = None


def umask() -> int:
    """The process umask, read once (from /proc where it is shown, else by setting and restoring it)."""
    global _umask
    if _umask is None:
        with _lock:
            if _umask is None:
                _umask = _read_umask()
    return _umask


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def file_mode() -> int:
    """What `open(path, "w")` would give a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """What `mkdir` would give a new folder: 0777 less the umask."""
    return 0o777 & ~umask()
