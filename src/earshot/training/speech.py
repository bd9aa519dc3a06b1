"""The speech family: a head on Google's speech embedding (`earshot.models.speech`), pretrained on many real
voices, for spoken words. The embedding network stays frozen; each clip's embeddings over time are pooled (mean
and max, `SpeechPooled`) and an MLP head (`EmbeddingHead`) learns the words from them, with early stopping on
validation accuracy. Features come from the same torch modules that the bundle exports, on each clip as served:
padded with silence to the window (`min_seconds`), centred in it (`centred`) and given `CONTEXT_SECONDS` of
silence either side inside the graph, so a word at the very edge of a clip or a stream window is still seen whole
by the 0.775 s receptive field. The head learns from the recordings alone when there are enough of them
(`head_clips`); synthetic takes join it only when recordings are few or absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from earshot import clips
from earshot.models import speech
from earshot.models.tagger import WaveformTagger
from earshot.training.additions import is_synthetic
from earshot.training.cnn import window_for
from earshot.training.loop import Log, Trained, seed_all
from earshot.training.manifest import Manifest
from earshot.training.transfer import fit_head

SAMPLE_RATE = speech.SAMPLE_RATE
CONTEXT_SECONDS = 0.4  # silence added either side of the input, inside the graph
ENSEMBLE = "cnn+speech"  # the family name of the averaged CNN and speech head
HEAD = {"hidden": 256, "lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.5}
RECORDED_PER_LABEL = 50  # recordings a label from which synthetic takes stay out of the head's training


class ContextMel(nn.Module):
    """`SpeechMel` of the waveform centred and with `context` samples of silence added either side.

    Centred: a clip shorter than its window arrives padded with zeros at the end (`clips.clip_frames`); its
    content is moved to the middle, so the embedding windows see the word at every position, as they do in
    a stream, instead of only at their start followed by silence. Input without leading or trailing zeros
    (any stream window) is unchanged. On FSDD's unseen speakers, a linear head on the centred embeddings
    scored 0.904 for nicolas against 0.866 end-padded (george 0.940 / 0.930, the others within 0.005).
    """

    def __init__(self, mel: speech.SpeechMel, context: int) -> None:
        super().__init__()
        self.mel, self.context = mel, context
        self.sample_rate = mel.sample_rate

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.mel(nn.functional.pad(centred(waveform), (self.context, self.context)))

    def at_rate(self, source_rate: int) -> ContextMel:
        self.mel.at_rate(source_rate)
        return self


def centred(waveform: torch.Tensor) -> torch.Tensor:
    """[batch, samples] with each row's content (first to last non-zero sample) moved to the middle."""
    n = waveform.shape[1]
    index = torch.arange(n, device=waveform.device)
    sound = waveform != 0
    end = ((index + 1) * sound).amax(dim=1, keepdim=True)  # one past the last non-zero sample (0: all zeros)
    start = n - ((n - index) * sound).amax(dim=1, keepdim=True)  # the first non-zero sample (n: all zeros)
    shift = (n - (end - start).clamp(min=0)) // 2 - start.clamp(max=n - 1)
    source = index - shift
    inside = (source >= 0) & (source < n)
    return torch.gather(waveform, 1, source.clamp(0, n - 1)) * inside


class CentredInput(nn.Module):
    """A front-end fed the waveform's content centred in a network's fixed input of `samples`: a shorter window
    padded with silence either side, a longer one cut to its middle `samples`."""

    def __init__(self, frontend: nn.Module, samples: int) -> None:
        super().__init__()
        self.frontend, self.samples = frontend, samples
        self.sample_rate = frontend.sample_rate

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # branch-free, for any window length in one exported graph: half the input's length of silence either side,
        # then the middle `samples` (for a shorter window: its content centred with silence around it)
        half = self.samples // 2
        x = nn.functional.pad(centred(waveform), (half, self.samples - half))
        index = torch.arange(self.samples, device=waveform.device) + waveform.shape[1] // 2
        return self.frontend(x.index_select(1, index))

    def at_rate(self, source_rate: int) -> CentredInput:
        self.frontend.at_rate(source_rate)
        return self


class SpeechPooled(nn.Module):
    """Log-mel → (no logits, [mean | max] of the speech embeddings over time): the backbone a head sits on."""

    def __init__(self, network: speech.SpeechEmbedding) -> None:
        super().__init__()
        self.network = network

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.network(mel)  # [batch, 96, steps]
        pooled = torch.cat([e.mean(dim=2), e.amax(dim=2)], dim=1)
        return pooled[:, :0], pooled


