"""Earshot servers for the tests that talk to one over real sockets on 127.0.0.1: in its own process
(`server_process`) or in a thread of the test (`running_server`), and helpers to reach them."""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import esc50_clip, free_port

from earshot.serve import Settings, create_app

HAS_TRAIN = importlib.util.find_spec("earshot.training") is not None


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


@contextmanager
def running_server(tmp: Path, **overrides):
    """uvicorn serving `create_app(Settings(...))` in a thread on a free port; yields the base URL."""
    import uvicorn

    overrides.setdefault("state_dir", tmp / "state")
    overrides.setdefault("models_dir", tmp / "models")
    settings = Settings.from_env({}, **overrides)
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_loaded(base, settings.api_keys[0] if settings.api_keys else None)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_loaded(base: str, key: str | None = None, timeout: float = 120) -> None:
    """Block until the default model is warm (first build of the bundle can take a while)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if httpx.get(base + "/healthz").json()["models_loaded"]:
            return
        time.sleep(0.05)
    raise AssertionError("default model never loaded")


def class_zip(per_class: int = 6, classes=("dog", "rooster"), wrap: str = "data") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for cat in classes:
            for i in range(per_class):
                z.write(esc50_clip(cat, i), f"{wrap}/{cat}/{cat}_{i}.wav")
        z.writestr("__MACOSX/._junk", b"junk")
    return buf.getvalue()


def wait_job(c: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {job['status']}")
