"""Training benchmarks on the shared data: wall time and unseen-split accuracy of `earshot.train`.

    python benchmarks/train.py [--only esc10,fsdd,us8k] [--speaker theo|all] [--keep DIR]

(a) ESC-10, transfer, folds 1-3 → fold 4 (includes embedding extraction unless cached; `--cold` clears the cache)
(b) FSDD speaker-independent: 4 speakers → the 5th (`--speaker`, default theo; `all` iterates), models cnn,
    transfer and auto
(c) UrbanSound8K subset, fold 1 → fold 2, auto
Accuracy is the card's validation accuracy: the exported ONNX bundle on the held-out split.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")) / "data"
os.environ.setdefault("EARSHOT_MODEL_MIRROR", str(DATA.parent / "weights"))
os.environ.setdefault("EARSHOT_HOME", str(ROOT / ".cache" / "earshot"))

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo")


def run(name: str, out: Path, data, **options) -> dict:
    from earshot.training import train

    t0 = time.time()
    bundle = train(data, out / name.replace(" ", "_"), quiet=True, **options)
    wall = time.time() - t0
    card = json.loads((bundle / "card.json").read_text())
    m = card["metrics"]
    row = {"benchmark": name, "family": card["training"]["family"], "accuracy": m["accuracy"],
           "macro_f1": m["macro_f1"], "n": m["n"], "wall_s": round(wall, 1), "why": card["training"]["why"]}
    print(f"{name:42s} {row['family']:8s} acc {m['accuracy']:.4f}  F1 {m['macro_f1']:.4f}  n {m['n']:4d}  "
          f"{wall:6.1f} s", flush=True)
    return row


def fsdd_csv(folder: Path, grouped: bool = True) -> Path:
    """FSDD as a CSV manifest with the speaker as fold (so --val-fold or --test-fold SPEAKER holds one out) and,
    when `grouped`, as group too (a validation fraction then takes whole speakers; without it, any takes)."""
    path = folder / ("fsdd.csv" if grouped else "fsdd_takes.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold"] + (["group"] if grouped else []))
        for p in sorted((DATA / "fsdd" / "recordings").glob("*.wav")):
            digit, speaker, _ = p.stem.split("_")
            w.writerow([str(p), digit, speaker] + ([speaker] if grouped else []))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="esc10,fsdd,us8k")
    ap.add_argument("--speaker", default="theo")
    ap.add_argument("--models", default="cnn,transfer,auto", help="FSDD model families")
    ap.add_argument("--cold", action="store_true", help="clear the embedding cache first")
    ap.add_argument("--keep", type=Path, help="keep the bundles in this folder")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if args.cold:
        from earshot.training import embeddings_dir

        shutil.rmtree(embeddings_dir("mn04-as"), ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="earshot-bench-"))
    out = args.keep or tmp
    rows = []
    try:
        if "esc10" in only:
            rows.append(run("ESC-10 transfer folds 1-3 -> 4", out, DATA / "esc50", model="transfer",
                            filters=["esc10=True"], val_fold=4))
        if "fsdd" in only:
            manifest = fsdd_csv(tmp)
            speakers = SPEAKERS if args.speaker == "all" else (args.speaker,)
            for model in args.models.split(","):
                for spk in speakers:
                    rows.append(run(f"FSDD {model} unseen speaker {spk}", out, manifest, model=model,
                                    val_fold=spk))
        if "us8k" in only:
            rows.append(run("UrbanSound8K subset fold 1 -> 2", out, DATA / "urbansound8k_subset", val_fold=2))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    json.dump(rows, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
