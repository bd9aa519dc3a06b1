"""A small FSDD CNN bundle (three speakers), trained with a corrupt file in the data: speaker-independent
accuracy, and the exported graph against the torch model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from shareddata import FSDD, FSDD_GROUP, FSDD_LABEL

import earshot

pytest.importorskip("torch")

from earshot.training import fit, write_bundle  # noqa: E402


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
