"""`earshot adapt`: a bundle's batch-normalisation statistics re-estimated on unlabelled audio of a new domain.

The statistics are checked against the model's own log-mel output, the blend against the unadapted bundle, the
graphs for other input rates against the main graph, and bad inputs against the error records. Accuracy on voices
never heard, with and without adaptation, is measured by `benchmarks/keywords.py --adapt` (README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import onnx
import pytest
from apiserver import server_process
from audiofiles import thin_microphone
from conftest import esc50_clip, fsdd_take
from onnx import numpy_helper

from earshot import audio, clips
from earshot.adaptation import adapt
from earshot.bundle import read_bundle
from earshot.classifier import Classifier
from earshot.errors import AudioError, DataError, ModelError


def _batchnorm_stats(bundle, graph: str = "model.onnx") -> list[tuple[np.ndarray, np.ndarray]]:
    model = onnx.load(str(bundle / graph))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(inits[n.input[3]], inits[n.input[4]]) for n in model.graph.node if n.op_type == "BatchNormalization"]


@pytest.fixture(scope="module")
def new_microphone(tmp_path_factory):
    """Theo's takes 30-49 of the spotter's digits (never trained on) through `thin_microphone`, and a file that is
    not audio among them."""
    folder = tmp_path_factory.mktemp("new_mic")
    for digit in (1, 3, 7, 9):
        for index in range(30, 50):
            thin_microphone(fsdd_take("theo", digit, index), folder / f"{digit}_theo_{index}.wav")
    (folder / "9_theo_99.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    return folder


@pytest.mark.slow
def test_adapted_statistics_are_the_new_domains(digits_bundle, new_microphone, tmp_path):
    """The first layer normalises the log-mel: after adaptation its mean and variance are those of the log-mel
    the bundle itself outputs for the new recordings (every clip as `predict` feeds it). Every layer moves, the
    weights do not, and the card says what was done; the file that is not audio is recorded, not fatal."""
    skipped = []
    out = adapt(digits_bundle, sorted(new_microphone.iterdir()), tmp_path / "kws-mic", on_error=skipped.append)
    card = json.loads((out / "card.json").read_text())
    info = card["adaptation"]
    assert info["files"] == 80 and info["model_inputs"] >= 80 and info["layers"] == 6  # long takes: 2 windows
    assert [s["source"].endswith("9_theo_99.wav") for s in info["skipped"]] == [True]
    assert len(skipped) == 1 and isinstance(skipped[0], AudioError)
    assert card["name"] == "kws-mic" and card["metrics"] is None
    assert info["metrics_before"] == json.loads((digits_bundle / "card.json").read_text())["metrics"]

    clf = Classifier(read_bundle(digits_bundle))
    values = []
    for f in sorted(new_microphone.glob("*_theo_[34]?.wav")):
        frames = clips.clip_frames(audio.decode(f, clf.sample_rate), clf.sample_rate, clf.window_seconds,
                                   clf.min_seconds)
        values.append(clf.run(frames, ("logmel",))[0].ravel())
    logmel = np.concatenate(values).astype(np.float64)
    before, after = _batchnorm_stats(digits_bundle), _batchnorm_stats(out)
    assert after[0][0] == pytest.approx([logmel.mean()], abs=1e-4)
    assert after[0][1] == pytest.approx([logmel.var()], rel=1e-3)
    assert info["layer_mean_shift"][0] > 0.3  # 35 dB quieter and tilted: far from the training level
    assert all(not np.allclose(b[0], a[0]) for b, a in zip(before, after))
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer
               if "running" not in i.name}
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(digits_bundle / "model.onnx")).graph.initializer
                if "running" not in i.name}
    assert weights.keys() == original.keys() and all(np.array_equal(weights[k], original[k]) for k in weights)


@pytest.mark.slow
def test_strength_blends_with_the_training_statistics(digits_bundle, new_microphone, tmp_path):
    """Strength 0.5 gives the midpoint of the training and the new statistics; a vanishing strength leaves the
    bundle's scores as they were."""
    files = sorted(new_microphone.glob("*_theo_3?.wav"))
    full, half = adapt(digits_bundle, files, tmp_path / "full"), adapt(digits_bundle, files, tmp_path / "half",
                                                                        strength=0.5)
    # the first layer sees the same input in both (later ones see the layers before them as adapted)
    (m0, v0), (m1, v1), (mh, vh) = (_batchnorm_stats(b)[0] for b in (digits_bundle, full, half))
    assert mh == pytest.approx((m0 + m1) / 2, abs=1e-5) and vh == pytest.approx((v0 + v1) / 2, rel=1e-4)
    faint = adapt(digits_bundle, files, tmp_path / "faint", strength=1e-6)
    clip = fsdd_take("theo", 7, 45)
    a, b = Classifier(read_bundle(digits_bundle)), Classifier(read_bundle(faint))
    assert np.abs(a.clip_scores(a.decode(clip)) - b.clip_scores(b.decode(clip))).max() < 1e-4


