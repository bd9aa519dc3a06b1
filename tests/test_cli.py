"""`earshot predict` and `earshot models` as a user runs them: real processes, real files."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import DATA, esc50_clip


def earshot(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "earshot.cli", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="module")
def folder_with_one_bad(tmp_path_factory, tagger):
    """100 real clips (ESC-50 and FSDD, nested folders) of which one is a truncated WAV."""
    root = tmp_path_factory.mktemp("hundred")
    esc = sorted((DATA / "esc50" / "audio").glob("*.wav"))[:60]
    fsdd = sorted((DATA / "fsdd" / "recordings").glob("*.wav"))[:39]
    for i, f in enumerate(esc + fsdd):
        sub = root / ("esc" if i < 60 else "digits" / __import__("pathlib").Path(f"s{i % 3}"))
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f.name)
    (root / "notes.txt").write_text("not audio, and not an audio file name: ignored by folder expansion")
    bad = root / "esc" / "broken.wav"
    bad.write_bytes(esc[0].read_bytes()[:3000])
    return root


def test_folder_of_100_with_one_bad_file(folder_with_one_bad):
    out = earshot("predict", str(folder_with_one_bad), "--format", "jsonl", "-k", "3")
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert len(rows) == 100
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 1 and failed[0]["title"].endswith("broken.wav")
    assert failed[0]["labels"] == [] and failed[0]["error"]["type"] == "AudioError"
    assert "broken.wav" in failed[0]["error"]["message"]
    ok = [r for r in rows if not r["error"]]
    assert all(len(r["labels"]) == 3 and len(r["labels_info"]) == 3 for r in ok)
    assert sum(r["labels"][0] == "Speech" for r in ok if "digits" in r["title"]) >= 30
    assert b"1 of 100 inputs failed" in out.stderr


def test_single_file_json_and_exit_zero():
    out = earshot("predict", str(esc50_clip("dog", 0)), "--top-k", "5")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert set(p) >= {"title", "labels", "probabilities", "labels_info", "model", "duration", "error"}
    assert p["error"] is None and p["model"] == "mn04-as"
    assert {"Dog", "Bark"} & set(p["labels"][:3])
    assert p["probabilities"] == sorted(p["probabilities"], reverse=True)


def test_csv_glob_stdin_and_output_file(tmp_path):
    pattern = str(DATA / "esc50" / "audio" / "1-1*-A-0.wav")
    target = tmp_path / "out.csv"
    out = earshot("predict", pattern, "-f", "csv", "-k", "2", "-o", str(target))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert rows and all(r["rank"] in ("1", "2") for r in rows)
    piped = earshot("predict", "-", stdin=esc50_clip("rooster", 0).read_bytes())
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["labels"]


def test_timeline_cli():
    out = earshot("predict", str(esc50_clip("dog", 0)), "--timeline", "--window", "1", "--hop", "0.5")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert len(p["segments"]) == 9 and p["segments"][0]["start"] == 0.0
    assert all({"label", "label_id", "start", "end", "score"} <= set(e) for e in p["events"])


def test_missing_input_and_unknown_model():
    out = earshot("predict", "/nonexistent/a.wav")
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"]["reason"] == "not_found"
    bad = earshot("predict", str(esc50_clip("dog", 0)), "--model", "no-such-model")
    assert bad.returncode == 2 and b"no-such-model: not a registry model" in bad.stderr


def test_command_line_front():
    """A command named first is run on its own (the fast start) yet reads as part of the whole program; anything
    else goes through the whole app."""
    helped = earshot("predict", "--help")
    assert helped.returncode == 0 and b"Usage: earshot predict [OPTIONS]" in helped.stdout
    assert b"--top-k" in helped.stdout and b"--timeline" in helped.stdout
    wrong = earshot("predict", "--no-such-flag", "x.wav")
    assert wrong.returncode == 2 and b"No such option" in wrong.stderr and b"earshot predict --help" in wrong.stderr
    whole = earshot("--help")
    assert whole.returncode == 0 and b"Usage: earshot [OPTIONS] COMMAND" in whole.stdout
    for command in (b"predict", b"train", b"serve", b"stream", b"search", b"models"):
        assert command in whole.stdout
    unknown = earshot("predicts", "x.wav")
    assert unknown.returncode == 2 and b"No such command" in unknown.stderr


def test_help_reflows_to_the_terminal():
    """A command's help is its docstring reflowed to the terminal's width, not cut where the source wraps."""
    import inspect

    from earshot.cli.predict import predict

    doc = inspect.getdoc(predict)
    assert "\n" in doc  # wrapped in the source
    env = {**os.environ, "COLUMNS": "250"}
    for args in (["--help"], ["predict", "--help"]):
        out = subprocess.run([sys.executable, "-m", "earshot.cli", *args], capture_output=True, text=True,
                             timeout=120, env=env)
        assert out.returncode == 0
        assert any(" ".join(doc.split()) in " ".join(line.split()) for line in out.stdout.splitlines())


def test_models_list_and_info():
    out = earshot("models", "list", "--format", "json")
    assert out.returncode == 0
    assert any(r["name"] == "mn04-as" and r["pulled"] for r in json.loads(out.stdout))
    info = json.loads(earshot("models", "info", "mn04-as").stdout)
    assert info["sample_rate"] == 32000 and info["onnx_check"]["max_abs_score_diff"] <= 1e-4


def test_every_named_input_ends_with_one_record(tmp_path, tagger):
    """No input hangs or vanishes: a FIFO fails at once, a folder named like audio that holds none is an error
    record, a glob matching nothing too, and a file named twice (directly and through its folder) is one record."""
    import time

    dog = tmp_path / "clips" / "dog.wav"
    dog.parent.mkdir()
    shutil.copy(esc50_clip("dog"), dog)
    (tmp_path / "empty.wav").mkdir()
    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)
    t = time.monotonic()
    out = earshot("predict", str(dog), str(dog.parent), str(tmp_path / "empty.wav"), str(fifo),
                  str(tmp_path / "nothing*.flac"), "--format", "jsonl", timeout=60)
    assert time.monotonic() - t < 30
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["title"] for r in rows] == [str(dog), str(tmp_path / "empty.wav"), str(fifo),
                                          str(tmp_path / "nothing*.flac")]
    assert rows[0]["error"] is None and rows[0]["labels"]
    assert [r["error"]["reason"] for r in rows[1:]] == ["no_audio", "not_regular", "not_found"]
    assert all(r["labels"] == [] for r in rows[1:])
    assert b"3 of 4 inputs failed" in out.stderr


def test_predict_skips_teardown_but_not_exit_handlers_nor_live_threads(tmp_path):
    """`earshot predict` ends without the interpreter's teardown, but exit handlers registered before it still run,
    its output file is whole, and a thread still running is waited for (the normal exit) instead of cut off."""
    clips = [str(esc50_clip("dog", 0)), str(esc50_clip("rain", 0))]
    runner = ("import atexit, pathlib, sys, threading, time\n"
              "marker, late, args = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]\n"
              "atexit.register(marker.write_text, 'ran')\n"
              "if late.name != 'none':\n"
              "    threading.Thread(target=lambda: (time.sleep(1.0), late.write_text('done'))).start()\n"
              "sys.argv = ['earshot', *args]\n"
              "from earshot.cli import main\n"
              "main()\n")
    for late_name in ("none", "late.txt"):
        marker, late, out = tmp_path / f"marker-{late_name}", tmp_path / late_name, tmp_path / f"out-{late_name}.jsonl"
        proc = subprocess.run([sys.executable, "-c", runner, str(marker), str(late), "predict", *clips, "-f", "jsonl",
                               "-o", str(out), "--quiet"], capture_output=True, timeout=300, env=os.environ.copy())
        assert proc.returncode == 0, proc.stderr
        assert marker.read_text() == "ran"
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["title"] for r in rows] == clips and all(r["error"] is None and r["labels"] for r in rows)
        if late_name != "none":
            assert late.read_text() == "done"
    # called as a function (its arguments given), it ends in SystemExit and the caller goes on
    called = ("import sys\nfrom earshot.cli import main\ntry:\n    main(sys.argv[1:])\n"
              "except SystemExit as e:\n    print('after', e.code)\n")
    proc = subprocess.run([sys.executable, "-c", called, "predict", clips[0], "-f", "jsonl", "--quiet"],
                          capture_output=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == b"after 0", (proc.stdout, proc.stderr)
    # under a profiler the normal exit happens, so the profiler still reports
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-m", "earshot.cli", "predict", clips[0], "-f", "jsonl",
                           "--quiet"], capture_output=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["error"] is None and b"function calls" in proc.stdout
