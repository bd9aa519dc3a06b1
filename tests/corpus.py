"""A mixed audio corpus for the pipeline tests (real clips in several formats, awkward keys, bad files), and
checks of the exactly-one-result contract on what a run wrote."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import DATA


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


def s3_results(client, bucket: str, prefix: str) -> dict[str, list[str]]:
    """`list_results` of the objects under `prefix` in `bucket`."""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
    return list_results(keys)


def wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    """Poll `cond` every `step` s until it holds or `timeout` s pass; its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
