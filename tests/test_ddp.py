"""`earshot train --devices 2`: two torchrun processes (gloo on CPU) train one model with DistributedDataParallel.
The transfer features are computed once (rank 0 fills a cold cache, rank 1 reads it), only rank 0 writes the
bundle, and validation accuracy on ESC-10 (folds 1-3 → 4) is within a point of one process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import DATA
from shareddata import ESC50

from earshot.training.features import FEATURES_VERSION, feature_extractor

EPOCHS = 30


@pytest.mark.slow
def test_two_processes_match_one_on_esc10(tmp_path):
    from earshot.training import fit

    one = fit(ESC50, model="transfer", filters=["esc10=True"], val_fold=4, epochs=EPOCHS, seed=0, quiet=True)

    # A cold feature cache (the exported extractor copied, no features) in a home of its own.
    home = tmp_path / "home"
    cache = home / "embeddings" / "mn04-as" / FEATURES_VERSION
    shutil.copytree(feature_extractor("mn04-as"), cache / "extractor")
    env = {**os.environ, "EARSHOT_HOME": str(home)}
    env.pop("OMP_NUM_THREADS", None)
    out = tmp_path / "esc10-ddp"
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "train", str(ESC50), "--out", str(out),
                        "--model", "transfer", "--filter", "esc10=True", "--val-fold", "4", "--epochs", str(EPOCHS),
                        "--devices", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines() == [str(out)]

    computed = re.findall(r"\] features: 320 clips \((\d+) from cache", r.stderr)
    shared = re.findall(r"\[rank 1\] features: 320 clips \((\d+) from cache", r.stderr)
    assert computed[:1] == ["0"] and shared == ["320"], r.stderr[-3000:]
    assert len(list(cache.glob("*.npy"))) == 320

    card = json.loads((out / "card.json").read_text())
    assert card["training"]["distributed"]["processes"] == 2
    assert card["training"]["distributed"]["backend"] == "gloo"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == ["model.onnx"]
    acc_ddp, acc_one = card["metrics"]["accuracy"], one.chosen.val_accuracy
    assert card["metrics"]["n"] == 80
    assert abs(acc_ddp - acc_one) <= 0.01 + 1e-9, (acc_ddp, acc_one)
    assert acc_ddp >= 0.9


@pytest.mark.slow
def test_cnn_trains_with_two_processes(tmp_path):
    """The CNN family under --devices 2: BatchNorm statistics and the stopping decision follow rank 0, and the
    bundle (written once) serves as any other."""
    import earshot

    data = tmp_path / "digits"
    data.mkdir()
    for digit in "0123":
        for clip in sorted((DATA / "fsdd" / "recordings").glob(f"{digit}_*.wav"))[:60]:
            shutil.copyfile(clip, data / clip.name)
    out = tmp_path / "digits-ddp"
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "train", str(data), "--out", str(out), "--model", "cnn",
                        "--label-regex", r"^(\d)_", "--group-regex", r"^\d_([a-z]+)_", "--epochs", "3",
                        "--devices", "2", "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["family"] == "cnn" and card["training"]["distributed"]["processes"] == 2
    assert len(card["training"]["history"]) == 3 and card["metrics"]["n"] == 40
    p = earshot.load(out).predict(data / sorted(os.listdir(data))[0])
    assert p.error is None and p.labels[0] in "0123"


def test_devices_rejects_what_it_cannot_split(tmp_path):
    """Bad data is reported once by the launcher (no torchrun traceback per rank); fine-tuning stays single."""
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "train", str(tmp_path), "--out", str(tmp_path / "b"),
                        "--devices", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "earshot:" in r.stderr and "torchrun" not in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "train", str(ESC50), "--out", str(tmp_path / "b"),
                        "--devices", "2", "--finetune"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--finetune" in r.stderr, r.stderr[-2000:]
