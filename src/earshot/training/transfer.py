"""The transfer family: an MLP head on cached pretrained features, optionally followed by fine-tuning of the
whole tagger. Exported as ``WaveformTagger(EfficientATMel(), CropPooledFeatures(backbone), head)``."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from earshot import audio, clips
from earshot.errors import AudioError
from earshot.frontend import EfficientATMel
from earshot.models import spec
from earshot.models.heads import EmbeddingHead
from earshot.models.tagger import WaveformTagger
from earshot.training import distributed
from earshot.training.features import FEATURE_LAYOUT, feature_network
from earshot.training.loop import BestEpoch, Log, Trained, seed_all, training_device
from earshot.training.manifest import Manifest


def fit_head(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray, n_classes: int, *,
              epochs: int, seed: int, hidden: int, lr: float, weight_decay: float, dropout: float, log: Log,
              patience: int = 40) -> tuple[EmbeddingHead, list[dict[str, float]], float]:
    """Train an EmbeddingHead with AdamW, early stopping on validation accuracy (then loss); best checkpoint."""
    seed_all(seed)
    dev = training_device()
    xt, yt = torch.as_tensor(x_tr, device=dev), torch.as_tensor(y_tr, device=dev)
    xv, yv = torch.as_tensor(x_va, device=dev), torch.as_tensor(y_va, device=dev)
    head = EmbeddingHead(xt.shape[1], n_classes, hidden=hidden, dropout=dropout, mean=xt.mean(0),
                         std=xt.std(0)).to(dev)
    model = distributed.wrap(head)  # several processes: each one's share of every batch, gradients averaged
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bs = 64
    best, history = BestEpoch(patience), []
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(xt), generator=gen).to(dev)
        total, seen = 0.0, 0
        for s in range(0, len(xt), bs):
            idx = perm[s : s + bs]
            mine = idx[distributed.part(len(idx))]
            loss = loss_fn(model(xt[mine]), yt[mine])
            opt.zero_grad()
            (loss * distributed.weight(len(mine), len(idx))).backward()
            opt.step()
            total += float(loss.detach()) * len(mine)
            seen += len(mine)
        total *= len(xt) / seen  # the mean over this process's share, as a sum over the epoch
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
        if distributed.agree(best.done):
            break
    head.load_state_dict(best.state)
    return head.cpu().eval(), history, best.accuracy


def train_transfer(manifest: Manifest, feats: np.ndarray, tr: np.ndarray, va: np.ndarray, *, backbone: str,
                   epochs: int | None, seed: int, finetune: bool, log: Log) -> Trained:
    """Head on cached pretrained features (`transfer_features` rows, by manifest index) + optional fine-tuning
    → an exportable WaveformTagger over the backbone's window (`min_seconds` the clip policy's default)."""
    labels = manifest.labels
    y = manifest.targets(labels)
    x = feats[:, :-1]  # drop the duration column
    cfg = {"hidden": 256, "lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.5}
    n_epochs = epochs or 300
    head, history, vacc = fit_head(x[tr], y[tr], x[va], y[va], len(labels), epochs=n_epochs, seed=seed,
                                    log=log, **cfg)
    log(f"transfer head: best val_acc {vacc:.4f} after {len(history)} epochs", stage="trained",
        family="transfer", val_acc=vacc)
    model = WaveformTagger(EfficientATMel(), feature_network(backbone), head, multi_label=False).eval()
    config = {"backbone": backbone, "features": FEATURE_LAYOUT, "head": f"MLP ({cfg['hidden']} hidden)", **cfg,
              "epochs_run": len(history), "max_epochs": n_epochs, "batch_size": 64, "label_smoothing": 0.1,
              "early_stopping": "validation accuracy, then loss; patience 40"}
    if (ddp := distributed.describe()) is not None:
        config["distributed"] = ddp
    trained = Trained("transfer", model, model.frontend.sample_rate, spec(backbone).window_seconds,
                      clips.DEFAULT_MIN_SECONDS, vacc, history, config)
    if finetune:
        trained = _finetune(trained, manifest, tr, va, epochs=epochs, seed=seed, log=log)
    return trained


def _finetune(trained: Trained, manifest: Manifest, tr: np.ndarray, va: np.ndarray, *, epochs: int | None,
              seed: int, log: Log) -> Trained:
    """Unfreeze the backbone: fine-tune the whole tagger at a low learning rate on the decoded clips (their
    first window; a batch is padded with silence to its longest clip, at least the card's `min_seconds`)."""
    seed_all(seed)
    sr = trained.sample_rate
    max_len = int(trained.window_seconds * sr)
    min_len = int(trained.min_seconds * sr)
    waves = {}
    for i in np.concatenate([tr, va]):
        try:
            waves[int(i)] = audio.decode(manifest.items[i].source, sr, name=str(manifest.items[i].path))[:max_len]
        except AudioError:
            continue
    y = manifest.targets()
    dev = training_device()
    model = trained.model.to(dev)
    opt = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": 1e-4},
                             {"params": model.head.parameters(), "lr": 5e-4}], weight_decay=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def batch(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(waves[i]) for i in ids)
        n = max(n, min_len)
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

    best = BestEpoch(math.inf, (trained.val_accuracy, 0.0), copy.deepcopy(model.state_dict()))
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
