"""`earshot train`: a labelled data set → a single-label classifier bundle (front-end + network in one ONNX graph).

Families:

- ``transfer``: frozen pretrained tagger (`mn04-as`) features — its whole-clip embedding and the mean embedding of
  2 s crops (`CropPooledFeatures`) — computed by an exported feature-extractor bundle on onnxruntime and cached per
  (file sha256, backbone, feature version) under ``$EARSHOT_HOME/embeddings/``; an MLP head (standardise, dropout,
  weight decay) trained in torch with early stopping. Exported as
  ``WaveformTagger(EfficientATMel(), CropPooledFeatures(MobileNetAudio), head)``. ``finetune=True`` then unfreezes
  the backbone at a low learning rate (slow on CPU).
- ``cnn``: `CompactCNN` from scratch on a 16 kHz 64-mel front-end, fixed-length windows (the clips' 95th
  duration percentile, 1-10 s), with gain / shift / noise / SpecAugment / mixup applied on the log-mel.
- ``auto`` (default): transfer first; the CNN too when clips are short (median < 2 s: speech-like), or when
  transfer's validation accuracy is below 0.95 and there are at least 100 training clips a class (fewer are too
  few for a network from scratch); the better on validation is kept and the card says why.

Unreadable files are skipped (never silently): printed, counted and listed in the card's ``data`` summary.
The card's ``metrics`` are computed on the validation split by the exported bundle on onnxruntime, with the
metric code of `earshot.evaluate`, so ``earshot evaluate`` reproduces them. With ``cv=K`` every fold is trained
(mean ± std in ``metrics.cv``) and the bundle is the best fold's model (its validation metrics in the card).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from earshot.bundle import CARD_FILE, write_json_atomic
from earshot.data import Manifest, cv_folds, load_manifest
from earshot.data import split as split_manifest
from earshot.errors import AudioError, DataError
from earshot.evaluate import metrics_for, plot_confusion, score_items
from earshot.frontend import LOG_SCALE, SILENCE_LOGMEL, mel_power, normalised_log

FAMILIES = ("auto", "transfer", "cnn")
AUTO_MIN_ACCURACY = 0.95  # auto: below this transfer validation accuracy, try the CNN too
SPEECH_LIKE_SECONDS = 2.0  # auto: median clip shorter than this → try the CNN too
AUTO_CNN_MIN_PER_CLASS = 100  # auto, longer clips: a CNN from scratch only with this many training clips a class
TRANSFER_WINDOW = 10.0  # the pretrained tagger's window (clips up to 1.5 windows are one pass)
FEATURES_VERSION = "whole+crops2s"  # cache folder name: bump when the features change
FEATURE_LAYOUT = "whole-clip embedding | mean embedding of 2 s crops (1 s hop)"

Progress = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------ helpers


class _Log:
    """Per-step lines on stderr (unless quiet) and the same events to the progress callback."""

    def __init__(self, quiet: bool, progress: Progress | None) -> None:
        self.quiet, self.progress, self.t0 = quiet, progress, time.time()

    def __call__(self, message: str, **event: Any) -> None:
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)
        if self.progress is not None:
            self.progress({"message": message, "elapsed": round(time.time() - self.t0, 3), **event})


@dataclass
class Trained:
    """One trained candidate: the exportable model and its validation record."""

    family: str
    model: nn.Module  # WaveformTagger
    sample_rate: int
    window_seconds: float
    min_seconds: float
    val_accuracy: float
    history: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _BestEpoch:
    """Early stopping with a best checkpoint: keeps the weights of the best (validation accuracy, then lower loss)
    epoch so far; `done` once `patience` epochs have passed without a better one."""

    def __init__(self, patience: float, key: tuple[float, float] | None = None, state: dict | None = None) -> None:
        self.patience, self.key, self.state, self.since = patience, key, state, 0

    def update(self, model: nn.Module, accuracy: float, loss: float = 0.0) -> None:
        key = (accuracy, -loss)
        if self.key is None or key > self.key:
            self.key, self.state, self.since = key, copy.deepcopy(model.state_dict()), 0
        else:
            self.since += 1

    @property
    def done(self) -> bool:
        return self.since >= self.patience

    @property
    def accuracy(self) -> float:
        return self.key[0]


def _skip(manifest: Manifest, bad: list[tuple[int, str]], log: _Log) -> None:
    """Drop unreadable items (indices before any split) and report each one."""
    for i, reason in sorted(bad, reverse=True):
        it = manifest.items[i]
        log(f"skipped unreadable {it.path}: {reason}", stage="skip", path=str(it.path), reason=reason)
        manifest.skip(i, reason)


def _reason(e: AudioError) -> str:
    return f"{e.reason or 'unreadable'}: {e}"


# ------------------------------------------------------------------------------------- transfer features


def embeddings_dir(backbone: str) -> Path:
    """Cache of transfer features (and their extractor bundle) for `backbone`, per feature version."""
    from earshot.models.weights import earshot_home

    return earshot_home() / "embeddings" / backbone / FEATURES_VERSION


def feature_network(backbone: str) -> nn.Module:
    """The pretrained `backbone` wrapped to output transfer features as its embedding (`CropPooledFeatures`)."""
    from earshot.models import spec
    from earshot.models.heads import CropPooledFeatures
    from earshot.models.weights import fetch

    s = spec(backbone)
    return CropPooledFeatures(s.build(fetch(s.filename, s.url, s.sha256)).backbone)


def feature_extractor(backbone: str) -> Path:
    """Bundle whose `embedding` output is the transfer features (exported once per machine and backbone), so
    cached features come from the same ONNX graph that the trained bundle runs, under the same clip policy."""
    from earshot.bundle import is_bundle
    from earshot.export import export_bundle
    from earshot.frontend import EfficientATMel
    from earshot.labels import audioset
    from earshot.models import spec
    from earshot.models.tagger import WaveformTagger

    out = embeddings_dir(backbone) / "extractor"
    if not is_bundle(out):
        s = spec(backbone)
        labels, ids = audioset()
        card = {"name": f"{backbone}-features", "description": f"{backbone} transfer features ({FEATURE_LAYOUT})",
                "labels": list(labels), "label_ids": list(ids), "sample_rate": s.sample_rate,
                "window_seconds": TRANSFER_WINDOW, "multi_label": True, "license": s.license, "source": s.source}
        export_bundle(WaveformTagger(EfficientATMel(), feature_network(backbone), multi_label=True), out, card)
    return out


def transfer_features(manifest: Manifest, backbone: str = "mn04-as", log: _Log | None = None):
    """Features [n, dim] of every item with the `feature_extractor` bundle on onnxruntime, cached on disk per
    sha256 of the file's bytes.

    Row layout: FEATURE_LAYOUT + the clip duration (s), computed under the serving clip policy (one pass over
    the clip padded to 1 s when it is at most 1.5 windows long, else the mean over 50 %-overlapping windows).
    Returns (features, [(index, reason)] of unreadable items).
    """
    from earshot.classifier import Classifier

    log = log or _Log(True, None)
    cache = embeddings_dir(backbone)
    cache.mkdir(parents=True, exist_ok=True)
    clf = None
    rows: list[np.ndarray | None] = []
    bad: list[tuple[int, str]] = []
    hits = 0
    t0 = time.time()
    for i, it in enumerate(manifest.items):
        try:
            raw = it.data if it.data is not None else it.path.read_bytes()
        except OSError as e:
            bad.append((i, f"read_error: {e}"))
            rows.append(None)
            continue
        f = cache / f"{hashlib.sha256(raw).hexdigest()}.npy"
        if f.is_file():
            try:
                rows.append(np.load(f, allow_pickle=False))
                hits += 1
                continue
            except (OSError, ValueError):
                pass
        if clf is None:
            clf = Classifier.load(feature_extractor(backbone))
        try:
            y = clf.decode(raw, str(it.path))  # the bytes already read for the hash
        except AudioError as e:
            bad.append((i, _reason(e)))
            rows.append(None)
            continue
        row = np.concatenate([clf.embed_waveform(y), [len(y) / clf.sample_rate]]).astype(np.float32)
        tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, row, allow_pickle=False)
        os.replace(tmp, f)
        rows.append(row)
        if (i + 1) % 200 == 0:
            log(f"features {i + 1}/{len(manifest)} ({hits} cached)", stage="features", done=i + 1,
                total=len(manifest))
    good = [r for r in rows if r is not None]
    feats = np.stack(good) if good else np.zeros((0, 1), dtype=np.float32)
    log(f"features: {len(good)} clips ({hits} from cache, {len(bad)} unreadable) in {time.time() - t0:.1f}s",
        stage="features", done=len(manifest), total=len(manifest), cached=hits)
    # rows of bad items are dropped: callers skip the same indices from the manifest
    return feats, bad


def _fit_head(x_tr, y_tr, x_va, y_va, n_classes: int, *, epochs: int, seed: int, hidden: int, lr: float,
              weight_decay: float, dropout: float, log: _Log, patience: int = 40):
    """Train an EmbeddingHead with AdamW, early stopping on validation accuracy (then loss); best checkpoint."""
    from earshot.models.heads import EmbeddingHead

    _seed_all(seed)
    dev = _device()
    xt, yt = torch.as_tensor(x_tr, device=dev), torch.as_tensor(y_tr, device=dev)
    xv, yv = torch.as_tensor(x_va, device=dev), torch.as_tensor(y_va, device=dev)
    head = EmbeddingHead(xt.shape[1], n_classes, hidden=hidden, dropout=dropout, mean=xt.mean(0),
                         std=xt.std(0)).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bs = 64
    best, history = _BestEpoch(patience), []
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(xt), generator=gen).to(dev)
        total = 0.0
        for s in range(0, len(xt), bs):
            idx = perm[s : s + bs]
            loss = loss_fn(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        head.eval()
        with torch.no_grad():
            out = head(xv)
            vloss = float(loss_fn(out, yv))
            vacc = float((out.argmax(1) == yv).float().mean())
        history.append({"epoch": epoch, "loss": total / len(xt), "val_loss": vloss, "val_acc": vacc})
        best.update(head, vacc, vloss)
        if epoch % 25 == 0 or epoch == 1:
            log(f"head epoch {epoch}: loss {total / len(xt):.4f} val_loss {vloss:.4f} val_acc {vacc:.4f}",
                stage="epoch", family="transfer", epoch=epoch, loss=total / len(xt), val_acc=vacc)
        if best.done:
            break
    head.load_state_dict(best.state)
    return head.cpu().eval(), history, best.accuracy


def train_transfer(manifest: Manifest, feats: np.ndarray, tr: np.ndarray, va: np.ndarray, *, backbone: str,
                   epochs: int | None, seed: int, finetune: bool, log: _Log) -> Trained:
    """Head on cached pretrained features (+ optional fine-tuning) → exportable WaveformTagger."""
    from earshot.frontend import EfficientATMel
    from earshot.models.tagger import WaveformTagger

    labels = manifest.labels
    y = manifest.targets(labels)
    x = feats[:, :-1]  # drop the duration column
    cfg = {"hidden": 256, "lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.5}
    n_epochs = epochs or 300
    head, history, vacc = _fit_head(x[tr], y[tr], x[va], y[va], len(labels), epochs=n_epochs, seed=seed,
                                    log=log, **cfg)
    log(f"transfer head: best val_acc {vacc:.4f} after {len(history)} epochs", stage="trained",
        family="transfer", val_acc=vacc)
    model = WaveformTagger(EfficientATMel(), feature_network(backbone), head, multi_label=False).eval()
    config = {"backbone": backbone, "features": FEATURE_LAYOUT, "head": f"MLP ({cfg['hidden']} hidden)", **cfg,
              "epochs_run": len(history), "max_epochs": n_epochs, "batch_size": 64, "label_smoothing": 0.1,
              "early_stopping": "validation accuracy, then loss; patience 40"}
    trained = Trained("transfer", model, model.frontend.sample_rate, TRANSFER_WINDOW, 1.0, vacc, history, config)
    if finetune:
        trained = _finetune(trained, manifest, tr, va, epochs=epochs, seed=seed, log=log)
    return trained


def _finetune(trained: Trained, manifest: Manifest, tr, va, *, epochs: int | None, seed: int,
              log: _Log) -> Trained:
    """Unfreeze the backbone: fine-tune the whole tagger on decoded 32 kHz clips at a low learning rate."""
    _seed_all(seed)
    sr = trained.sample_rate
    max_len = int(TRANSFER_WINDOW * sr)
    waves = {}
    for i in np.concatenate([tr, va]):
        try:
            from earshot import audio

            waves[int(i)] = audio.decode(manifest.items[i].source, sr, name=str(manifest.items[i].path))[:max_len]
        except AudioError:
            continue
    y = manifest.targets()
    dev = _device()
    model = trained.model.to(dev)
    opt = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": 1e-4},
                             {"params": model.head.parameters(), "lr": 5e-4}], weight_decay=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def batch(ids):
        n = max(len(waves[i]) for i in ids)
        n = max(n, sr)
        x = np.zeros((len(ids), n), dtype=np.float32)
        for j, i in enumerate(ids):
            x[j, : len(waves[i])] = waves[i]
        return torch.as_tensor(x, device=dev), torch.as_tensor(y[ids], device=dev)

    def val_acc() -> float:
        model.eval()
        ok = 0
        ids = [int(i) for i in va if int(i) in waves]
        with torch.no_grad():
            for s in range(0, len(ids), 16):
                xb, yb = batch(ids[s : s + 16])
                ok += int((model.logits(xb)[0].argmax(1) == yb).sum())
        return ok / max(1, len(ids))

    best = _BestEpoch(math.inf, (trained.val_accuracy, 0.0), copy.deepcopy(model.state_dict()))
    gen = np.random.default_rng(seed)
    train_ids = [int(i) for i in tr if int(i) in waves]
    for epoch in range(1, (epochs or 3) + 1):
        model.train()
        model.backbone.eval()  # keep pretrained BatchNorm statistics
        total = 0.0
        order = gen.permutation(train_ids)
        for s in range(0, len(order), 8):
            xb, yb = batch([int(i) for i in order[s : s + 8]])
            loss = loss_fn(model.logits(xb)[0], yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(yb)
        acc = val_acc()
        trained.history.append({"epoch": len(trained.history) + 1, "loss": total / len(order), "val_acc": acc})
        log(f"finetune epoch {epoch}: loss {total / len(order):.4f} val_acc {acc:.4f}", stage="epoch",
            family="transfer", epoch=epoch, loss=total / len(order), val_acc=acc)
        best.update(model, acc)
    model.load_state_dict(best.state)
    trained.model, trained.val_accuracy = model.cpu().eval(), best.accuracy
    trained.config.update({"finetune": True, "finetune_lr": {"backbone": 1e-4, "head": 5e-4},
                           "finetune_epochs": epochs or 3})
    return trained


# ---------------------------------------------------------------------------------------------------- CNN


def decode_items(manifest: Manifest, indices, sample_rate: int) -> tuple[dict[int, np.ndarray], list]:
    """Decoded mono clips {index: waveform} at `sample_rate`, and [(index, reason)] of unreadable ones."""
    from earshot import audio

    waves, bad = {}, []
    for i in indices:
        it = manifest.items[int(i)]
        try:
            waves[int(i)] = audio.decode(it.source, sample_rate, name=str(it.path))
        except AudioError as e:
            bad.append((int(i), _reason(e)))
    return waves, bad


def window_for(durations: Sequence[float]) -> float:
    """Fixed input length for the CNN: the 95th percentile of clip durations rounded up to 0.5 s, in [1, 10]."""
    if not len(durations):
        return 1.0
    p95 = float(np.percentile(np.asarray(durations), 95))
    return float(min(10.0, max(1.0, math.ceil(p95 * 2) / 2)))


class _MelAugment:
    """Training-time augmentation on normalised log-mel [b, 1, mels, frames] (`frontend.normalised_log`).

    frequency warp x0.85-1.15 (VTLP-like: other voices) and time stretch x0.8-1.2 (linear interpolation),
    gain ±20 dB (an offset), a random smooth equaliser (other microphones and rooms: four cosines over the mel
    axis, each ±EQ_DB/2 dB), additive noise mixed in the power domain at 10-40 dB below the clip, time shift
    (done by the caller's crop), SpecAugment (2 frequency masks ≤ 8 bands, 2 time masks ≤ 10 % of frames).

    Level and colouring matter most when each source comes with its own recording chain: on FSDD, where every
    speaker used another set-up (levels 20 dB apart), they lift unseen-speaker accuracy by 4 points.
    """

    GAIN_DB = 20.0
    EQ_DB = 20.0

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen

    def rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen)

    def warp(self, x: torch.Tensor, lo: float, hi: float, dim: int) -> torch.Tensor:
        """Resample axis `dim` (2: mels, 3: frames) by a random factor per example, anchored at index 0."""
        b, n = x.shape[0], x.shape[dim]
        scale = lo + self.rand(b) * (hi - lo)
        pos = (torch.arange(n, dtype=torch.float32)[None, :] / scale[:, None]).clamp(0, n - 1)
        i0 = pos.floor().long()
        i1 = (i0 + 1).clamp(max=n - 1)
        w = pos - i0
        shape = (b, 1, n, 1) if dim == 2 else (b, 1, 1, n)
        i0, i1, w = i0.view(shape).expand_as(x), i1.view(shape).expand_as(x), w.view(shape)
        return torch.gather(x, dim, i0) * (1 - w) + torch.gather(x, dim, i1) * w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, m, t = x.shape
        x = self.warp(self.warp(x, 0.85, 1.15, 2), 0.8, 1.2, 3)
        band = torch.linspace(0, 1, m).view(1, m)
        eq_db = sum((self.rand(b, 1) - 0.5) * self.EQ_DB * torch.cos(math.pi * k * band) for k in range(1, 5))
        gain_db = (self.rand(b, 1) * 2 - 1) * self.GAIN_DB + eq_db  # [b, m]
        x = x + gain_db.view(b, 1, m, 1) * (math.log(10) / 10) / LOG_SCALE  # power x 10^(dB/10): a log offset
        power = mel_power(x)
        level = power.mean(dim=(2, 3), keepdim=True)
        snr_db = (self.rand(b) * 30 + 10).view(b, 1, 1, 1)
        tilt = torch.linspace(0, 1, m).view(1, 1, m, 1) * (self.rand(b).view(b, 1, 1, 1) * 2 - 1)
        noise = torch.exp(tilt * 2) * (0.5 + self.rand(b, 1, m, t)) * level * 10 ** (-snr_db / 10)
        apply = (self.rand(b) < 0.5).float().view(b, 1, 1, 1)
        x = normalised_log(power.clamp_min(0) + apply * noise)
        floor = x.amin(dim=(2, 3), keepdim=True)
        for _ in range(2):
            f = (self.rand(b) * 9).long()
            f0 = (self.rand(b) * (m - f)).long()
            tw = (self.rand(b) * (t * 0.1 + 1)).long()
            t0 = (self.rand(b) * (t - tw)).long()
            mi = torch.arange(m).view(1, m)
            ti = torch.arange(t).view(1, t)
            fm = ((mi >= f0[:, None]) & (mi < (f0 + f)[:, None])).view(b, 1, m, 1)
            tm = ((ti >= t0[:, None]) & (ti < (t0 + tw)[:, None])).view(b, 1, 1, t)
            x = torch.where(fm | tm, floor, x)
        return x


def train_cnn(manifest: Manifest, tr: np.ndarray, va: np.ndarray, waves: dict[int, np.ndarray], *,
              epochs: int | None, seed: int, log: _Log, window: float | None = None) -> Trained:
    """CompactCNN from scratch on log-mel windows with augmentation and mixup; best validation epoch kept."""
    from earshot.frontend import EfficientATMel
    from earshot.models.cnn import CNN_FRONTEND, CompactCNN
    from earshot.models.tagger import WaveformTagger

    _seed_all(seed)
    sr = CNN_FRONTEND["sample_rate"]
    labels = manifest.labels
    y_all = manifest.targets(labels)
    tr = np.array([i for i in tr if int(i) in waves])
    va = np.array([i for i in va if int(i) in waves])
    window = window or window_for([len(waves[int(i)]) / sr for i in tr])
    w = int(window * sr)
    frontend = EfficientATMel(**CNN_FRONTEND).eval()
    n_frames = frontend.n_frames(w)

    def mels(ids, pad_to: int) -> list[torch.Tensor]:
        """Log-mel of each clip padded (trailing silence) to `pad_to` samples, as served."""
        out = []
        with torch.no_grad():
            for s in range(0, len(ids), 64):
                chunk = [waves[int(i)] for i in ids[s : s + 64]]
                n = max(pad_to, max(len(c) for c in chunk))
                x = np.zeros((len(chunk), n), dtype=np.float32)
                for j, c in enumerate(chunk):
                    x[j, : len(c)] = c
                m = frontend(torch.as_tensor(x))
                for j, c in enumerate(chunk):
                    out.append(m[j, :, : frontend.n_frames(max(pad_to, len(c)))].clone())
        return out

    t0 = time.time()
    train_mels = mels(tr, w)
    # the tail of each clip padded with silence: lets the random shift move the clip right
    content = [frontend.n_frames(len(waves[int(i)])) for i in tr]
    val_x = torch.stack([m[:, :n_frames] for m in mels(va, w)]).unsqueeze(1)
    y_tr = torch.as_tensor(y_all[tr])
    y_va = torch.as_tensor(y_all[va])
    log(f"cnn: log-mel of {len(tr)} + {len(va)} clips ({window:g} s windows) in {time.time() - t0:.1f}s",
        stage="features")

    gen = torch.Generator().manual_seed(seed)
    augment = _MelAugment(gen)

    def train_batch(ids: torch.Tensor) -> torch.Tensor:
        xs = []
        for k in ids.tolist():
            m = train_mels[k]
            total = m.shape[1]
            if total > n_frames:  # long clip: random crop
                s = int(torch.randint(0, total - n_frames + 1, (1,), generator=gen))
                xs.append(m[:, s : s + n_frames])
            else:  # short clip: random shift right within the window
                slack = max(0, n_frames - content[k])
                s = int(torch.randint(0, slack + 1, (1,), generator=gen)) if slack else 0
                pad = torch.full((m.shape[0], s), SILENCE_LOGMEL)
                xs.append(torch.cat([pad, m], dim=1)[:, :n_frames])
        return augment(torch.stack(xs).unsqueeze(1))

    dev = _device()
    # channels-last convolutions train about 30 % faster on CPU (oneDNN); the exported graph is unaffected
    net = CompactCNN(len(labels), n_mels=CNN_FRONTEND["n_mels"]).to(dev, memory_format=torch.channels_last)
    n_epochs = epochs or 30
    bs = 64
    steps = n_epochs * math.ceil(len(tr) / bs)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    patience = max(10, n_epochs // 2)
    best, history = _BestEpoch(patience), []
    beta = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4))
    for epoch in range(1, n_epochs + 1):
        net.train()
        perm = torch.randperm(len(tr), generator=gen)
        total, t_ep = 0.0, time.time()
        for s in range(0, len(tr), bs):
            ids = perm[s : s + bs]
            xb, yb = train_batch(ids).to(dev, memory_format=torch.channels_last), y_tr[ids].to(dev)
            target = nn.functional.one_hot(yb, len(labels)).float()
            if torch.rand(1, generator=gen).item() < 0.5:  # mixup on half of the batches
                lam = float(beta.sample())
                lam = max(lam, 1 - lam)
                j = torch.randperm(len(xb), generator=gen).to(dev)
                xb = lam * xb + (1 - lam) * xb[j]
                target = lam * target + (1 - lam) * target[j]
            logits, _ = net(xb)
            loss = torch.sum(-target * torch.log_softmax(logits, 1), dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(ids)
        net.eval()
        with torch.no_grad():
            out = torch.cat([net(val_x[s : s + 256].to(dev))[0] for s in range(0, len(val_x), 256)]).cpu()
        vloss = float(nn.functional.cross_entropy(out, y_va))
        vacc = float((out.argmax(1) == y_va).float().mean())
        history.append({"epoch": epoch, "loss": total / len(tr), "val_loss": vloss, "val_acc": vacc})
        log(f"cnn epoch {epoch}/{n_epochs}: loss {total / len(tr):.4f} val_loss {vloss:.4f} val_acc {vacc:.4f} "
            f"({time.time() - t_ep:.1f}s)", stage="epoch", family="cnn", epoch=epoch, loss=total / len(tr),
            val_acc=vacc)
        best.update(net, vacc, vloss)
        if best.done:
            break
    net.load_state_dict(best.state)
    net = net.cpu().to(memory_format=torch.contiguous_format)
    model = WaveformTagger(EfficientATMel(**CNN_FRONTEND), net, None, multi_label=False).eval()
    config = {"frontend": dict(CNN_FRONTEND), "network": "CompactCNN", "lr": 3e-3, "schedule": "one-cycle",
              "weight_decay": 1e-2, "batch_size": bs, "epochs_run": len(history), "max_epochs": n_epochs,
              "augment": "frequency warp x0.85-1.15, time stretch x0.8-1.2, gain ±20 dB, random EQ (4 cosines "
                         "over the mel axis, ±10 dB each), noise 10-40 dB SNR "
                         "(p .5), time shift/crop, SpecAugment 2F×8 2T×10%, "
                         "mixup Beta(.4,.4) on half of the batches",
              "early_stopping": f"validation accuracy, then loss; patience {patience}"}
    return Trained("cnn", model, sr, window, window, best.accuracy, history, config)


# ------------------------------------------------------------------------------------------------- driver


def _fit_one(manifest: Manifest, tr, va, *, family: str, feats, backbone, epochs, seed, finetune, log,
             waves_cache: dict) -> tuple[list[Trained], Trained, str]:
    """Train the candidates `family` calls for on one split; returns (candidates, chosen, why)."""
    candidates: list[Trained] = []
    why = f"--model {family}"
    with_cnn = family == "cnn"
    if family in ("auto", "transfer"):
        candidates.append(train_transfer(manifest, feats, tr, va, backbone=backbone, epochs=epochs, seed=seed,
                                         finetune=finetune, log=log))
    if family == "auto":
        median = float(np.median(feats[:, -1])) if feats is not None and len(feats) else 0.0
        t_acc = candidates[0].val_accuracy
        per_class = len(tr) / max(1, len(manifest.labels))
        with_cnn = median < SPEECH_LIKE_SECONDS or (t_acc < AUTO_MIN_ACCURACY
                                                    and per_class >= AUTO_CNN_MIN_PER_CLASS)
        if median < SPEECH_LIKE_SECONDS:
            why = f"auto: median clip {median:.2f} s < {SPEECH_LIKE_SECONDS:g} s (speech-like) → trained the CNN too"
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
        waves = _cnn_waves(manifest, np.concatenate([tr, va]), waves_cache, log)
        candidates.append(train_cnn(manifest, tr, va, waves, epochs=epochs, seed=seed, log=log))
    chosen = max(candidates, key=lambda c: c.val_accuracy)  # first (transfer) wins ties
    if len(candidates) > 1:
        scores = ", ".join(f"{c.family} {c.val_accuracy:.4f}" for c in candidates)
        why += f"; kept {chosen.family} (validation accuracy {scores})"
    return candidates, chosen, why


def _cnn_waves(manifest: Manifest, ids, cache: dict, log: _Log) -> dict[int, np.ndarray]:
    from earshot.models.cnn import CNN_FRONTEND

    need = [int(i) for i in ids if int(i) not in cache and int(i) not in cache.setdefault("_bad", {})]
    t0 = time.time()
    waves, bad = decode_items(manifest, need, CNN_FRONTEND["sample_rate"])
    cache.update(waves)
    for i, reason in bad:  # only after a split (the first decode already skipped unreadable files)
        cache["_bad"][i] = reason
        it = manifest.items[i]
        log(f"skipped unreadable {it.path}: {reason}", stage="skip", path=str(it.path), reason=reason)
        manifest.skipped.append({"path": str(it.path), "reason": reason})
    if need:
        log(f"decoded {len(waves)} clips at {CNN_FRONTEND['sample_rate']} Hz in {time.time() - t0:.1f}s",
            stage="decode")
    return {k: v for k, v in cache.items() if isinstance(k, int)}


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


def fit(
    data: str | Path,
    *,
    model: str = "auto",
    backbone: str = "mn04-as",
    val_fold: str | int | None = None,
    val_split: float | None = None,
    cv: int | None = None,
    filters: Sequence[str] = (),
    label_regex: str | None = None,
    group_regex: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    finetune: bool = False,
    quiet: bool = False,
    progress: Progress | None = None,
) -> Fit:
    """Everything `train` does short of exporting: manifest, features, split (or CV), candidates, choice."""
    if model not in FAMILIES:
        raise DataError(f"--model must be one of {', '.join(FAMILIES)}, not {model!r}", reason="bad_option")
    log = _Log(quiet, progress)
    with _torch_settings():
        return _fit(data, model=model, backbone=backbone, val_fold=val_fold, val_split=val_split, cv=cv,
                    filters=filters, label_regex=label_regex, group_regex=group_regex, epochs=epochs, seed=seed,
                    finetune=finetune, log=log)


@contextlib.contextmanager
def _torch_settings():
    """Threads sized to the machine and deterministic kernels while training; the caller's settings after."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _fit(data, *, model, backbone, val_fold, val_split, cv, filters, label_regex, group_regex, epochs, seed,
         finetune, log: _Log) -> Fit:
    manifest = load_manifest(data, label_regex=label_regex, group_regex=group_regex, filters=filters)
    log(f"{manifest.layout} layout: {len(manifest)} clips, {len(manifest.labels)} classes"
        + (f", {len(manifest.skipped)} skipped" if manifest.skipped else ""), stage="manifest")
    waves_cache: dict = {}
    feats = None
    if model in ("auto", "transfer"):
        feats, bad = transfer_features(manifest, backbone, log)
        _skip(manifest, bad, log)
    else:
        from earshot.models.cnn import CNN_FRONTEND

        waves, bad = decode_items(manifest, range(len(manifest)), CNN_FRONTEND["sample_rate"])
        _skip(manifest, bad, log)
        drop = {i for i, _ in bad}
        kept = [i for i in range(len(manifest) + len(drop)) if i not in drop]
        waves_cache.update({new: waves[old] for new, old in enumerate(kept)})
    if len(manifest.labels) < 2:
        raise DataError("fewer than 2 classes left after skipping unreadable files", reason="one_class")
    options = {"model": model, "val_fold": val_fold, "val_split": val_split, "cv": cv, "seed": seed,
               "max_epochs": epochs, "finetune": finetune}
    common = {"feats": feats, "backbone": backbone, "epochs": epochs, "seed": seed, "finetune": finetune,
              "log": log, "waves_cache": waves_cache}
    if not cv:
        tr, va = split_manifest(manifest, val_fold=val_fold, val_split=val_split, seed=seed)
        log(f"split: {len(tr)} train, {len(va)} validation", stage="split")
        candidates, chosen, why = _fit_one(manifest, tr, va, family=model, **common)
        return Fit(chosen, candidates, manifest, tr, va, why, None, options)

    folds = cv_folds(manifest, k=cv, seed=seed)
    runs = []
    family, first_why = model, ""
    for f, (tr, va) in enumerate(folds, 1):
        log(f"cv fold {f}/{len(folds)}: {len(tr)} train, {len(va)} validation", stage="cv", fold=f)
        _, chosen, why = _fit_one(manifest, tr, va, family=family, **common)
        if family == "auto":  # decide once, on the first fold
            family, first_why = chosen.family, why
        runs.append((chosen, _bundle_metrics(chosen, manifest, va), tr, va, why))
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
    return Fit(chosen, [chosen], manifest, tr, va, why, summary, options)


