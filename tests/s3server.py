"""Object-storage test helpers: a real moto S3 server subprocess on 127.0.0.1, a mixed audio corpus, and checks
of the exactly-one-result contract."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")).resolve() / "data"

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`python -m moto.server` as a real process; in-memory, so a restart starts empty."""

    def __init__(self, port: int | None = None, log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        out = self.log.open("ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, **S3_ENV}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("moto_server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(name="s3")
def s3_fixture(tmp_path, monkeypatch):
    """A fresh moto server with bucket `earshot` (credentials/endpoint exported to the environment)."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    srv = MotoServer(log=tmp_path / "moto.log").start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", srv.url)
    srv.client().create_bucket(Bucket="earshot")
    yield srv
    srv.kill()


# ------------------------------------------------------------------------------------------------ corpus


def _esc50() -> list[Path]:
    return sorted((DATA / "esc50" / "audio").glob("*.wav"))


def _fsdd() -> list[Path]:
    return sorted((DATA / "fsdd" / "recordings").glob("*.wav"))


BAD_KINDS = ("empty", "text", "truncated")


def build_corpus(root: Path, n: int = 200, *, seed: int = 0, n_bad: int | None = None) -> dict[str, str]:
    """Write `n` files under `root` from real clips: ESC-50/FSDD wav, some as flac/ogg, keys with spaces and
    unicode, plus bad ones (empty, text, truncated). Returns {key: kind} with kind "ok" or a bad kind."""
    rng = np.random.default_rng(seed)
    esc, fsdd = _esc50(), _fsdd()
    n_bad = max(3, n // 20) if n_bad is None else n_bad
    kinds: dict[str, str] = {}
    dirs = ["", "esc/", "fsdd/", "with space/", "été ünïcode/", "深い/階層/"]
    for i in range(n):
        d = dirs[i % len(dirs)]
        if i < n_bad:
            kind = BAD_KINDS[i % len(BAD_KINDS)]
            key = f"{d}bad {kind} {i:03d}.wav"
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "empty":
                path.write_bytes(b"")
            elif kind == "text":
                path.write_text("this is not audio, just text\n" * 20)
            else:
                src = esc[int(rng.integers(len(esc)))].read_bytes()
                path.write_bytes(src[:30])  # a header cut short
            kinds[key] = kind
            continue
        use_esc = i % 4 != 3
        clip = (esc if use_esc else fsdd)[int(rng.integers(len(esc if use_esc else fsdd)))]
        fmt = ("wav", "wav", "flac", "ogg")[i % 4] if use_esc else ("wav", "flac")[i % 2]
        stem = f"{'dog bark' if i % 5 == 0 else 'clip'} {i:03d} {'ñ' if i % 7 == 0 else ''}".strip()
        key = f"{d}{stem}.{fmt}"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "wav":
            shutil.copyfile(clip, path)
        else:
            y, sr = sf.read(clip, dtype="float32")
            sf.write(path, y, sr, format=fmt.upper(), **({"subtype": "VORBIS"} if fmt == "ogg" else {}))
        kinds[key] = "ok"
    return kinds


def upload_folder(client, bucket: str, folder: Path, prefix: str = "") -> list[str]:
    """Upload every file under `folder` to `bucket/prefix`, returning the keys (relative to prefix)."""
    keys = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            key = p.relative_to(folder).as_posix()
            client.put_object(Bucket=bucket, Key=prefix + key, Body=p.read_bytes())
            keys.append(key)
    return keys


def list_results(files: list[str]) -> dict[str, list[str]]:
    """{input key: [result names]} from a list of output keys (`<key>.json` / `<key>.error.json`)."""
    out: dict[str, list[str]] = {}
    for f in files:
        if f.endswith(".error.json"):
            out.setdefault(f[: -len(".error.json")], []).append(f)
        elif f.endswith(".json"):
            out.setdefault(f[: -len(".json")], []).append(f)
    return out


def local_results(out: Path) -> dict[str, list[str]]:
    """`list_results` of every file under a local output folder."""
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    return list_results(files)


def assert_exactly_one(kinds: dict[str, str], results: dict[str, list[str]], read) -> None:
    """Every input has exactly one result, of the right kind, and every result parses."""
    assert set(results) == set(kinds), (set(kinds) ^ set(results))
    for key, kind in kinds.items():
        files = results[key]
        assert len(files) == 1, (key, files)
        doc = json.loads(read(files[0]))
        assert doc["title"] == key
        if kind == "ok":
            assert files[0] == key + ".json", (key, doc.get("error"))
            assert doc["error"] is None and doc["labels"] and doc["model"] == "mn04-as"
        else:
            assert files[0] == key + ".error.json"
            assert doc["labels"] == [] and doc["error"]["type"] == "AudioError"
            assert doc["attempts"] >= 1 and doc["reason"] == doc["error"]["reason"]


def watcher_cmd(src, dst, ledger, *extra) -> list[str]:
    """The command line of a watcher process (`python -m earshot.cli watch`)."""
    return [sys.executable, "-m", "earshot.cli", "watch", str(src), str(dst), "--ledger", str(ledger),
            *map(str, extra)]
