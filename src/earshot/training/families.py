"""`fit` and `train`: a labelled data set → candidates of the training families, the better one kept → a bundle.

Families:

- ``transfer`` (`earshot.training.transfer`): frozen pretrained tagger (`mn04-as`) features — its whole-clip
  embedding and the mean embedding of 2 s crops — computed and cached by `earshot.training.features`; an MLP head
  (standardise, dropout, weight decay) trained in torch with early stopping. ``finetune=True`` then unfreezes
  the backbone at a low learning rate (slow on CPU).
- ``cnn`` (`earshot.training.cnn`): `CompactCNN` from scratch on a 16 kHz 64-mel front-end, fixed-length
  windows (the clips' 95th duration percentile, 1-10 s), with `MelAugment` and mixup on the log-mel;
  ``input_norm="utterance"`` adds per-window mean and variance normalisation (`cnn.UtteranceNorm`).
- ``speech`` (`earshot.training.speech`): an MLP head on Google's speech embedding, pretrained on many real
  voices (frozen), pooled over time: spoken words from speakers the data never had.
- ``word`` (`earshot.training.words`): an MLP head on EfficientWord-Net's word embedding (a ResNet-50 trained to
  tell spoken words apart across many real voices, frozen), for data with at least 50 recordings a label.
- ``whisper`` (`earshot.training.whisper`): an MLP head on Whisper tiny.en's audio encoder (trained to transcribe
  English from many real voices and accents, frozen), for data with at least 50 recordings a label.
- ``cnn+speech``, ``cnn+speech+word``, ``cnn+speech+word+whisper``: the CNN and the heads averaged (mean of class
  probabilities), one graph.
- ``auto`` (default): transfer first; the CNN too when clips are short (median < 2 s: speech-like), or when
  transfer's validation accuracy is below 0.95 and there are at least 100 training clips a class (fewer are too
  few for a network from scratch); on speech-like clips the speech, word and Whisper heads, the CNN averaged with
  the speech head, and the average of all four. The best on validation is kept (ties: `SPEECH_PREFERENCE`) and
  the card says why. With synthetic voices asked for (``synthesize``), the labels are spoken words: no transfer
  head (frozen AudioSet features do not carry words to new voices), only the CNN, the heads and their averages.

Unreadable files are skipped (never silently): printed, counted and listed in the card's ``data`` summary.
The card's ``metrics`` are computed on the validation split by the exported bundle on onnxruntime
(`earshot.training.card`), with the metric code of `earshot.training.evaluation`, so ``earshot evaluate``
reproduces them. With ``cv=K`` every fold is trained and scored in torch under the same clip-length policy
(`earshot.clips`); mean ± std go to ``metrics.cv`` and the bundle is the best fold's model (its validation
metrics in the card). The test fold (``test_fold``, else the layout's official one: Speech Commands'
``testing_list.txt``, a ``test/`` split folder) takes no part in training nor in choosing epochs or families: the
exported bundle scores it once, into ``metrics.test``, the figure to quote for data never seen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from earshot import audio, clips
from earshot.errors import AudioError, DataError
from earshot.training import additions, keywords
from earshot.training.card import write_bundle
from earshot.training.cnn import NORMS, Waves, train_cnn
from earshot.training.evaluation import metrics_for
from earshot.training.features import transfer_features
from earshot.training.loading import load_manifest
from earshot.training.loop import Log, Progress, Trained, skip_unreadable, torch_settings
from earshot.training.manifest import Manifest
from earshot.training.speech import ENSEMBLE, RECORDED_PER_LABEL, averaged, train_speech
from earshot.training.splits import hold_out
from earshot.training.transfer import train_transfer
from earshot.training.whisper import train_whisper
from earshot.training.words import train_word

ENSEMBLE3 = "cnn+speech+word"  # the CNN, the speech head and the word head averaged
ENSEMBLE4 = "cnn+speech+word+whisper"  # and the Whisper encoder's head
FAMILIES = ("auto", "transfer", "cnn", "speech", "word", "whisper", ENSEMBLE, ENSEMBLE3, ENSEMBLE4)
AUTO_MIN_ACCURACY = 0.95  # auto: below this transfer validation accuracy, try the CNN too
SPEECH_LIKE_SECONDS = 2.0  # auto: median clip shorter than this → try the CNN too
# ties on speech-like clips: the last wins
SPEECH_PREFERENCE = ("transfer", "cnn", "speech", "word", "whisper", ENSEMBLE, ENSEMBLE3, ENSEMBLE4)
SPEECH_TIE = 0.01  # speech-like clips: validation accuracies this close to the best count as a tie
AUTO_CNN_MIN_PER_CLASS = 100  # auto, longer clips: a CNN from scratch only with this many training clips a class


@dataclass
class Fit:
    """What `fit` produced: the chosen model, all candidates, the data and split it used, and why."""

    chosen: Trained
    candidates: list[Trained]
    manifest: Manifest
    train_idx: np.ndarray
    val_idx: np.ndarray
    why: str
    cv: dict[str, Any] | None
    options: dict[str, Any]
    added: additions.Additions | None = None


def fit(
    data: str | Path | None,
    *,
    model: str = "auto",
    backbone: str = "mn04-as",
    val_fold: str | int | None = None,
    val_split: float | None = None,
    test_fold: str | int | None = None,
    cv: int | None = None,
    filters: Sequence[str] = (),
    label_regex: str | None = None,
    group_regex: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    finetune: bool = False,
    quiet: bool = False,
    progress: Progress | None = None,
    synthesize: bool | None = None,
    words: str | Sequence[str] | dict[str, str] | None = None,
    background: bool | None = None,
    synth_per_label: int | None = None,
    input_norm: str = "none",
) -> Fit:
    """Everything `train` does short of exporting: manifest, features, split (or CV), candidates, choice."""
    if input_norm not in NORMS:
        raise DataError(f"--input-norm must be {' or '.join(NORMS)}, not {input_norm!r}", reason="bad_option")
    if model not in FAMILIES:
        raise DataError(f"--model must be one of {', '.join(FAMILIES)}, not {model!r}", reason="bad_option")
    log = Log(quiet, progress)
    with torch_settings():
        return _fit(data, model=model, backbone=backbone, val_fold=val_fold, val_split=val_split, test_fold=test_fold,
                    cv=cv, filters=filters, label_regex=label_regex, group_regex=group_regex, epochs=epochs, seed=seed,
                    finetune=finetune, input_norm=input_norm, log=log, adding={"synthesize": synthesize, "words": words,
                                                        "background": background, "per_label": synth_per_label})


def _fit(data: str | Path | None, *, model: str, backbone: str, val_fold: str | int | None, val_split: float | None,
         test_fold: str | int | None, cv: int | None, filters: Sequence[str], label_regex: str | None,
         group_regex: str | None, epochs: int | None, seed: int, finetune: bool, input_norm: str, log: Log,
         adding: dict[str, Any]) -> Fit:
    if data is None:  # a keyword model from its words alone
        if test_fold is not None:
            raise DataError("--test-fold needs recordings; score the bundle on real ones with earshot evaluate",
                            reason="bad_option")
        manifest = keywords.words_manifest()
        if model == "auto":  # frozen AudioSet features do not carry words across voices
            model = "cnn"
        log("no recordings: the keywords from synthetic voices alone; validation holds out whole voices, so its "
            "figures are for synthetic speech (score real recordings with earshot evaluate)", stage="manifest")
    else:
        manifest = load_manifest(data, label_regex=label_regex, group_regex=group_regex, filters=filters)
        log(f"{manifest.layout} layout: {len(manifest)} clips, {len(manifest.labels)} classes"
            + (f", {len(manifest.skipped)} skipped" if manifest.skipped else ""), stage="manifest")
    if test_fold is not None:
        hold_out(manifest, test_fold, val_fold)
    added = additions.add(manifest, seed=seed, log=log, **adding)
    waves = Waves()
    feats = None
    if trains_transfer(model, manifest):
        feats, bad = transfer_features(manifest, backbone, log, skip=manifest.holdout_indices().tolist())
        skip_unreadable(manifest, bad, log)
    else:
        waves.decode_all(manifest, log)
    if len(manifest.labels) < 2:
        raise DataError("fewer than 2 classes left after skipping unreadable files", reason="one_class")
    options = {"model": model, "val_fold": val_fold, "val_split": val_split, "test_fold": manifest.test_fold,
               "cv": cv, "seed": seed, "max_epochs": epochs, "finetune": finetune,
               "synthesize": added.synthetic is not None}
    common = {"feats": feats, "backbone": backbone, "epochs": epochs, "seed": seed, "finetune": finetune,
              "log": log, "waves": waves, "input_norm": input_norm}
    if not cv:
        tr, va = additions.split_real(manifest, val_fold=val_fold, val_split=val_split, seed=seed)
        log(f"split: {len(tr)} train, {len(va)} validation", stage="split")
        candidates, chosen, why = _fit_one(manifest, tr, va, family=model, **common)
        return Fit(chosen, candidates, manifest, tr, va, why, None, options, added)

    folds = additions.cv_real(manifest, k=cv, seed=seed)
    runs = []
    family, first_why = model, ""
    for f, (tr, va) in enumerate(folds, 1):
        log(f"cv fold {f}/{len(folds)}: {len(tr)} train, {len(va)} validation", stage="cv", fold=f)
        _, chosen, why = _fit_one(manifest, tr, va, family=family, **common)
        if family == "auto":  # decide once, on the first fold
            family, first_why = chosen.family, why
        runs.append((chosen, candidate_metrics(chosen, manifest, va), tr, va, why))
    accs = np.array([m["accuracy"] for _, m, *_ in runs])
    f1s = np.array([m["macro_f1"] for _, m, *_ in runs])
    best = int(np.argmax(accs))
    chosen, _, tr, va, why = runs[best]
    if model == "auto":
        why = first_why + f" (decided on fold 1, applied to all {len(folds)} folds)"
    summary = {
        "k": len(folds), "accuracy_mean": round(float(accs.mean()), 6), "accuracy_std": round(float(accs.std()), 6),
        "macro_f1_mean": round(float(f1s.mean()), 6), "macro_f1_std": round(float(f1s.std()), 6),
        "accuracy_per_fold": accs.round(6).tolist(), "macro_f1_per_fold": f1s.round(6).tolist(),
        "bundle": f"model of fold {best + 1} (best accuracy); card metrics are on its validation fold",
    }
    log(f"cv: accuracy {accs.mean():.4f} ± {accs.std():.4f}, macro-F1 {f1s.mean():.4f} ± {f1s.std():.4f}",
        stage="cv_done", accuracy_mean=summary["accuracy_mean"], accuracy_std=summary["accuracy_std"])
    return Fit(chosen, [chosen], manifest, tr, va, why, summary, options, added)


def _fit_one(manifest: Manifest, tr: np.ndarray, va: np.ndarray, *, family: str, feats: np.ndarray | None,
             backbone: str, epochs: int | None, seed: int, finetune: bool, log: Log,
             waves: Waves, input_norm: str = "none") -> tuple[list[Trained], Trained, str]:
    """Train the candidates `family` calls for on one split; returns (candidates, chosen, why)."""
    candidates: list[Trained] = []
    why = f"--model {family}"
    parts = family.split("+")  # an average's family names its members (`speech.averaged`)
    with_cnn, with_speech, with_word, with_whisper = (m in parts for m in ("cnn", "speech", "word", "whisper"))
    speech_like = False
    spoken = spoken_words(family, manifest)
    if trains_transfer(family, manifest):
        candidates.append(train_transfer(manifest, feats, tr, va, backbone=backbone, epochs=epochs, seed=seed,
                                         finetune=finetune, log=log))
    if spoken:
        speech_like = with_cnn = with_speech = with_word = with_whisper = True
        why = ("auto: --synthesize (the labels are spoken words) → trained the CNN, the speech, word and Whisper "
               "heads and their averages; no transfer head")
    elif family == "auto":
        seen = np.concatenate([tr, va])  # clip lengths of the test fold play no part in the choice either
        median = float(np.median(feats[seen, -1])) if feats is not None and len(seen) else 0.0
        t_acc = candidates[0].val_accuracy
        per_class = len(tr) / max(1, len(manifest.labels))
        speech_like = median < SPEECH_LIKE_SECONDS
        with_cnn = speech_like or (t_acc < AUTO_MIN_ACCURACY and per_class >= AUTO_CNN_MIN_PER_CLASS)
        with_speech = with_word = with_whisper = speech_like
        if speech_like:
            why = (f"auto: median clip {median:.2f} s < {SPEECH_LIKE_SECONDS:g} s (speech-like) → trained the CNN, "
                   "the speech, word and Whisper heads and their averages too")
            log("short, speech-like clips: if each label is the word spoken, --synthesize adds synthetic voices "
                "that carry the model to speakers it never heard (FSDD digits, a speaker held out: 0.876 → "
                "0.930 on average)", stage="hint")
        elif t_acc >= AUTO_MIN_ACCURACY:
            why = f"auto: transfer validation accuracy {t_acc:.3f} >= {AUTO_MIN_ACCURACY} on clips of median " \
                  f"{median:.2f} s; no CNN needed"
        elif per_class < AUTO_CNN_MIN_PER_CLASS:
            why = f"auto: transfer validation accuracy {t_acc:.3f} < {AUTO_MIN_ACCURACY}, but {per_class:.0f} " \
                  f"training clips a class (< {AUTO_CNN_MIN_PER_CLASS}) are too few for a CNN from scratch"
        else:
            why = f"auto: transfer validation accuracy {t_acc:.3f} < {AUTO_MIN_ACCURACY} with {per_class:.0f} " \
                  "training clips a class → trained the CNN too"
    if with_cnn:
        decoded = waves.get(manifest, np.concatenate([tr, va]), log)
        cnn = train_cnn(manifest, tr, va, decoded, epochs=epochs, seed=seed, log=log, norm=input_norm)
        if waves.band_rate is not None:
            cnn.config["synthetic_band_rate"] = waves.band_rate
        candidates.append(cnn)
    heads: list[Trained] = []
    if with_speech or with_word or with_whisper:
        decoded = waves.get(manifest, np.concatenate([tr, va]), log)
        window = cnn.window_seconds if with_cnn else None  # the averages are served over the CNN's window
        trainers = [t for t, on in ((train_speech, with_speech), (train_word, with_word),
                                    (train_whisper, with_whisper)) if on]
        for train_head in trainers:
            head = train_head(manifest, tr, va, decoded, epochs=epochs, seed=seed, log=log, window=window)
            if head is not None:
                heads.append(head)
                candidates.append(head)
    if with_cnn and heads:
        # each member's clip scores once over the CNN's windows; an average's are their mean, as its graph computes
        # (the mean of window scores, then over windows: both linear), so no member runs twice
        y_true, scores = clip_scores(cnn, manifest, va, [cnn.model, *(h.model for h in heads)])
        for members in ([heads[:1]] if with_speech else []) + ([heads] if len(heads) > 1 else []):
            both = averaged(cnn, *members)
            y_pred = np.mean(scores[: 1 + len(members)], axis=0).argmax(axis=1)
            both.val_accuracy = metrics_for(y_true, [int(k) for k in y_pred], manifest.labels)["accuracy"]
            log(f"{both.family}: val_acc {both.val_accuracy:.4f}", stage="trained", family=both.family,
                val_acc=both.val_accuracy)
            candidates.append(both)
    recorded = [name for m, name in (("word", "word"), ("whisper", "Whisper")) if m in parts]
    if recorded and not any(c.family == family for c in candidates):  # heads that train on recordings only
        heads_named = " and ".join(recorded) + (" heads" if len(recorded) > 1 else " head")
        raise DataError(f"--model {family} needs at least {RECORDED_PER_LABEL} recordings a label for the "
                        f"{heads_named}; use --model cnn+speech", reason="too_few")
    chosen = candidates[-1] if len(parts) > 1 else choose(candidates, speech_like)
    if len(candidates) > 1:
        scores = ", ".join(f"{c.family} {c.val_accuracy:.4f}" for c in candidates)
        why += f"; kept {chosen.family} (validation accuracy {scores})"
    return candidates, chosen, why


def spoken_words(family: str, manifest: Manifest) -> bool:
    """``auto`` on data with synthetic takes of each label's word (``synthesize``): the labels are spoken words, so
    only the CNN, the speech and word heads and their averages are trained (frozen AudioSet features do not carry
    words to new voices)."""
    return family == "auto" and bool(additions.is_synthetic(manifest).any())


def trains_transfer(family: str, manifest: Manifest) -> bool:
    """Whether `family` trains the transfer head (and so needs the backbone's features): ``transfer``, and ``auto``
    unless the labels are spoken words (`spoken_words`)."""
    return family in ("auto", "transfer") and not spoken_words(family, manifest)


def choose(candidates: Sequence[Trained], speech_like: bool) -> Trained:
    """The candidate with the best validation accuracy. On a tie the domain decides. For speech-like clips the
    order is `SPEECH_PREFERENCE`, and accuracies within `SPEECH_TIE` of the best tie: validation clips share
    speakers with training, so they saturate and a clip or two says nothing about new voices, while on FSDD
    speakers never heard the average of the CNN and the speech head beat each alone (mean 0.967 against 0.930 for
    the CNN), and frozen AudioSet features do not carry words to new voices. Else the first (transfer)."""
    if not speech_like:
        return max(candidates, key=lambda c: c.val_accuracy)
    best = max(c.val_accuracy for c in candidates)
    tied = [c for c in candidates if c.val_accuracy >= best - SPEECH_TIE - 1e-9]
    return max(tied, key=lambda c: SPEECH_PREFERENCE.index(c.family))


def candidate_metrics(trained: Trained, manifest: Manifest, va: np.ndarray) -> dict[str, Any]:
    """Validation metrics of an in-memory candidate: the torch model on each clip's inputs under the clip-length
    policy (`earshot.clips`), window scores aggregated as served; unreadable clips are left out."""
    y_true, (scores,) = clip_scores(trained, manifest, va, [trained.model])
    return metrics_for(y_true, [int(k) for k in scores.argmax(axis=1)], manifest.labels)


def clip_scores(trained: Trained, manifest: Manifest, va: np.ndarray,
                models: Sequence[torch.nn.Module]) -> tuple[list[int], list[np.ndarray]]:
    """The label index of each readable clip of `va` and, for each of `models`, its clip scores [clips, labels]:
    each clip decoded once at `trained`'s rate, cut into `trained`'s windows, and every model's window scores
    aggregated as served (single-label: their mean)."""
    y_true: list[int] = []
    rows: list[list[np.ndarray]] = [[] for _ in models]
    for model in models:
        model.eval()
    with torch.no_grad():
        for i in va:
            it = manifest.items[int(i)]
            try:
                y = audio.decode(it.source, trained.sample_rate, name=str(it.path))
            except AudioError:
                continue
            frames = torch.as_tensor(clips.clip_frames(y, trained.sample_rate, trained.window_seconds,
                                                       trained.min_seconds), dtype=torch.float32)
            y_true.append(manifest.labels.index(it.label))
            for model, out in zip(models, rows, strict=True):
                out.append(clips.aggregate(model(frames)[0].numpy(), model.multi_label))
    width = len(manifest.labels)
    return y_true, [np.stack(r) if r else np.zeros((0, width), dtype=np.float32) for r in rows]


def train(
    data: str | Path | None,
    out: str | Path,
    *,
    quiet: bool = False,
    progress: Progress | None = None,
    name: str | None = None,
    **options: Any,
) -> Path:
    """Train a single-label classifier on `data` (any layout `load_manifest` reads) → bundle `out`.

    `options` are those of :func:`fit`: `model` ``auto`` | ``transfer`` | ``cnn`` (see the module doc);
    validation `val_fold`, else `val_split`, else the layout's official validation fold, else a stratified
    group-aware 20 %; `cv=K` for K-fold cross-validation (official folds when K equals their number), mean ± std
    in the card, the bundle being the best fold's model; `epochs` maximum (early stopping keeps the best);
    `backbone`, `filters`, `label_regex`, `group_regex`, `seed`, `finetune`; `input_norm` ``none`` |
    ``utterance`` (the CNN's input, `cnn.UtteranceNorm`). Progress: one line per step on
    stderr unless `quiet`; `progress(event_dict)` gets the same events. `name`: the card's name (default: out's
    folder name). Returns the bundle directory.

    Embedding files (.h5/.npz), multi-label data (a CSV ``labels`` column) and `pooling` go to
    `earshot.training.multilabel.train_multilabel`. `data` and `out` may be s3:// (`endpoint_url`).
    """
    from earshot.pipeline.remote import is_remote, local_input, local_output
    from earshot.training.multilabel import routes_here, train_multilabel

    endpoint_url = options.pop("endpoint_url", None)
    if data is not None and routes_here(data, options):  # no data: a keyword model from `words` alone
        return train_multilabel(data, out, quiet=quiet, progress=progress, name=name, endpoint_url=endpoint_url,
                                **options)
    if is_remote(data) or is_remote(out):
        with local_input(data, endpoint_url) as local, local_output(out, endpoint_url) as target:
            train(local, target, quiet=quiet, progress=progress, name=name or Path(str(out).rstrip("/")).name,
                  **options)
        return out  # type: ignore[return-value]
    options = {k: v for k, v in options.items() if k not in ("pooling", "window", "hop")}
    t_start = time.time()
    result = fit(data, quiet=quiet, progress=progress, **options)
    log = Log(quiet, progress)
    log.t0 = t_start
    log(f"chose {result.chosen.family}: {result.why}", stage="chosen", family=result.chosen.family)
    return write_bundle(result, out, backbone=options.get("backbone", "mn04-as"), t_start=t_start, log=log,
                        name=name)
