"""Embeddings as a product and multi-label training, end to end on real sounds and real processes.

A multi-label set is made at test time by mixing ESC-10 events (`mixtures.py`); an AudioSet-layout file (uint8
VGGish-like frames, 527 classes, a signal planted in a few of them) is generated here; object storage is a real
moto server (`s3server.py`).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import esc50_clip
from mixtures import build_mixtures

h5py = pytest.importorskip("h5py")

PLANTED = (0, 137, 300, 500)  # Speech, Music, Vehicle, and one more AudioSet class


def earshot(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "earshot.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def audioset_file(path: Path, n: int, seed: int) -> np.ndarray:
    """An h5 in the AudioSet release layout: x uint8 (n, 10, 128), y bool (n, 527), video_id_list bytes. Each
    clip holds 1-2 planted classes, each present in 3 of its 10 frames as a fixed direction; every clip also has
    a random label with no signal. Returns y."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(99).normal(0, 1, (len(PLANTED), 128))
    x = rng.normal(0, 0.5, (n, 10, 128))
    y = np.zeros((n, 527), dtype=bool)
    for i in range(n):
        for c in rng.choice(len(PLANTED), int(rng.integers(1, 3)), replace=False):
            y[i, PLANTED[c]] = True
            x[i, rng.choice(10, 3, replace=False)] += 1.2 * directions[c]
        y[i, int(rng.integers(527))] = True
    q = np.clip(np.round((np.clip(x, -2, 2) + 2) * 255 / 4), 0, 255).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = q, y
        f["video_id_list"] = np.array([f"yt{seed}_{i:05d}".encode() for i in range(n)])
    return y


@pytest.fixture(scope="module")
def mixtures(tmp_path_factory) -> Path:
    return build_mixtures(tmp_path_factory.mktemp("mixtures"), n_train=160, n_val=80, seed=0)


@pytest.fixture(scope="module")
def mix_h5(mixtures: Path) -> Path:
    out = mixtures.parent / "mixtures.h5"
    got = earshot("embed", str(mixtures), "--out", str(out))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["n"] == 240
    return out