def feature_model() -> WaveformTagger:
    """The frozen front-end and backbone, without a head."""
    mel, network = speech.load()
    return WaveformTagger(ContextMel(mel, int(CONTEXT_SECONDS * SAMPLE_RATE)), SpeechPooled(network),
                          multi_label=False).eval()


def pooled_features(model: WaveformTagger, waves: list[np.ndarray], min_seconds: float,
                    batch: int = 32) -> np.ndarray:
    """[n, d] embeddings of each clip as served (the speech embedding pooled: 192): the clip-length policy's
    windows (`clips.clip_frames`), their features averaged over windows. Windows of one length from several clips
    share a batch: the word embedding's network runs twice as fast a window in batches of 32."""
    if not waves:  # no clips (an empty split): no rows, but the backbone's width, as before batching
        with torch.no_grad():
            width = model(torch.zeros(1, int(max(min_seconds, 1.0) * SAMPLE_RATE)))[1].shape[1]
        return np.zeros((0, width), dtype=np.float32)
    sums: list[np.ndarray] = [np.zeros(0)] * len(waves)
    counts = np.zeros(len(waves), dtype=np.int64)
    pending: dict[int, list[tuple[int, np.ndarray]]] = {}  # windows waiting, by length

    def flush(length: int) -> None:
        group = pending.pop(length)
        with torch.no_grad():
            out = model(torch.as_tensor(np.stack([f for _, f in group]), dtype=torch.float32))[1].numpy()
        for (k, _), row in zip(group, out):
            sums[k] = row.astype(np.float64) if counts[k] == 0 else sums[k] + row
            counts[k] += 1

    for k, y in enumerate(waves):
        for f in clips.clip_frames(y, SAMPLE_RATE, max(min_seconds, 1.0), min_seconds):
            pending.setdefault(len(f), []).append((k, f))
            if len(pending[len(f)]) >= batch:
                flush(len(f))
    for length in list(pending):
        flush(length)
    return np.stack([s / c for s, c in zip(sums, counts)]).astype(np.float32)


def train_speech(manifest: Manifest, tr: np.ndarray, va: np.ndarray, waves: dict[int, np.ndarray], *,
                 epochs: int | None, seed: int, log: Log, window: float | None = None) -> Trained:
    """MLP head on the frozen speech embedding's pooled features; best validation epoch kept. `waves`: decoded
    clips at 16 kHz by manifest index. The window (also `min_seconds`) is the CNN's `window_for` the training
    clips unless given."""
    tr, synthetic = head_clips(manifest, tr)
    config = {"backbone": "speech-embedding", "source": speech.SOURCE, "license": speech.LICENSE,
              "weights": {"url": speech.WHEEL_URL, "sha256": speech.WHEEL_SHA256},
              "features": "mean | max of the 96-d speech embeddings (0.775 s each, every 80 ms) over the window, "
                          f"a short clip centred in it, with {CONTEXT_SECONDS:g} s of silence either side",
              "synthetic_takes": synthetic}
    return train_frozen_head("speech", feature_model(), manifest, tr, va, waves, epochs=epochs, seed=seed, log=log,
                             window=window, config=config)


def train_frozen_head(family: str, model: WaveformTagger, manifest: Manifest, tr: np.ndarray, va: np.ndarray,
                      waves: dict[int, np.ndarray], *, epochs: int | None, seed: int, log: Log, window: float | None,
                      config: dict) -> Trained:
    """An MLP head (`HEAD`) on a frozen 16 kHz backbone's features of each clip as served (`pooled_features`),
    early stopping on validation accuracy; `model` gets the head. `config` goes to the card with the head's."""
    seed_all(seed)
    tr = np.array([i for i in tr if int(i) in waves])
    va = np.array([i for i in va if int(i) in waves])
    window = window or window_for([len(waves[int(i)]) / SAMPLE_RATE for i in tr])
    t0 = time.time()
    x_tr = pooled_features(model, [waves[int(i)] for i in tr], window)
    x_va = pooled_features(model, [waves[int(i)] for i in va], window)
    log(f"{family}: features of {len(tr)} + {len(va)} clips in {time.time() - t0:.1f}s", stage="features")
    y = manifest.targets(manifest.labels)
    n_epochs = epochs or 300
    head, history, vacc = fit_head(x_tr, y[tr], x_va, y[va], len(manifest.labels), epochs=n_epochs, seed=seed,
                                    log=log, **HEAD)
    log(f"{family} head: best val_acc {vacc:.4f} after {len(history)} epochs", stage="trained", family=family,
        val_acc=vacc)
    model.head = head
    config = {**config, "head": f"MLP ({HEAD['hidden']} hidden)", **HEAD, "epochs_run": len(history),
              "max_epochs": n_epochs, "batch_size": 64, "label_smoothing": 0.1,
              "early_stopping": "validation accuracy, then loss; patience 40"}
    return Trained(family, model.eval(), SAMPLE_RATE, window, window, vacc, history, config)


