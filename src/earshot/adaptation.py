"""Adapt a bundle to a new domain — a voice, a microphone, a site — from unlabelled recordings of it.

Each batch-normalisation layer standardises its channels with a mean and variance measured on the training data.
Audio from a voice or a recording chain the model never heard shifts those statistics; measuring them again on
the new domain's audio, every weight unchanged, recovers part of what the shift costs (AdaBN: Li, Wang, Shi, Hou
and Liu, "Adaptive batch normalization for practical domain adaptation", Pattern Recognition 2018). No labels are
needed, only audio of the domain: a few minutes of a speaker, a device or a site.

A head trained on a frozen embedding (the speech and word members) standardises its input with the training
features' mean and variance, exported as a normalisation layer too (`earshot.models.heads.EmbeddingHead`), so it is
re-estimated the same way: the new voice's embeddings are moved back to where the head learned them. On FSDD's
unseen speakers this is worth more than the CNN's statistics (README: earshot adapt).

`adapt` works on the ONNX graph alone (the `onnx` package, no torch). Layers are re-estimated one at a time in
graph order, each on the outputs of the layers already adapted, over every model input the clip-length policy
(`earshot.clips`) makes of the recordings, exactly as `Classifier.predict` would feed them. `strength` blends the
new statistics with the training ones (1: the new domain's alone). The graphs for other input rates carry the same
layers and get the same statistics. Bundles exported before batch normalisation was kept as its own node in the
graph (folded into the convolutions) cannot be adapted and say so.

The result is a new bundle: the card's `adaptation` records the source bundle, the audio used, the strength and
how far each layer's mean moved (in training standard deviations); its `metrics` are cleared, since they
described the model before adaptation (kept as `adaptation.metrics_before`): `earshot evaluate` on labelled audio
of the new domain measures the adapted model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from earshot import __version__
from earshot.bundle import (
    CARD_FILE,
    MODEL_FILE,
    RATE_GRAPHS,
    is_bundle,
    read_bundle,
    staged_bundle,
    write_json_atomic,
)
from earshot.classifier import Classifier, Source, source_title
from earshot.errors import DataError, EarshotError, ModelError

DEFAULT_MAX_SECONDS = 3600.0  # audio read for the statistics; more moves them little and costs a pass per layer
BATCH_SAMPLES = 16000 * 16  # model inputs per call: about 16 s of audio at 16 kHz


@dataclass
class _Inputs:
    """The model inputs made of the adaptation audio, grouped by length so that each group runs in batches."""

    groups: dict[int, list[np.ndarray]] = field(default_factory=dict)
    files: int = 0
    seconds: float = 0.0
    windows: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    unread: int = 0

    def batches(self) -> Iterable[np.ndarray]:
        for n, rows in sorted(self.groups.items()):
            per = max(1, BATCH_SAMPLES // n)
            for i in range(0, len(rows), per):
                yield np.stack(rows[i : i + per])


# Families whose every normalisation layer was fitted with the rest of the model: the CNN's batch normalisation and
# the input standardisation of heads on the speech, word and Whisper embeddings, which themselves have no statistics. In
# the others (the transfer head on the pretrained tagger's backbone, or the tagger itself) re-estimating the
# backbone's statistics moves the features the head or the label set was fitted to: measured, UrbanSound8K fold
# 1 -> 2 with the transfer head 0.807 -> 0.600, and mn04-as zero-shot on ESC-10 0.9625 -> 0.934 (README).
ADAPTABLE_FAMILIES = ("cnn", "speech", "word", "whisper", "cnn+speech", "cnn+speech+word", "cnn+speech+word+whisper")


def adapt(model: str | os.PathLike, sources: Iterable[Source | EarshotError], out: str | os.PathLike, *,
          strength: float = 1.0, max_seconds: float = DEFAULT_MAX_SECONDS, name: str | None = None,
          on_error: Callable[[EarshotError], None] | None = None, endpoint_url: str | None = None,
          force: bool = False) -> Path:
    """Write to `out` a copy of the bundle `model` (registry name, folder or `s3://` prefix) whose normalisation
    statistics are re-estimated on `sources` (audio files or file objects; unlabelled). Returns the local bundle
    folder; when `out` is an `s3://` prefix, which receives the bundle, a staging copy in a temporary folder of its
    own (its parent), which the caller may delete.

    `strength` in (0, 1]: the share of the new statistics (1 replaces the training ones). `max_seconds`: audio read
    at most, in the order given. A source that cannot be decoded (or an `EarshotError` passed in its place, as
    `earshot.cli.inputs.expand_inputs` yields) is reported to `on_error`, recorded in the card and skipped; no
    usable audio at all raises DataError. The card's `name` becomes `name` (default: the last part of `out`).

    Bundles of a family outside `ADAPTABLE_FAMILIES` (a transfer head on a frozen backbone, the pretrained tagger)
    raise ModelError `not_recommended` unless `force`: adapting them was measured to cost accuracy.
    """
    from earshot.models import resolve

    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    onnx = _onnx()
    src = resolve(model)
    bundle = read_bundle(src)
    card = bundle.card
    clf = Classifier(bundle)  # decoding and the clip policy as served; refuses head-only bundles (head_only)
    family = (card.get("training") or {}).get("family")
    if family not in ADAPTABLE_FAMILIES and not force:
        raise ModelError(f"a {family or 'pretrained'} bundle: its normalisation statistics belong to a backbone "
                         "pretrained elsewhere, and the head or labels were fitted to them; re-estimating them was "
                         "measured to cost accuracy (README: earshot adapt). Adapt a model trained with "
                         "--model cnn, or pass force=True (--force) and evaluate the result",
                         source=str(src), reason="not_recommended")
    out_text = str(out)
    remote = out_text.startswith("s3://")
    if not remote and Path(out_text).resolve() == Path(src).resolve():
        raise ModelError("the adapted bundle needs a folder of its own (--out), not the source bundle's",
                         source=out_text, reason="same_path")
    if not remote and Path(out_text).exists() and not is_bundle(out_text):
        raise ModelError("exists and is not a bundle: the adapted bundle replaces only a bundle folder",
                         source=out_text, reason="out_exists")
    graph = onnx.load(str(bundle.model_path))
    layers = _batchnorms(graph)
    if not layers:
        raise ModelError("its graph has no batch-normalisation statistics to re-estimate (a bundle exported with "
                         "them folded into the convolutions: retrain it, or `earshot models pull --force` a "
                         "registry model, with this version)", source=str(src), reason="not_adaptable")
    inputs = _read(sources, clf, max_seconds, on_error)
    if not inputs.windows:
        raise DataError("no usable audio to adapt on" + (f" ({len(inputs.skipped)} inputs skipped)"
                                                         if inputs.skipped else ""), source=str(model),
                        reason="no_audio")
    before = {name_: _initializer(graph, name_) for node in layers for name_ in node.input[3:5]}
    shifts = _reestimate(graph, layers, inputs, strength)
    after = {name_: _initializer(graph, name_) for node in layers for name_ in node.input[3:5]}

    name = name or Path(out_text.rstrip("/")).name or str(card["name"])
    new_card = {**card, "name": name, "metrics": None, "earshot_version": __version__}
    # an s3:// bundle is written in a staging folder of its own, uploaded, and returned for the caller to delete
    dest = Path(tempfile.mkdtemp(prefix="earshot-adapt-")) / name if remote else Path(out_text)
    with staged_bundle(dest) as tmp:
        onnx.save(graph, str(tmp / MODEL_FILE))
        graphs, dropped = {}, []
        for rate, path in bundle.rate_graphs.items():
            other = onnx.load(str(path))
            if _carry(other, before, after):
                onnx.save(other, str(tmp / path.name))
                graphs[str(rate)] = card[RATE_GRAPHS][str(rate)]
            else:
                dropped.append(rate)
        if graphs:
            new_card[RATE_GRAPHS] = graphs
        else:
            new_card.pop(RATE_GRAPHS, None)
        new_card["adaptation"] = {
            "method": "batchnorm_statistics",
            "from": {"name": card["name"], "bundle": str(model),
                     "model_sha256": hashlib.sha256(bundle.model_path.read_bytes()).hexdigest()},
            "strength": strength,
            "forced": family not in ADAPTABLE_FAMILIES,
            "files": inputs.files,
            "seconds": round(inputs.seconds, 2),
            "model_inputs": inputs.windows,
            "skipped": inputs.skipped,
            "unread_after_max_seconds": inputs.unread,
            "max_seconds": max_seconds,
            "layers": len(layers),
            "layer_mean_shift": [round(s, 4) for s in shifts],
            "rate_graphs_dropped": dropped,
            "metrics_before": card.get("metrics"),
        }
        write_json_atomic(tmp / CARD_FILE, new_card)
        read_bundle(tmp)  # what was written opens as a bundle
    if remote:
        from earshot.pipeline.remote import upload_dir

        try:
            upload_dir(dest, out_text, endpoint_url)
        except BaseException:
            shutil.rmtree(dest.parent, ignore_errors=True)
            raise
    return dest


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ModelError("adapting a bundle edits its ONNX graph and needs the onnx package: "
                         "pip install 'earshot[adapt]'", reason="needs_adapt_extra") from e
    return onnx


def _batchnorms(graph) -> list:
    """The BatchNormalization nodes whose statistics are initializers, in graph (topological) order."""
    names = {i.name for i in graph.graph.initializer}
    return [n for n in graph.graph.node
            if n.op_type == "BatchNormalization" and len(n.input) == 5 and all(i in names for i in n.input[3:5])]


def _initializer(graph, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(i) for i in graph.graph.initializer if i.name == name)


def _set_initializer(graph, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    for i, init in enumerate(graph.graph.initializer):
        if init.name == name:
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            return
    raise KeyError(name)


def _read(sources: Iterable[Source | EarshotError], clf: Classifier, max_seconds: float,
          on_error: Callable[[EarshotError], None] | None) -> _Inputs:
    """Decode each source at the model's rate into the inputs `clf.predict` would give the model."""
    got = _Inputs()
    for source in sources:
        if got.seconds >= max_seconds:
            got.unread += 1
            continue
        try:
            if isinstance(source, EarshotError):
                raise source
            y = clf.decode(source, _title(source))
        except EarshotError as e:
            got.skipped.append({"source": e.source or _title(source), "reason": e.reason, "message": str(e)})
            if on_error is not None:
                on_error(e)
            continue
        frames = clf.clip_inputs(y)
        got.groups.setdefault(frames.shape[1], []).extend(frames)
        got.files += 1
        got.seconds += len(y) / clf.sample_rate
        got.windows += len(frames)
    return got


