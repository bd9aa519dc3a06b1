"""Training end to end on the real shared data: layouts → features → split → head/CNN → bundle → evaluate.

The embedding cache ($EARSHOT_HOME/embeddings) makes reruns fast; the exports (torch → ONNX) are the slow part,
so one ESC-10 transfer bundle and one small FSDD CNN bundle serve several checks.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

import earshot
from earshot.training import load_manifest, metrics_for

pytest.importorskip("torch")

from earshot.training import embeddings_dir, feature_network, fit, train, window_for, write_bundle  # noqa: E402

ESC50 = DATA / "esc50"
US8K = DATA / "urbansound8k_subset"
FSDD = DATA / "fsdd"
FSDD_LABEL = r"^(\d)_"
FSDD_GROUP = r"^\d_([a-z]+)_"


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_for():
    m = metrics_for([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6) and m["n"] == 5
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3, abs=1e-6), "recall": 1.0,
                                   "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3, abs=1e-6)


def test_window_for():
    assert window_for([0.4, 0.5, 0.6]) == 1.0
    assert window_for([5.0] * 10) == 5.0
    assert window_for([3.2, 3.9, 4.0]) == 4.0
    assert window_for([60.0]) == 10.0


def test_cnn_augmentation_varies_level_and_colouring():
    """Each training example gets its own level (±20 dB) and a smooth equaliser curve: the recording chains of
    unseen sources differ by that much (FSDD speakers sit 20 dB apart)."""
    import math

    import torch

    from earshot.training.augment import MelAugment as _MelAugment

    x = torch.full((256, 1, 64, 100), 0.5)  # a flat, steady spectrum
    out = _MelAugment(torch.Generator().manual_seed(0))(x)
    db = (out.median(dim=3).values[:, 0] - 0.5) * 5 * 10 / math.log(10)  # per example and band, in dB
    level = db.median(dim=1).values
    assert level.max() - level.min() > 30 and level.abs().max() < 40
    shape = db - db.median(dim=1, keepdim=True).values
    assert (shape.std(dim=1) > 2).float().mean() > 0.5  # most examples are coloured, not just shifted
    # smooth: neighbouring bands move together (masked bands excepted, hence the median)
    assert shape.diff(dim=1).abs().median() < 1.0


def test_utterance_norm_cancels_the_recording_chain():
    """`--input-norm utterance`: a fixed gain and a smooth equaliser (offsets on the log-mel) leave what the network
    sees unchanged, on a real spoken digit; an unknown norm is refused."""
    import math

    import torch

    from earshot.frontend import EfficientATMel
    from earshot.models.cnn import CNN_FRONTEND
    from earshot.training.cnn import UtteranceNorm

    class Seen(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    y = earshot.audio.decode(FSDD / "recordings" / "3_theo_0.wav", 16000)
    mel = EfficientATMel(**CNN_FRONTEND).eval()(torch.as_tensor(y[None]).float()).unsqueeze(1)
    band = torch.linspace(0, 1, mel.shape[2]).view(1, 1, -1, 1)
    offset = (12 + 6 * torch.cos(math.pi * band)) * math.log(10) / 10 / 5  # +12 dB, ±6 dB tilt, as log-mel units
    norm = UtteranceNorm(Seen())
    a, _ = norm(mel)
    b, _ = norm(mel + offset)
    kept = (a > norm.floor) & (b > norm.floor)
    assert kept.float().mean() > 0.3 and torch.allclose(a[kept], b[kept], atol=0.05)
    assert abs(float(mel.mean()) - float((mel + offset).mean())) > 0.5  # the raw inputs did differ
    with pytest.raises(earshot.DataError, match="input-norm"):
        fit(FSDD / "recordings", model="cnn", input_norm="cepstral", quiet=True)


# ------------------------------------------------------------------------------------------------ layouts


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


# ------------------------------------------------------------------------------------- ESC-10 transfer


@pytest.fixture(scope="module")
def esc10_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "esc10"
    events = []
    path = train(ESC50, out, model="transfer", filters=["esc10=True"], val_fold=4, test_fold=3, quiet=True,
                 progress=events.append)
    assert any(e.get("stage") == "epoch" for e in events) and events[-1]["stage"] == "done"
    return path


@pytest.mark.slow
def test_esc10_transfer_unseen_fold(esc10_bundle: Path):
    card = json.loads((esc10_bundle / "card.json").read_text())
    m = card["metrics"]
    assert m["n"] == 80 and m["accuracy"] >= 0.90, m["accuracy"]
    assert set(m) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "n"}
    assert card["multi_label"] is False and card["sample_rate"] == 32000 and card["label_ids"] is None
    assert card["training"]["family"] == "transfer" and card["training"]["backbone"] == "mn04-as"
    assert card["data"]["classes"]["dog"] == 32 and card["data"]["skipped"] == 0
    assert card["earshot_version"] == earshot.__version__
    assert card["onnx_check"]["max_abs_score_diff"] <= 1e-4
    assert (esc10_bundle / "confusion_matrix.png").stat().st_size > 1000
    assert (esc10_bundle / "learning_curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_esc10_bundle_round_trip_and_evaluate(esc10_bundle: Path):
    from earshot.bundle import read_bundle

    clf = earshot.load(esc10_bundle)
    card = read_bundle(esc10_bundle).card
    m = load_manifest(ESC50, filters=["esc10=True", "fold=4"])
    item = m.items[0]
    pred = clf.predict(item.path, top_k=3)
    assert pred.labels[0] in card["labels"] and len(pred.labels) == 3
    from earshot import audio

    y = audio.decode(item.path, 32000)
    ort_scores = clf.run(y[None])[0][0]
    assert abs(float(ort_scores.sum()) - 1.0) < 1e-4  # softmax
    from earshot.training import evaluate

    got = evaluate(esc10_bundle, ESC50, filters=["esc10=True"], val_fold=4)
    for key in ("accuracy", "macro_f1", "confusion_matrix", "n"):
        assert got[key] == card["metrics"][key], key
    again = evaluate(esc10_bundle, ESC50, filters=["esc10=True"], val_fold=4, split="val")
    assert again["accuracy"] == card["metrics"]["accuracy"]


@pytest.mark.slow
def test_test_fold_is_held_out_and_scored_once(esc10_bundle: Path):
    from earshot.training import evaluate

    card = json.loads((esc10_bundle / "card.json").read_text())
    data, test = card["data"], card["metrics"]["test"]
    # fold 3 took no part: folds 1-2 trained, fold 4 validated, fold 3 scored by the exported bundle
    assert (data["n_train"], data["n_validation"], data["n_test"]) == (160, 80, 80)
    assert data["test_fold"] == "3" and card["training"]["test_fold"] == "3"
    assert test["split"] == "test" and test["fold"] == "3" and test["n"] == 80 and test["skipped"] == 0
    got = evaluate(esc10_bundle, ESC50, filters=["esc10=True"], val_fold=3)
    for key in ("accuracy", "macro_f1", "confusion_matrix", "n"):
        assert got[key] == test[key], key
    assert test["accuracy"] >= 0.85, test["accuracy"]
    with pytest.raises(earshot.DataError, match="both the validation and the test fold"):
        fit(ESC50, model="transfer", filters=["esc10=True"], val_fold=4, test_fold=4, quiet=True)
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "train", str(ESC50), "--filter", "esc10=True",
                        "--test-fold", "9", "--out", str(esc10_bundle.parent / "never")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "no fold '9'" in r.stderr, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------- FSDD CNN


@pytest.fixture(scope="module")
def fsdd_subset(tmp_path_factory) -> Path:
    """3 speakers x 10 digits x 12 takes (symlinks), plus one corrupt file."""
    root = tmp_path_factory.mktemp("fsdd")
    for speaker in ("george", "jackson", "lucas"):
        for digit in range(10):
            for take in range(12):
                name = f"{digit}_{speaker}_{take}.wav"
                os.symlink(FSDD / "recordings" / name, root / name)
    (root / "3_lucas_99.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20)
    return root


@pytest.mark.slow
def test_fsdd_cnn_speaker_independent_with_corrupt_file(fsdd_subset: Path, tmp_path):
    import torch

    from earshot import audio
    from earshot.training import write_bundle

    r = fit(fsdd_subset, model="cnn", label_regex=FSDD_LABEL, group_regex=FSDD_GROUP, val_split=0.34, epochs=30,
            quiet=True)
    out = write_bundle(r, tmp_path / "digits")
    card = json.loads((out / "card.json").read_text())
    groups = card["data"]["split_groups"]
    assert groups["validation"] and not set(groups["train"]) & set(groups["validation"])
    assert card["data"]["skipped"] == 1
    assert card["data"]["skipped_files"][0]["path"].endswith("3_lucas_99.wav")
    assert card["data"]["n"] == 360 and card["metrics"]["n"] == 120
    assert card["metrics"]["accuracy"] >= 0.4, card["metrics"]["accuracy"]  # 10 digits: chance 0.1
    assert card["training"]["family"] == "cnn" and card["sample_rate"] == 16000
    assert card["window_seconds"] == 1.0 and card["training"]["frontend"]["n_mels"] == 64
    clf = earshot.load(out)
    clip = FSDD / "recordings" / "7_theo_0.wav"
    pred = clf.predict(clip)
    assert pred.labels[0] in [str(d) for d in range(10)]
    # the torch model vs the ONNX bundle on a real clip (padded to the window, as served)
    y = np.pad(audio.decode(clip, 16000), (0, 16000))[:16000]
    with torch.no_grad():
        ref = r.chosen.model(torch.as_tensor(y[None]))[0].numpy()
    assert np.abs(ref - clf.run(y[None])[0]).max() <= 1e-4


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
