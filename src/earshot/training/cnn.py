"""The CNN family: `CompactCNN` trained from scratch on a 16 kHz 64-mel front-end over fixed-length windows
(`window_for`: the clips' 95th duration percentile, 1-10 s), with `MelAugment` and mixup; plus the decoded
clips it trains on (`decode_items`, `Waves`).

Options for voices and devices never heard: ``norm="utterance"`` puts `UtteranceNorm` (per-window CMVN) in front
of the network, inside the exported graph. Synthetic takes (`earshot.training.synthesis`) in the training set are
drawn afresh each epoch, `SYNTH_PER_REAL` times the real clips (at least `SYNTH_MIN_PER_EPOCH`), so 5000 takes do
not make every epoch 3.5 times longer (FSDD, 2 shared cores: about 470 s instead of over 600 s for 30 epochs). With
synthetic takes the default is `SYNTH_EPOCHS` (20) instead of `EPOCHS` (30): FSDD, each speaker held out in turn,
`auto` with `--synthesize`, the mean stays 0.967 and a run takes 315-409 s instead of 501-574 s."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import soxr
import torch
from torch import nn

from earshot import audio, clips
from earshot.errors import AudioError
from earshot.frontend import LOG_SCALE, SILENCE_LOGMEL, EfficientATMel
from earshot.models.cnn import CNN_FRONTEND, CompactCNN
from earshot.models.tagger import WaveformTagger
from earshot.training import distributed
from earshot.training.additions import is_synthetic
from earshot.training.augment import MelAugment, cut_edges
from earshot.training.keywords import WORDS_LAYOUT
from earshot.training.loop import BestEpoch, Log, Trained, seed_all, skip_unreadable, training_device, unreadable_reason
from earshot.training.manifest import Manifest

SAMPLE_RATE = CNN_FRONTEND["sample_rate"]
NORMS = ("none", "utterance")
SYNTH_PER_REAL = 1.0  # synthetic takes drawn per epoch: this many times the real training clips,
SYNTH_MIN_PER_EPOCH = 2000  # but at least this many (few real clips: the synthetic voices carry the training)
EPOCHS = 30  # default epochs
# default epochs with synthetic takes: each epoch draws fresh ones, so fewer epochs see as much new material
SYNTH_EPOCHS = 20
# No recordings (a keyword model from its words alone): the band of the audio to come is unknown, so every other
# synthetic take is passed through this sampling rate's band (telephony, FSDD) and the others keep the full band.
NARROW_BAND_RATE = 8000


class UtteranceNorm(nn.Module):
    """Per-utterance (per-window) mean and variance normalisation of the log-mel in front of a network: each mel
    band's mean over the window's active frames (within `range_db` of its loudest frame) is subtracted, and the
    result divided by the standard deviation of those cells. A recording chain's level and colouring (a fixed
    gain and equaliser are offsets on a log-mel) cancel out, whatever the speaker's microphone; frames quieter
    than the active span (silence, padding) are clamped at `floor` below the mean instead of dominating it.
    Cepstral mean and variance normalisation (CMVN) is the classic form in speech recognition."""

    def __init__(self, network: nn.Module, range_db: float = 40.0, floor: float = -4.0) -> None:
        super().__init__()
        self.network = network
        self.range = range_db * math.log(10) / 10 / LOG_SCALE  # dB of power → normalised log-mel units
        self.floor = floor

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energy = mel.mean(dim=2, keepdim=True)  # [b, 1, 1, t]
        active = (energy >= energy.amax(dim=3, keepdim=True) - self.range).to(mel.dtype)
        count = active.sum(dim=3, keepdim=True)
        mean = (mel * active).sum(dim=3, keepdim=True) / count  # [b, 1, m, 1]
        var = (((mel - mean) ** 2) * active).sum(dim=(2, 3), keepdim=True) / (count * mel.shape[2])
        x = ((mel - mean) / torch.sqrt(var + 1e-4)).clamp_min(self.floor)
        return self.network(x)


def decode_items(manifest: Manifest, indices: Iterable[int], sample_rate: int, band_rate: int | None = None
                 ) -> tuple[dict[int, np.ndarray], list[tuple[int, str]]]:
    """Decoded mono clips {index: waveform} at `sample_rate`, and [(index, reason)] of unreadable ones.

    Synthetic takes are passed through `band_rate` when it is lower (decoded at it, then brought to
    `sample_rate`): the band the real recordings have, so that no cue above it exists only in synthetic speech.
    With no recordings at all (`WORDS_LAYOUT`), every other take goes through `NARROW_BAND_RATE`'s band instead."""
    band = band_rate if band_rate is not None and band_rate < sample_rate else None
    unknown_band = manifest.layout == WORDS_LAYOUT and band is None  # no recordings to take the band from
    waves, bad = {}, []
    for i in indices:
        it = manifest.items[int(i)]
        limit = band
        if unknown_band and int(i) % 2 and "synthetic" in it.extra:  # every other take, telephone-narrow
            limit = NARROW_BAND_RATE
        try:
            if limit is not None and "synthetic" in it.extra:
                y = audio.decode(it.source, limit, name=str(it.path))
                waves[int(i)] = soxr.resample(y, limit, sample_rate).astype(np.float32, copy=False)
            else:
                waves[int(i)] = audio.decode(it.source, sample_rate, name=str(it.path))
        except AudioError as e:
            bad.append((int(i), unreadable_reason(e)))
    return waves, bad