def split_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of mixtures of folds 1-3 clips (train) and of fold 4 clips (validation)."""
    from earshot.packed import PackedReader

    with PackedReader(path) as r:
        ids = r.video_ids
    return (np.array([i for i, v in enumerate(ids) if "/train_" in v]),
            np.array([i for i, v in enumerate(ids) if "/val_" in v]))


def test_multilabel_metrics_and_thresholds():
    from earshot.ranking import ranked
    from earshot.training.evaluation import d_prime, multilabel_metrics_for, roc_auc
    from earshot.training.multilabel import max_f1_thresholds

    y = np.array([1, 0, 1, 0, 0], dtype=bool)
    assert roc_auc(y, np.array([0.9, 0.1, 0.8, 0.3, 0.2])) == 1.0
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5, 0.5])) == 0.5  # ties count half
    assert roc_auc(y, np.array([0.9, 0.95, 0.1, 0.3, 0.2])) == pytest.approx(2 / 6)
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-9)
    assert d_prime(0.9) == pytest.approx(2 ** 0.5 * 1.2815516, abs=1e-6)
    m = multilabel_metrics_for(np.stack([y, ~y], 1), np.stack([y * 0.8 + 0.1, y * 0.8 + 0.1], 1), ["a", "b"])
    assert m["per_class_ap"] == {"a": 1.0, "b": pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3, abs=1e-6)}
    assert m["n"] == 5
    assert m["auc"] == pytest.approx((1.0 + 0.0) / 2) and m["d_prime"] == pytest.approx(0.0, abs=1e-6)
    thr = max_f1_thresholds(np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=bool),
                            np.array([[0.9, 0.1], [0.7, 0.2], [0.4, 0.3], [0.2, 0.8]]))
    assert thr == [pytest.approx(0.55), pytest.approx(0.55)]
    labels, probs, _ = ranked(np.array([0.9, 0.6, 0.5]), ["x", "y", "z"], [None] * 3, 3, np.array([0.95, 0.5, 0.4]))
    assert labels == ["y", "z"] and probs == [0.6, 0.5]


def test_npz_and_h5_read_alike(tmp_path):
    """The AudioSet layout as npz (np.load, no pickle) and as h5: same rows, labels, ids and dequantisation."""
    from earshot.packed import PackedReader, split_rows

    y = audioset_file(tmp_path / "a.h5", 12, seed=3)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.savez(tmp_path / "a.npz", x=f["x"][:], y=f["y"][:], video_id_list=f["video_id_list"][:].astype(str))
        raw = f["x"][7, 0, :3].astype(np.float64)
    with PackedReader(tmp_path / "a.h5") as h, PackedReader(tmp_path / "a.npz") as z:
        rows = [7, 2, 2, 11]
        xh, mh = h.take(rows)
        xz, mz = z.take(rows)
        np.testing.assert_array_equal(xh, xz)
        assert mh.all() and mz.all() and xh.dtype == np.float32 and xh.shape == (4, 10, 128)
        assert -2.0 <= xh.min() and xh.max() <= 2.0
        np.testing.assert_allclose(xh[0, 0, :3], raw * 4 / 255 - 2, rtol=1e-6)
        assert h.video_ids == z.video_ids == [f"yt3_{i:05d}" for i in range(12)]
        assert h.labels == z.labels and h.labels[137] == "Music" and (h.y == y).all() and (z.y == y).all()
        assert h.hold() and h.take(rows)[0].tobytes() == xh.tobytes()
    tr, va = split_rows(12, 0.25, seed=5)
    assert len(va) == 3 and sorted(np.concatenate([tr, va]).tolist()) == list(range(12))
    assert (split_rows(12, 0.25, seed=5)[1] == va).all()


def test_multi_label_manifest(tmp_path):
    from earshot.training import load_manifest

    clips = [esc50_clip("dog", 0), esc50_clip("rooster", 0), esc50_clip("rain", 0)]
    rows = [{"path": str(clips[0]), "labels": "dog; rain"}, {"path": str(clips[1]), "labels": "rooster"},
            {"path": str(clips[2]), "labels": "rain;dog;rain"}]
    with open(tmp_path / "ml.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "labels"])
        w.writeheader()
        w.writerows(rows)
    m = load_manifest(tmp_path / "ml.csv")
    assert m.multi_label and m.labels == ["dog", "rain", "rooster"]
    assert [it.labels for it in m.items] == [("dog", "rain"), ("rooster",), ("rain", "dog")]
    assert m.multi_hot().tolist() == [[True, True, False], [False, False, True], [True, True, False]]
    assert m.class_counts() == {"dog": 2, "rain": 2, "rooster": 1}
    assert len(load_manifest(tmp_path / "ml.csv", filters=["label=rain"])) == 2
    single = load_manifest(tmp_path / "ml.csv", label_regex=r"-(\d+)\.wav$")  # relabelled: single-label
    assert [it.labels for it in single.items] == [("0",), ("1",), ("10",)] and not single.multi_label


def test_embed_file_layout(tmp_path, tagger):
    """Shapes, dtypes, mask, ids and attributes of `earshot embed`, with a short clip, a 2.5 s clip (last window
    ending at the end) and a corrupt file that is reported and skipped."""
    y, sr = sf.read(esc50_clip("dog", 0), dtype="float32")
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "short.wav", y[: int(0.5 * sr)], sr)
    sf.write(tmp_path / "audio" / "mid.wav", y[: int(2.5 * sr)], sr)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20)
    (tmp_path / "data.csv").write_text("path,labels\naudio/short.wav,dog\naudio/mid.wav,dog;rain\n"
                                       "audio/broken.wav,rain\n")
    out = tmp_path / "emb.h5"
    got = earshot("embed", str(tmp_path / "data.csv"), "--out", str(out), "--dtype", "float32", "--no-cache")
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["n"] == 2 and summary["n_bad"] == 1 and "broken.wav" in got.stderr
    with h5py.File(out, "r") as f:
        assert f["x"].shape == (2, 3, 384) and f["x"].dtype == np.float32
        assert f["y"].dtype == bool and f["y"][:].tolist() == [[True, False], [True, True]]
        assert f["mask"][:].tolist() == [[True, False, False], [True, True, True]]
        assert [v.decode() for v in f["video_id_list"][:]] == ["audio/short.wav", "audio/mid.wav"]
        assert list(f.attrs["labels"]) == ["dog", "rain"] and list(f.attrs["label_ids"]) == ["", ""]
        assert f.attrs["backbone"] == "mn04-as" and f.attrs["window"] == 1.0 and f.attrs["hop"] == 1.0
        assert f.attrs["n_bad"] == 1 and f.attrs["bad_files"][0].endswith("broken.wav")
        assert not f["x"][0, 1:].any()  # padding is zeros
        # computed at the model's rate, as the bundles trained on them compute embeddings when they serve
        from earshot import Classifier

        resampling = Classifier(tagger.bundle, native_rates=False)
        starts, ref = resampling.embed_windows(tmp_path / "audio" / "mid.wav", window=1.0, hop=1.0)
        assert starts.tolist() == [0.0, 1.0, 1.5]
        np.testing.assert_allclose(f["x"][1], ref, atol=1e-5)


def test_attention_pooling_against_mean_and_max(mix_h5):
    """Same split, same seeds: attention at least as good as mean pooling (averaged over two seeds), all well
    above chance (the mean label prevalence)."""
    from earshot.packed import PackedReader
    from earshot.training.loop import torch_settings
    from earshot.training.multilabel import fit_head

    tr, va = split_rows(mix_h5)
    got: dict[str, list[float]] = {}
    with PackedReader(mix_h5) as r, torch_settings():
        chance = float(r.y[va].mean(axis=0).mean())
        for pooling in ("attention", "mean", "max"):
            for seed in (0, 1):
                fitted = fit_head(r, tr, va, pooling=pooling, seed=seed, epochs=30, hidden=128)
                got.setdefault(pooling, []).append(fitted.val_map)
    mean_map = {k: float(np.mean(v)) for k, v in got.items()}
    print("validation mAP", {k: round(v, 4) for k, v in mean_map.items()}, "chance", round(chance, 4))
    assert 0.2 < chance < 0.3
    assert all(v > chance + 0.4 for v in mean_map.values()), mean_map
    assert mean_map["attention"] >= mean_map["mean"], mean_map


@pytest.mark.slow
def test_multilabel_csv_trains_end_to_end(mixtures, mix_h5, tmp_path):
    """A multi-label CSV → embeddings (cached) → attention head → waveform bundle; predict applies the card's
    thresholds; evaluate on audio reproduces the card, and the same bundle scores the embedding file."""
    out = tmp_path / "mix-model"
    got = earshot("train", str(mixtures), "--out", str(out), "--val-fold", "4", "--epochs", "25", "-q")
    assert got.returncode == 0, got.stderr
    card = json.loads((out / "card.json").read_text())
    m = card["metrics"]
    assert card["multi_label"] and card["input"] == "waveform" and card["head"]["file"] == "head.onnx"
    assert card["training"]["pooling"] == "attention" and len(card["thresholds"]) == 10
    assert m["n"] == 80 and m["mAP"] > m["chance_mAP"] + 0.4 and m["auc"] > 0.85 and m["d_prime"] > 1.0

    clip = mixtures.parent / "audio" / "val_0000.wav"
    default = json.loads(earshot("predict", str(clip), "--model", str(out), "-k", "10").stdout)
    everything = json.loads(earshot("predict", str(clip), "--model", str(out), "-k", "10", "--threshold",
                                    "0").stdout)
    assert len(everything["labels"]) == 10
    thresholds = dict(zip(card["labels"], card["thresholds"]))
    scores = dict(zip(everything["labels"], everything["probabilities"]))  # rounded to 4 places
    assert 0 < len(default["labels"]) < 10
    assert all(scores[lab] >= thresholds[lab] - 1e-4 for lab in default["labels"])
    assert all(lab in default["labels"] for lab, p in scores.items() if p > thresholds[lab] + 1e-4)

    audio_eval = json.loads(earshot("evaluate", str(out), str(mixtures), "--val-fold", "4").stdout)
    assert audio_eval["mAP"] == pytest.approx(m["mAP"], abs=2e-3) and audio_eval["n"] == 80
    file_eval = json.loads(earshot("evaluate", str(out), str(mix_h5)).stdout)
    assert {"mAP", "auc", "d_prime", "per_class_ap", "n"} <= set(file_eval) and file_eval["n"] == 240


@pytest.mark.slow
def test_audioset_layout_through_object_storage(s3, tmp_path):
    """The AudioSet packed layout trains without conversion from s3:// into s3://; evaluate reads both from the
    bucket; the head-only bundle predicts the planted classes row by row; embed reads and writes s3:// too."""
    import earshot as es
    from earshot.errors import ModelError

    client = s3.client()
    train_y = audioset_file(tmp_path / "bal_train.h5", 400, seed=1)
    eval_y = audioset_file(tmp_path / "eval.h5", 120, seed=2)
    for name in ("bal_train.h5", "eval.h5"):
        client.upload_file(str(tmp_path / name), "earshot", f"audioset/{name}")
    assert train_y[:, PLANTED].any(axis=1).all()

    got = earshot("train", "s3://earshot/audioset/bal_train.h5", "--out", "s3://earshot/results/run1", "--epochs",
                  "12", "-q", "--endpoint-url", s3.url)
    assert got.returncode == 0, got.stderr
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="earshot", Prefix="results/run1/")["Contents"]}
    assert keys == {"results/run1/model.onnx", "results/run1/card.json"}
    card = json.loads(client.get_object(Bucket="earshot", Key="results/run1/card.json")["Body"].read())
    assert card["input"] == "embeddings" and card["embedding_dim"] == 128 and card["frames"] == 10
    assert card["dequantize"]["scale"] == pytest.approx(4 / 255) and card["dequantize"]["offset"] == -2.0
    assert card["labels"][0] == "Speech" and card["label_ids"][0] == "/m/09x0r"

    got = earshot("evaluate", "s3://earshot/results/run1", "s3://earshot/audioset/eval.h5", "--endpoint-url", s3.url)
    assert got.returncode == 0, got.stderr
    metrics = json.loads(got.stdout)
    assert {"mAP", "auc", "d_prime", "per_class_ap", "n"} <= set(metrics) and metrics["n"] == 120
    assert min(metrics["per_class_ap"][card["labels"][c]] for c in PLANTED) > 0.9

    got = earshot("predict", "--model", "s3://earshot/results/run1", str(tmp_path / "eval.h5"), "-f", "jsonl",
                  "--endpoint-url", s3.url)
    assert got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert [r["title"] for r in rows] == [f"yt2_{i:05d}" for i in range(120)]
    planted = {card["labels"][c] for c in PLANTED}
    truth = [{card["labels"][c] for c in PLANTED if eval_y[i, c]} for i in range(120)]
    found = [set(r["labels"]) & planted for r in rows]
    recall = np.mean([len(f & t) / len(t) for f, t in zip(found, truth)])
    precision = np.mean([len(f & t) / len(f) for f, t in zip(found, truth) if f])
    assert recall > 0.85 and precision > 0.85, (recall, precision)
    for r in rows:  # the card's per-class thresholds, not plain top-k
        assert all(p >= card["thresholds"][card["labels"].index(lab)] - 1e-4 for lab, p in zip(r["labels"],
                                                                                                r["probabilities"]))

    with pytest.raises(ModelError, match="head-only"):
        es.load("s3://earshot/results/run1")

    audio = tmp_path / "clips"
    (audio / "a").mkdir(parents=True)
    for cat in ("dog", "rooster", "rain"):
        sf.write(audio / "a" / f"{cat}.wav", sf.read(esc50_clip(cat, 1))[0][:16000 * 2], 16000)
    (audio / "labels.csv").write_text("path,labels\na/dog.wav,dog\na/rooster.wav,rooster;dog\na/rain.wav,rain\n")
    for p in sorted(audio.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), "earshot", f"audio/{p.relative_to(audio).as_posix()}")
    got = earshot("embed", "s3://earshot/audio/", "--out", "s3://earshot/emb/audio.h5", "--endpoint-url", s3.url)
    assert got.returncode == 0, got.stderr
    client.download_file("earshot", "emb/audio.h5", str(tmp_path / "audio.h5"))
    with h5py.File(tmp_path / "audio.h5", "r") as f:
        assert f["x"].shape == (3, 2, 384) and f["y"][:].sum() == 4
        assert [v.decode() for v in f["video_id_list"][:]] == ["a/dog.wav", "a/rooster.wav", "a/rain.wav"]