@pytest.mark.slow
def test_registry_tagger_adapts_with_its_graphs_for_other_rates(tagger, tmp_path):
    """mn04-as (46 normalisation layers) adapted on a few ESC-50 clips: the 16 and 8 kHz graphs get the same
    statistics, so on a 16 kHz clip the adapted bundle's 16 kHz graph agrees with its main graph as closely as the
    original's two graphs do. Without `force` the tagger is refused: adapting it costs accuracy (README)."""
    clips_ = [esc50_clip(c, i) for c in ("dog", "rain", "crying_baby") for i in range(2)]
    with pytest.raises(ModelError) as e:
        adapt("mn04-as", clips_, tmp_path / "refused")
    assert e.value.reason == "not_recommended" and "--force" in str(e.value)
    out = adapt("mn04-as", clips_, tmp_path / "tagger-site", force=True)
    card = json.loads((out / "card.json").read_text())
    assert card["adaptation"]["layers"] == 46 and card["adaptation"]["rate_graphs_dropped"] == []
    assert card["adaptation"]["forced"] is True
    assert set(card["rate_graphs"]) == {"16000", "8000"}
    for graph in ("model_16000.onnx", "model_8000.onnx"):
        main = [m for m, _ in _batchnorm_stats(out)]
        assert all(np.array_equal(a, b) for a, b in zip(main, [m for m, _ in _batchnorm_stats(out, graph)]))
    y16 = audio.decode(esc50_clip("dog", 3), 16000)
    gaps = []
    for bundle in (tagger.bundle.path, out):
        native, resampled = Classifier(read_bundle(bundle)), Classifier(read_bundle(bundle), native_rates=False)
        x = clips.pad_to(y16, 16000)[None]
        s16 = native.run(x, rate=16000)[0]
        s32 = resampled.run(clips.pad_to(audio.decode(esc50_clip("dog", 3), 32000), 32000)[None])[0]
        gaps.append(float(np.abs(s16 - s32).max()))
    print("16 kHz graph against the main graph, max |score difference|, original and adapted:", gaps)
    assert gaps[1] <= max(0.05, 2 * gaps[0]), gaps


def test_package_function_and_module_coexist(digits_bundle, tmp_path):
    """`earshot.adapt` is the function (the module is `earshot.adaptation`, so importing it never shadows it)."""
    import earshot
    import earshot.adaptation

    out = earshot.adapt(digits_bundle, [fsdd_take("theo", 3, 41)], tmp_path / "one-take")
    assert callable(earshot.adapt) and earshot.adapt is not earshot.adaptation
    assert json.loads((out / "card.json").read_text())["adaptation"]["files"] == 1


