"""Training from each data layout on the real shared data (UrbanSound8K folds, folder per class, CSV), cross
validation, fine-tuning, the family choice and a corrupt file in the data."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from shareddata import ESC50, US8K

import earshot

pytest.importorskip("torch")

from earshot.training import embeddings_dir, feature_network, fit, write_bundle  # noqa: E402


def _fit_quiet(data, **kw):
    return fit(data, model="transfer", quiet=True, epochs=60, **kw)


def test_urbansound8k_layout_trains(tmp_path):
    r = _fit_quiet(US8K, val_fold=2)
    assert r.manifest.layout == "urbansound8k" and len(r.manifest.labels) == 10
    assert {r.manifest[int(i)].fold for i in r.val_idx} == {"2"}
    assert r.chosen.val_accuracy > 0.6  # 10 classes: chance 0.1
    assert any(embeddings_dir("mn04-as").glob("*.npy"))


def _esc10_rows():
    with open(ESC50 / "meta" / "esc50.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["esc10"] == "True"]


def test_folder_per_class_layout_trains(tmp_path):
    rows = [r for r in _esc10_rows() if r["category"] in ("dog", "rooster", "rain", "clock_tick")]
    for r in rows:
        d = tmp_path / r["category"]
        d.mkdir(exist_ok=True)
        os.symlink(ESC50 / "audio" / r["filename"], d / r["filename"])
    r = _fit_quiet(tmp_path, val_split=0.25)
    assert r.manifest.layout == "folder_per_class" and r.manifest.labels == ["clock_tick", "dog", "rain", "rooster"]
    assert len(r.train_idx) + len(r.val_idx) == 128
    assert r.chosen.val_accuracy >= 0.8


def test_csv_layout_trains(tmp_path):
    rows = _esc10_rows()
    manifest = tmp_path / "clips.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold"])
        for r in rows:
            w.writerow([str(ESC50 / "audio" / r["filename"]), r["category"], r["fold"]])
    r = _fit_quiet(manifest, val_fold=1)
    assert r.manifest.layout == "csv" and len(r.manifest) == 320 and len(r.val_idx) == 80
    assert r.chosen.val_accuracy >= 0.85


@pytest.mark.slow
def test_cross_validation_reports_mean_and_std(tmp_path):
    r = fit(ESC50, model="transfer", filters=["esc10=True", "category=dog", "category=rooster", "category=rain"],
            cv=4, epochs=40, quiet=True)
    cv = r.cv
    assert cv["k"] == 4 and len(cv["accuracy_per_fold"]) == 4
    assert cv["accuracy_mean"] == pytest.approx(np.mean(cv["accuracy_per_fold"]), abs=1e-5)
    assert 0 <= cv["accuracy_std"] < 0.2 and cv["accuracy_mean"] > 0.8


def test_auto_skips_the_cnn_when_too_few_clips_a_class():
    r = fit(US8K, model="auto", val_fold=2, epochs=60, quiet=True)
    assert [c.family for c in r.candidates] == ["transfer"] and r.chosen.family == "transfer"
    assert "too few for a CNN" in r.why and "15 training clips a class" in r.why, r.why


@pytest.mark.slow
def test_finetune_unfreezes_the_backbone(tmp_path):
    """One head epoch, then one fine-tuning epoch of the whole network; the better of the two on validation is
    kept (the backbone's weights moved exactly when the fine-tuned one won), and it exports like any other."""
    events = []
    r = fit(ESC50, model="transfer", filters=["esc10=True", "category=dog", "category=rooster"], val_fold=4,
            epochs=1, finetune=True, quiet=True, progress=events.append)
    tuned = [e for e in events if e.get("stage") == "epoch" and "finetune" in e["message"]]
    assert len(tuned) == 1 and np.isfinite(tuned[0]["loss"])
    assert r.chosen.config["finetune"] is True and len(r.chosen.history) == 2
    before = feature_network("mn04-as").state_dict()
    after = r.chosen.model.backbone.state_dict()
    moved = max(float((after[k] - before[k]).abs().max()) for k in before if before[k].is_floating_point())
    head_acc, tuned_acc = (h["val_acc"] for h in r.chosen.history)
    assert r.chosen.val_accuracy == max(head_acc, tuned_acc)
    assert (moved > 0) == (tuned_acc > head_acc)
    bundle = write_bundle(r, tmp_path / "tuned")
    card = json.loads((bundle / "card.json").read_text())
    assert card["training"]["finetune"] is True and card["metrics"]["n"] == 16


def test_auto_choice_breaks_ties_by_domain():
    from earshot.training.families import choose
    from earshot.training.loop import Trained

    def cand(family: str, acc: float) -> Trained:
        return Trained(family, None, 16000, 1.0, 1.0, acc, [])

    transfer, cnn = cand("transfer", 1.0), cand("cnn", 1.0)
    assert choose([transfer, cnn], speech_like=True) is cnn  # speech-like: the CNN on a tie
    assert choose([transfer, cnn], speech_like=False) is transfer  # otherwise the first
    better = cand("transfer", 1.0)
    assert choose([better, cand("cnn", 0.985)], speech_like=True) is better  # accuracy first beyond a point
    both = cand("cnn+speech", 0.995)  # speech-like: a point or less behind the best is a tie
    assert choose([transfer, cnn, cand("speech", 1.0), both], speech_like=True) is both
    assert choose([cand("transfer", 0.995), cnn], speech_like=False) is cnn  # otherwise no margin


def test_bad_model_family_is_rejected():
    with pytest.raises(earshot.DataError):
        fit(ESC50, model="resnet", quiet=True)


def test_corrupt_file_is_reported(tmp_path, capsys):
    rows = [r for r in _esc10_rows() if r["category"] in ("dog", "rooster")][:24]
    for r in rows:
        d = tmp_path / r["category"]
        d.mkdir(exist_ok=True)
        shutil.copy(ESC50 / "audio" / r["filename"], d / r["filename"])
    (tmp_path / "dog" / "broken.wav").write_bytes(b"not audio at all")
    events = []
    r = fit(tmp_path, model="transfer", epochs=20, progress=events.append)
    assert r.manifest.skipped == [
        {"path": str(tmp_path / "dog" / "broken.wav"), "reason": r.manifest.skipped[0]["reason"]}
    ]
    assert r.manifest.summary()["skipped"] == 1
    assert "broken.wav" in capsys.readouterr().err
    assert any(e.get("stage") == "skip" for e in events)