def recorded_clips(manifest: Manifest, tr: np.ndarray, seed: int, per_label: int) -> np.ndarray | None:
    """The recordings of `tr` a head on a costly embedding trains on (at most `per_label` a label, drawn with the
    seed), or None when the data has fewer than `RECORDED_PER_LABEL` recordings a label (the member is then not
    trained): a head fit to synthetic voices learns cues real speakers lack (`head_clips`)."""
    recorded = tr[~is_synthetic(manifest)[tr.astype(int)]]
    if len(recorded) < RECORDED_PER_LABEL * len(manifest.labels):
        return None
    y = manifest.targets(manifest.labels)[recorded.astype(int)]
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(recorded[y == k])[:per_label] for k in range(len(manifest.labels))]
    return np.sort(np.concatenate(keep))


def train_recorded_head(family: str, build: Callable[[], WaveformTagger], manifest: Manifest, tr: np.ndarray,
                        va: np.ndarray, waves: dict[int, np.ndarray], *, per_label: int, config: dict,
                        epochs: int | None, seed: int, log: Log, window: float | None) -> Trained | None:
    """`train_frozen_head` on the recordings of `recorded_clips` (the frozen network `build` makes only then), or
    None, said in the log, when the data has too few recordings a label."""
    clips = recorded_clips(manifest, tr, seed, per_label)
    if clips is None:
        log(f"{family}: fewer than {RECORDED_PER_LABEL} recordings a label; its head is not trained",
            stage="features")
        return None
    config = {**config, "training_clips": f"{len(clips)} recordings (at most {per_label} a label; no synthetic takes)"}
    return train_frozen_head(family, build(), manifest, clips, va, waves, epochs=epochs, seed=seed, log=log,
                             window=window, config=config)


def head_clips(manifest: Manifest, tr: np.ndarray) -> tuple[np.ndarray, str]:
    """The training clips for the head, and the card's word on synthetic takes: left out when the recordings have
    at least `RECORDED_PER_LABEL` clips a label. The embedding already knows many real voices; a head fit to
    synthetic ones as well learns cues that real speakers lack (FSDD, nicolas held out: 0.912 from his four
    peers' recordings alone, 0.874 with 5000 synthetic takes beside them). Few recordings (the Speech Commands
    sample's 8 a word) or none (a model from its words alone) keep every take."""
    synthetic = is_synthetic(manifest)[tr.astype(int)]
    if not synthetic.any():
        return tr, "none"
    recorded = int((~synthetic).sum())
    if recorded >= RECORDED_PER_LABEL * len(manifest.labels):
        return tr[~synthetic], f"left out ({recorded} recordings, at least {RECORDED_PER_LABEL} a label)"
    return tr, f"{int(synthetic.sum())} beside {recorded} recordings"


class Averaged(nn.Module):
    """Several single-label networks on the same waveform, as one exportable graph: their softmax scores
    averaged, their embeddings side by side, the first one's log-mel."""

    def __init__(self, members: list[WaveformTagger]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.multi_label = False

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outs = [m(waveform) for m in self.members]
        scores = torch.stack([o[0] for o in outs]).mean(dim=0)
        return scores, torch.cat([o[1] for o in outs], dim=1), outs[0][2]


def averaged(cnn: Trained, *heads: Trained) -> Trained:
    """The CNN and one or more heads on frozen embeddings as one model (`Averaged`), served over the CNN's window;
    its family names the members (``cnn+speech``, ``cnn+speech+word``); its validation accuracy is for the caller to
    measure (0 until then)."""
    members = (cnn, *heads)
    config = {"members": {m.family: m.config for m in members},
              "combination": "mean of the members' class probabilities"}
    return Trained("+".join(m.family for m in members), Averaged([m.model for m in members]).eval(), cnn.sample_rate,
                   cnn.window_seconds, cnn.min_seconds, 0.0, cnn.history, config)