def train(
    data: str | Path,
    out: str | Path,
    *,
    quiet: bool = False,
    progress: Progress | None = None,
    name: str | None = None,
    **options: Any,
) -> Path:
    """Train a single-label classifier on `data` (any layout `earshot.data.load_manifest` reads) → bundle `out`.

    `options` are those of :func:`fit`: `model` ``auto`` | ``transfer`` | ``cnn`` (see the module doc);
    validation `val_fold`, else `val_split`, else the layout's official validation fold, else a stratified
    group-aware 20 %; `cv=K` for K-fold cross-validation (official folds when K equals their number), mean ± std
    in the card, the bundle being the best fold's model; `epochs` maximum (early stopping keeps the best);
    `backbone`, `filters`, `label_regex`, `group_regex`, `seed`, `finetune`. Progress: one line per step on
    stderr unless `quiet`; `progress(event_dict)` gets the same events. `name`: the card's name (default: out's
    folder name). Returns the bundle directory.
    """
    t_start = time.time()
    result = fit(data, quiet=quiet, progress=progress, **options)
    log = _Log(quiet, progress)
    log.t0 = t_start
    log(f"chose {result.chosen.family}: {result.why}", stage="chosen", family=result.chosen.family)
    return write_bundle(result, out, backbone=options.get("backbone", "mn04-as"), t_start=t_start, log=log,
                        name=name)