def test_what_cannot_be_adapted_says_why(digits_bundle, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_bytes(b"not audio")
    with pytest.raises(DataError) as e:
        adapt(digits_bundle, [bad / "a.wav", bad / "missing.wav"], tmp_path / "x")
    assert e.value.reason == "no_audio" and "2 inputs skipped" in str(e.value)
    with pytest.raises(ModelError) as e:
        adapt(digits_bundle, [fsdd_take("theo", 1, 40)], digits_bundle)
    assert e.value.reason == "same_path"
    with pytest.raises(ValueError):
        adapt(digits_bundle, [fsdd_take("theo", 1, 40)], tmp_path / "y", strength=0)
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "letter.txt").write_text("kept")
    with pytest.raises(ModelError) as e:  # a folder that is not a bundle is never replaced
        adapt(digits_bundle, [fsdd_take("theo", 1, 40)], tmp_path / "documents")
    assert e.value.reason == "out_exists" and (tmp_path / "documents" / "letter.txt").read_text() == "kept"
    # a graph whose normalisation was folded into its convolutions (bundles exported before it was kept)
    folded = tmp_path / "folded"
    shutil.copytree(digits_bundle, folded)
    x = onnx.helper.make_tensor_value_info("waveform", onnx.TensorProto.FLOAT, ["b", "n"])
    y = onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["b"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("ReduceMean", ["waveform"], ["scores"], keepdims=0)],
                                   "folded", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]),
              str(folded / "model.onnx"))
    with pytest.raises(ModelError) as e:
        adapt(folded, [fsdd_take("theo", 1, 40)], tmp_path / "z")
    assert e.value.reason == "not_adaptable" and "retrain" in str(e.value)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_cli_adapts_a_folder_and_the_result_serves_without_torch(digits_bundle, new_microphone, tmp_path):
    """`earshot adapt BUNDLE FOLDER --out DIR` skips the bad file with a line on stderr and writes a bundle that
    `earshot predict` serves; adapting imports no torch."""
    out = tmp_path / "models" / "kws-mic"
    p = subprocess.run([sys.executable, "-c", (
        "import sys; from earshot.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    assert 'torch' not in sys.modules, 'adapt imported torch'\n    raise\n"),
        "adapt", str(digits_bundle), str(new_microphone), "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == str(out)
    assert "skipped" in p.stderr and "9_theo_99.wav" in p.stderr and "adapted 6 layers on 80 files" in p.stderr
    q = subprocess.run([sys.executable, "-m", "earshot.cli", "predict", "--model", str(out),
                        str(new_microphone / "7_theo_44.wav")], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr[-2000:]
    assert json.loads(q.stdout)["labels"][0] == "7"
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "adapt", str(digits_bundle), str(tmp_path / "none"),
                        "--out", str(tmp_path / "never")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no usable audio" in r.stderr


def test_adapt_reads_and_writes_object_storage(digits_bundle, new_microphone, s3, tmp_path):
    """Bundle, recordings and result all in a bucket: `earshot adapt s3://... s3://... --out s3://...` uploads the
    adapted bundle (graph and card), and `earshot predict` serves it from there."""
    client = s3.client()
    for f in ("model.onnx", "card.json"):
        client.upload_file(str(digits_bundle / f), "earshot", f"models/kws/{f}")
    for f in sorted(new_microphone.iterdir()):
        client.upload_file(str(f), "earshot", f"site/{f.name}")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.url}
    p = subprocess.run([sys.executable, "-m", "earshot.cli", "adapt", "s3://earshot/models/kws", "s3://earshot/site/",
                        "--out", "s3://earshot/models/kws-mic", "--endpoint-url", s3.url],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="earshot", Prefix="models/kws-mic/")["Contents"]}
    assert keys == {"models/kws-mic/model.onnx", "models/kws-mic/card.json"}
    card = json.loads(client.get_object(Bucket="earshot", Key="models/kws-mic/card.json")["Body"].read())
    assert card["name"] == "kws-mic" and card["adaptation"]["files"] == 80
    assert [s["source"].endswith("9_theo_99.wav") for s in card["adaptation"]["skipped"]] == [True]
    q = subprocess.run([sys.executable, "-m", "earshot.cli", "predict", "--model", "s3://earshot/models/kws-mic",
                        str(new_microphone / "3_theo_47.wav"), "--endpoint-url", s3.url],
                       capture_output=True, text=True, timeout=120, env=env)
    assert q.returncode == 0, q.stderr[-2000:]
    assert json.loads(q.stdout)["labels"][0] == "3"


def test_server_adapts_a_model_from_uploaded_recordings(digits_bundle, new_microphone, tmp_path):
    """`POST /v1/models/digits/adapt?out=digits-mic` on a real uvicorn: the recordings are uploaded as file fields,
    the bad one is listed by its own name, and the adapted model answers `/v1/predict` by its new name at once.
    A taken name (or a folder there that is not a bundle) is 409, an unknown model 404, a bad name 422, the
    pretrained tagger 422 without `force`, no recordings 400, a body that is not multipart 415."""
    shutil.copytree(digits_bundle, tmp_path / "models" / "digits")
    (tmp_path / "models" / "notes").mkdir()  # a folder that is not a bundle: never replaced
    takes = sorted(new_microphone.glob("*_theo_3?.wav")) + [new_microphone / "9_theo_99.wav"]
    files = [("file", (f.name, f.read_bytes(), "audio/wav")) for f in takes]
    with server_process(tmp_path) as (base, _pid), httpx.Client(base_url=base, timeout=120) as client:
        r = client.post("/v1/models/digits/adapt", params={"out": "digits-mic"}, files=files)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["model"] == "digits-mic" and r.headers["location"] == "/v1/models/digits-mic"
        assert body["adaptation"]["files"] == 40 and body["adaptation"]["layers"] == 6
        assert [s["source"] for s in body["adaptation"]["skipped"]] == ["9_theo_99.wav"]
        held_out = sorted(new_microphone.glob("*_theo_4?.wav"))  # not among the recordings adapted on
        answers = [client.post("/v1/predict", params={"model": "digits-mic"},
                               files={"file": (f.name, f.read_bytes())}).json() for f in held_out]
        assert all(a["model"] == "digits-mic" for a in answers)
        accuracy = np.mean([a["labels"][0] == f.name[0] for a, f in zip(answers, held_out)])
        original = Classifier(read_bundle(digits_bundle))
        before = np.mean([original.predict(f).labels[0] == f.name[0] for f in held_out])
        print(f"theo's takes 40-49 through the new microphone: {before:.3f} unadapted, {accuracy:.3f} adapted")
        assert accuracy >= 0.85
        card = client.get("/v1/models/digits-mic").json()
        assert card["adaptation"]["from"]["name"] == original.name and card["metrics"] is None
        assert "digits-mic" in {m["name"] for m in client.get("/v1/models").json()["models"]}
        refusals = [
            (client.post("/v1/models/digits/adapt", params={"out": "digits-mic"}, files=files[:2]), 409, "exists"),
            (client.post("/v1/models/digits/adapt", params={"out": "notes"}, files=files[:2]), 409, "out_exists"),
            (client.post("/v1/models/nope/adapt", params={"out": "x1"}, files=files[:2]), 404, "not_found"),
            (client.post("/v1/models/digits/adapt", params={"out": "../x"}, files=files[:2]), 422, "invalid_request"),
            (client.post("/v1/models/mn04-as/adapt", params={"out": "x2"}, files=files[:2]), 422, "not_recommended"),
            (client.post("/v1/models/digits/adapt", params={"out": "x3"}, files={"note": (None, "b")}), 400, "no_file"),
            (client.post("/v1/models/digits/adapt", params={"out": "x4"}, data={"a": "b"}), 415, "unsupported"),
        ]
        for response, status, reason in refusals:
            assert (response.status_code, response.json()["error"]["reason"]) == (status, reason), response.text
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["digits", "digits-mic", "notes"]
