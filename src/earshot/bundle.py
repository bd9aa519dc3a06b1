"""The model bundle: a directory with `model.onnx` and `card.json` (the contract every shell serves).

`model.onnx` takes `waveform` float32 [batch, samples] at `card.sample_rate` and returns `scores`
[batch, classes] (probabilities), `embedding` [batch, dim] and `logmel` [batch, mels, frames] (the model's own
features, for display). The front-end lives inside the graph, so training and serving cannot disagree.

A bundle may also carry graphs that take the waveform at a lower rate without resampling it (card
`rate_graphs`: {"16000": {"file": "model_16000.onnx", ...}}): same outputs, the front-end applying the
resampler's response itself (`earshot.frontend`), within the difference the card records.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earshot.errors import ModelError
from earshot.permissions import dir_mode, file_mode

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
RATE_GRAPHS = "rate_graphs"
REQUIRED = ("name", "labels", "sample_rate", "window_seconds", "multi_label")


@dataclass(frozen=True)
class Bundle:
    path: Path
    card: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def rate_graphs(self) -> dict[int, Path]:
        """The graphs for other input rates: {rate: path}, only those whose file is there."""
        entries = (self.card.get(RATE_GRAPHS) or {}).items()
        graphs = {int(rate): self.path / str(e["file"]) for rate, e in entries if isinstance(e, dict) and "file" in e}
        return {rate: path for rate, path in graphs.items()
                if path.parent == self.path and path.suffix == ".onnx" and path.is_file()}

    @property
    def files(self) -> list[str]:
        """The file names that make this bundle (what a copy of it must carry): graph, card, the graphs for other
        rates and the card's head graph, where present."""
        names = [MODEL_FILE, CARD_FILE, *(p.name for p in self.rate_graphs.values())]
        head = self.card.get("head")
        if isinstance(head, dict) and isinstance(head.get("file"), str) and "/" not in head["file"]:
            names.append(head["file"])
        return [n for n in dict.fromkeys(names) if (self.path / n).is_file()]


def rate_graph_file(rate: int) -> str:
    return f"model_{int(rate)}.onnx"


def is_bundle(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / CARD_FILE).is_file() and (p / MODEL_FILE).is_file()


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Open a bundle directory and check its card; raises ModelError naming what is wrong."""
    p = Path(path)
    if not is_bundle(p):
        raise ModelError(f"not a model bundle (needs {MODEL_FILE} and {CARD_FILE})", source=str(p), reason="not_bundle")
    try:
        card = json.loads((p / CARD_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"unreadable {CARD_FILE}: {e}", source=str(p), reason="bad_card") from e
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise ModelError(f"{CARD_FILE} lacks {', '.join(missing)}", source=str(p), reason="bad_card")
    card.setdefault("label_ids", [None] * len(card["labels"]))
    card.setdefault("thresholds", None)
    return Bundle(p, card)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_bundle(out: Path) -> Iterator[Path]:
    """A staging folder beside `out` to write a bundle into; when the block ends without error it replaces `out`
    (a rename, so readers see the old bundle or the new one, never a part), else it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        os.chmod(tmp, dir_mode())  # the bundle folder is shared like any other, not mkdtemp's 0700
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