def _title(source: Source | EarshotError) -> str:
    return (source.source or "<input>") if isinstance(source, EarshotError) else source_title(source)


def _reestimate(graph, layers: list, inputs: _Inputs, strength: float) -> list[float]:
    """Each layer's mean and variance measured on `inputs`, layer by layer, written into `graph`'s initializers;
    returns each layer's mean shift (mean over channels of |new - old| / old standard deviation)."""
    import onnx

    shifts = []
    for node in layers:
        x_name, mean_name, var_name = node.input[0], node.input[3], node.input[4]
        probe = onnx.ModelProto()
        probe.CopyFrom(graph)
        del probe.graph.output[:]
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(x_name))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        total = total_sq = None
        count = 0
        for batch in inputs.batches():
            x = session.run([x_name], {"waveform": batch})[0].astype(np.float64)
            axes = tuple(a for a in range(x.ndim) if a != 1)
            s, sq = x.sum(axis=axes), np.square(x).sum(axis=axes)
            total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
            count += x.size // x.shape[1]
        mean = total / count
        var = np.maximum(total_sq / count - np.square(mean), 0.0)
        old_mean, old_var = _initializer(graph, mean_name), _initializer(graph, var_name)
        shifts.append(float(np.mean(np.abs(mean - old_mean) / np.sqrt(old_var + 1e-5))))
        _set_initializer(graph, mean_name, (1 - strength) * old_mean + strength * mean)
        _set_initializer(graph, var_name, (1 - strength) * old_var + strength * var)
    return shifts


def _carry(other, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> bool:
    """Give a graph for another input rate the adapted statistics: it has the same layers (same statistics before
    adaptation, in the same order). False when they do not match, and the graph is left out."""
    layers = _batchnorms(other)
    names = [n for node in layers for n in node.input[3:5]]
    if len(names) != len(before):
        return False
    for mine, value in zip(names, before.values(), strict=True):
        if not np.array_equal(_initializer(other, mine), value):
            return False
    for mine, theirs in zip(names, after, strict=True):
        _set_initializer(other, mine, after[theirs])
    return True