def _bundle_metrics(trained: Trained, manifest: Manifest, va) -> dict[str, Any]:
    """Validation metrics of an in-memory candidate, via the same clip policy as serving (torch forward)."""
    from earshot import audio

    labels = manifest.labels
    model = trained.model.eval()
    y_true, y_pred = [], []
    min_len = int(trained.min_seconds * trained.sample_rate)
    win = int(trained.window_seconds * trained.sample_rate)
    with torch.no_grad():
        for i in va:
            it = manifest.items[int(i)]
            try:
                y = audio.decode(it.source, trained.sample_rate, name=str(it.path))
            except AudioError:
                continue
            if len(y) <= 1.5 * win:
                x = np.pad(y, (0, max(0, min_len - len(y))))[None]
            else:
                starts = list(range(0, len(y) - win + 1, win // 2))
                if starts[-1] + win < len(y):
                    starts.append(len(y) - win)
                x = np.stack([y[s : s + win] for s in starts])
            scores = model(torch.as_tensor(x, dtype=torch.float32))[0].mean(0)
            y_true.append(labels.index(it.label))
            y_pred.append(int(scores.argmax()))
    return metrics_for(y_true, y_pred, labels)


def write_bundle(result: Fit, out: str | Path, *, backbone: str = "mn04-as", t_start: float | None = None,
                 log: _Log | None = None, name: str | None = None) -> Path:
    """Export `result.chosen` with its card, score it on the validation split with onnxruntime, add plots."""
    from earshot.classifier import Classifier
    from earshot.export import export_bundle

    out = Path(out)
    t_start = time.time() if t_start is None else t_start
    log = log or _Log(True, None)
    chosen, manifest, tr, va = result.chosen, result.manifest, result.train_idx, result.val_idx
    labels = manifest.labels
    sources = {"transfer": f"transfer learning on {backbone} (EfficientAT, MIT) features",
               "cnn": "CompactCNN trained from scratch by earshot"}
    data_summary = manifest.summary()
    data_summary["skipped_files"] = manifest.skipped[:1000]
    data_summary["n_train"], data_summary["n_validation"] = int(len(tr)), int(len(va))
    groups = {side: sorted({manifest.items[int(i)].group for i in idx} - {None})
              for side, idx in (("train", tr), ("validation", va))}
    if groups["validation"]:
        data_summary["split_groups"] = {k: v[:500] for k, v in groups.items()}
    card = {
        "name": name or out.name,
        "description": f"{len(labels)}-class classifier ({chosen.family}) trained on {manifest.layout} data",
        "labels": labels,
        "label_ids": None,
        "sample_rate": chosen.sample_rate,
        "window_seconds": chosen.window_seconds,
        "min_seconds": chosen.min_seconds,
        "multi_label": False,
        "thresholds": None,
        "metrics": {},
        "training": {
            "family": chosen.family,
            "why": result.why,
            "candidates": {c.family: {"val_accuracy": round(c.val_accuracy, 6), "epochs_run": len(c.history)}
                           for c in result.candidates},
            "backbone": backbone if chosen.family == "transfer" else None,
            **result.options,
            **chosen.config,
            "device": str(_device()),
            "torch": torch.__version__,
            "history": chosen.history,
        },
        "data": data_summary,
        "source": sources[chosen.family],
        "license": "MIT (EfficientAT weights); check the license of your training data"
        if chosen.family == "transfer" else "check the license of your training data",
    }
    t0 = time.time()
    export_bundle(chosen.model, out, card)
    log(f"exported {out} in {time.time() - t0:.1f}s", stage="exported")
    # the card's metrics: the exported bundle on onnxruntime, as `earshot evaluate` computes them
    clf = Classifier.load(out)
    items = [manifest.items[int(i)] for i in va]
    scores, kept = score_items(clf, items)
    y_true = [labels.index(items[k].label) for k in kept]
    metrics = metrics_for(y_true, scores.argmax(1).tolist(), labels)
    metrics["split"] = "validation"
    if result.cv is not None:
        metrics["cv"] = result.cv
    from earshot.bundle import read_bundle

    card = read_bundle(out).card
    card["metrics"] = metrics
    card["training"]["wall_seconds"] = round(time.time() - t_start, 2)
    write_json_atomic(out / CARD_FILE, card)
    plot_confusion(metrics, out / "confusion_matrix.png", title=f"{card['name']} validation")
    _plot_curves(chosen.history, out / "learning_curves.png", chosen.family)
    log(f"validation accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} (n {metrics['n']}); "
        f"bundle {out} in {time.time() - t_start:.1f}s", stage="done", accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"], bundle=str(out))
    return out


def _plot_curves(history: list[dict[str, float]], path: Path, family: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, [h["loss"] for h in history], label="train loss")
    if any("val_loss" in h for h in history):
        ax.plot(ep, [h.get("val_loss", np.nan) for h in history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_acc"] for h in history], color="tab:green", label="validation accuracy")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1.01)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax.set_title(f"{family} learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
