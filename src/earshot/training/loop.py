"""What every training loop shares: seeding, the device, torch settings while training, the early-stopping
checkpoint keeper, the progress log, the reporting of unreadable files and `Trained`, the record of one trained
candidate."""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from earshot import cores
from earshot.errors import AudioError
from earshot.training.manifest import Manifest

Progress = Callable[[dict[str, Any]], None]


class Log:
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


def seed_all(seed: int) -> None:
    """Seed torch's and numpy's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def training_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_threads() -> int:
    """Threads to train with: ``OMP_NUM_THREADS`` when set (on a shared machine one thread per run can be
    several times faster than threads fighting over busy cores), else the cores this process may use, at most 8."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, min(cores.usable(), 8))


@contextlib.contextmanager
def torch_settings() -> Iterator[None]:
    """Threads sized to the machine and deterministic kernels while training; the caller's settings after."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(training_threads())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


class BestEpoch:
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


def unreadable_reason(e: AudioError) -> str:
    """The reason recorded for a file that failed to decode: ``"<reason>: <message>"``."""
    return f"{e.reason or 'unreadable'}: {e}"


def skip_unreadable(manifest: Manifest, bad: list[tuple[int, str]], log: Log) -> None:
    """Drop unreadable items (indices before any split) from `manifest` and report each one."""
    for i, reason in sorted(bad, reverse=True):
        it = manifest.items[i]
        log(f"skipped unreadable {it.path}: {reason}", stage="skip", path=str(it.path), reason=reason)
        manifest.skip(i, reason)