def real_band_rate(manifest: Manifest, sample: int = 200) -> int | None:
    """The median native sample rate of the real (not synthetic) clips, from the headers of up to `sample` of
    them spread over the manifest; None when there are no readable real clips or no synthetic ones."""
    real = [it for it in manifest.items if "synthetic" not in it.extra]
    if len(real) == len(manifest.items) or not real:
        return None
    rates = []
    for it in real[:: max(1, len(real) // sample)]:
        try:
            rates.append(audio.info(it.source, name=str(it.path)).sample_rate)
        except AudioError:
            continue
    return int(np.median(rates)) if rates else None


class Waves:
    """Clips decoded at the CNN's rate by manifest index, decoded once and shared by every fold."""

    def __init__(self) -> None:
        self.decoded: dict[int, np.ndarray] = {}
        self.bad: dict[int, str] = {}
        self.band_rate: int | None = None  # the real clips' rate when synthetic takes are limited to it
        self._banded = False

    def _band(self, manifest: Manifest, log: Log) -> int | None:
        """`real_band_rate` of the manifest when it is below the CNN's rate (else None), found once and logged."""
        if not self._banded:
            self._banded = True
            rate = real_band_rate(manifest)
            if rate is not None and rate < SAMPLE_RATE:
                self.band_rate = rate
                log(f"synthetic takes band-limited to {rate} Hz sampling, as the real clips", stage="decode",
                    band_rate=rate)
        return self.band_rate

    def decode_all(self, manifest: Manifest, log: Log) -> None:
        """Decode every item but the test fold's before any split; unreadable ones are skipped from the manifest."""
        held = set(manifest.holdout_indices().tolist())
        ids = [i for i in range(len(manifest)) if i not in held]
        waves, bad = decode_items(manifest, ids, SAMPLE_RATE, self._band(manifest, log))
        skip_unreadable(manifest, bad, log)
        drop = {i for i, _ in bad}
        kept = [i for i in range(len(manifest) + len(drop)) if i not in drop]
        self.decoded.update({new: waves[old] for new, old in enumerate(kept) if old in waves})

    def get(self, manifest: Manifest, ids: Iterable[int], log: Log) -> dict[int, np.ndarray]:
        """Every clip decoded so far, after decoding those of `ids` not yet tried. A file that fails now (after
        a split, so it stays in the manifest) is reported once and listed in `Manifest.skipped`."""
        need = [int(i) for i in ids if int(i) not in self.decoded and int(i) not in self.bad]
        t0 = time.time()
        waves, bad = decode_items(manifest, need, SAMPLE_RATE, self._band(manifest, log))
        self.decoded.update(waves)
        for i, reason in bad:
            self.bad[i] = reason
            it = manifest.items[i]
            log(f"skipped unreadable {it.path}: {reason}", stage="skip", path=str(it.path), reason=reason)
            manifest.skipped.append({"path": str(it.path), "reason": reason})
        if need:
            log(f"decoded {len(waves)} clips at {SAMPLE_RATE} Hz in {time.time() - t0:.1f}s", stage="decode")
        return dict(self.decoded)


def window_for(durations: Sequence[float]) -> float:
    """Fixed input length for the CNN: the 95th percentile of clip durations rounded up to 0.5 s, in [1, 10]."""
    if not len(durations):
        return 1.0
    p95 = float(np.percentile(np.asarray(durations), 95))
    return float(min(10.0, max(1.0, math.ceil(p95 * 2) / 2)))


def train_cnn(manifest: Manifest, tr: np.ndarray, va: np.ndarray, waves: dict[int, np.ndarray], *,
              epochs: int | None, seed: int, log: Log, window: float | None = None,
              norm: str = "none") -> Trained:
    """CompactCNN from scratch on log-mel windows with augmentation and mixup; best validation epoch kept.

    `waves`: decoded clips at the CNN's rate by manifest index (items without one are left out). The window is
    `window_for` the training clips unless given; it is also the card's `min_seconds` (shorter clips are padded
    with silence to one window, as served). Validation during training scores each clip's first window; the
    card's metrics are computed later on the whole clips under the clip-length policy."""
    seed_all(seed)
    sr = SAMPLE_RATE
    labels = manifest.labels
    y_all = manifest.targets(labels)
    tr = np.array([i for i in tr if int(i) in waves])
    va = np.array([i for i in va if int(i) in waves])
    window = window or window_for([len(waves[int(i)]) / sr for i in tr])
    w = int(window * sr)
    frontend = EfficientATMel(**CNN_FRONTEND).eval()
    n_frames = frontend.n_frames(w)

    def mels(ids: np.ndarray, min_samples: int) -> list[torch.Tensor]:
        """Log-mel of each clip followed by silence up to `min_samples` samples, as served."""
        out = []
        with torch.no_grad():
            for s in range(0, len(ids), 64):
                chunk = [waves[int(i)] for i in ids[s : s + 64]]
                n = max(min_samples, max(len(c) for c in chunk))
                m = frontend(torch.as_tensor(np.stack([clips.pad_to(c, n) for c in chunk])))
                for j, c in enumerate(chunk):
                    out.append(m[j, :, : frontend.n_frames(max(min_samples, len(c)))].clone())
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
    augment = MelAugment(gen)

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
                xs.append(torch.cat([pad, cut_edges(m, content[k], gen)], dim=1)[:, :n_frames])
        return augment(torch.stack(xs).unsqueeze(1))

    dev = training_device()
    # channels-last convolutions train about 30 % faster on CPU (oneDNN); the exported graph is unaffected
    net: nn.Module = CompactCNN(len(labels), n_mels=CNN_FRONTEND["n_mels"])
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    if norm == "utterance":
        net = UtteranceNorm(net)
    net = net.to(dev, memory_format=torch.channels_last)
    model = distributed.wrap(net)  # several processes: each one's share of every batch, gradients averaged
    bs = 64
    synthetic = torch.as_tensor(is_synthetic(manifest)[tr.astype(int)])
    real_pos, synth_pos = torch.nonzero(~synthetic).flatten(), torch.nonzero(synthetic).flatten()
    n_epochs = epochs or (SYNTH_EPOCHS if len(synth_pos) else EPOCHS)
    # synthetic takes drawn afresh each epoch, SYNTH_PER_REAL x the real clips (at least SYNTH_MIN_PER_EPOCH)
    n_synth = min(len(synth_pos), max(SYNTH_MIN_PER_EPOCH, int(SYNTH_PER_REAL * len(real_pos))))
    if manifest.layout == WORDS_LAYOUT:  # no recordings: the synthetic takes are the data, all of them each epoch
        n_synth = len(synth_pos)
    per_epoch = len(real_pos) + n_synth
    steps = n_epochs * math.ceil(per_epoch / bs)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    patience = max(10, n_epochs // 2)
    best, history = BestEpoch(patience), []
    beta = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4))
    for epoch in range(1, n_epochs + 1):
        net.train()
        drawn = synth_pos[torch.randperm(len(synth_pos), generator=gen)[:n_synth]]
        pool = torch.cat([real_pos, drawn])
        perm = pool[torch.randperm(len(pool), generator=gen)]
        total, seen, t_ep = 0.0, 0, time.time()
        for s in range(0, per_epoch, bs):
            ids = perm[s : s + bs]
            xb, yb = train_batch(ids).to(dev, memory_format=torch.channels_last), y_tr[ids].to(dev)
            target = nn.functional.one_hot(yb, len(labels)).float()
            if torch.rand(1, generator=gen).item() < 0.5:  # mixup on half of the batches
                lam = float(beta.sample())
                lam = max(lam, 1 - lam)
                j = torch.randperm(len(xb), generator=gen).to(dev)
                xb = lam * xb + (1 - lam) * xb[j]
                target = lam * target + (1 - lam) * target[j]
            mine = distributed.part(len(xb))  # every rank built the same batch
            logits, _ = model(xb[mine])
            loss = torch.sum(-target[mine] * torch.log_softmax(logits, 1), dim=1).mean()
            opt.zero_grad()
            (loss * distributed.weight(len(logits), len(xb))).backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(logits)
            seen += len(logits)
        total *= per_epoch / max(1, seen)  # the mean over this process's share, as a sum over the epoch
        distributed.sync_buffers(net)  # validate rank 0's BatchNorm statistics everywhere
        net.eval()
        with torch.no_grad():
            out = torch.cat([net(val_x[s : s + 256].to(dev))[0] for s in range(0, len(val_x), 256)]).cpu()
        vloss = float(nn.functional.cross_entropy(out, y_va))
        vacc = float((out.argmax(1) == y_va).float().mean())
        history.append({"epoch": epoch, "loss": total / per_epoch, "val_loss": vloss, "val_acc": vacc})
        log(f"cnn epoch {epoch}/{n_epochs}: loss {total / per_epoch:.4f} val_loss {vloss:.4f} val_acc {vacc:.4f} "
            f"({time.time() - t_ep:.1f}s)", stage="epoch", family="cnn", epoch=epoch, loss=total / per_epoch,
            val_acc=vacc)
        best.update(net, vacc, vloss)
        if distributed.agree(best.done):
            break
    net.load_state_dict(best.state)
    net = net.cpu().to(memory_format=torch.contiguous_format)
    model = WaveformTagger(EfficientATMel(**CNN_FRONTEND), net, None, multi_label=False).eval()
    config = {"frontend": dict(CNN_FRONTEND), "network": "CompactCNN", "input_norm": norm,
              "synthetic_per_epoch": n_synth, "lr": 3e-3, "schedule": "one-cycle",
              "weight_decay": 1e-2, "batch_size": bs, "epochs_run": len(history), "max_epochs": n_epochs,
              "augment": "frequency warp x0.85-1.15, time stretch x0.8-1.2, gain ±20 dB, random EQ (4 cosines "
                         "over the mel axis, ±10 dB each), noise 10-40 dB SNR "
                         "(p .5), time shift/crop, SpecAugment 2F×8 2T×10%, "
                         "mixup Beta(.4,.4) on half of the batches",
              "early_stopping": f"validation accuracy, then loss; patience {patience}"}
    if (ddp := distributed.describe()) is not None:
        config["distributed"] = ddp
    return Trained("cnn", model, sr, window, window, best.accuracy, history, config)
