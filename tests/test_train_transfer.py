"""One ESC-10 transfer bundle, trained once (the export is the slow part), for several checks: the unseen
fold's accuracy, the round trip through the bundle and evaluation, and the test fold held out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shareddata import ESC50

import earshot
from earshot.training import load_manifest

pytest.importorskip("torch")

from earshot.training import fit, train  # noqa: E402


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
