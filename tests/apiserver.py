"""An earshot server in its own process on 127.0.0.1, for tests that talk to it over real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(tmp: Path, **settings: str) -> Iterator[tuple[str, int]]:
    """`earshot.serve.run` in a child process with EARSHOT_* `settings`; yields (base URL, pid) once warm."""
    port = free_port()
    env = {**os.environ, "EARSHOT_STATE_DIR": str(tmp / "state"), "EARSHOT_MODELS_DIR": str(tmp / "models")}
    env.update({"EARSHOT_" + k.upper(): v for k, v in settings.items()})
    code = f"from earshot.serve import run; run('mn04-as', '127.0.0.1', {port}, log_level='warning')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, "server exited during startup"
            assert time.time() < deadline, "server did not become ready"
            try:
                if httpx.get(base + "/healthz", timeout=1).json()["models_loaded"]:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
