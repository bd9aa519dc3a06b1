"""Keyword spotting for voices never heard: accuracy on held-out speakers with and without each lever.

    python benchmarks/keywords.py [--only fsdd,sc] [--speaker all|nicolas,jackson] [--levers none,synth]
                                  [--model auto] [--epochs N] [--protocol test|val] [--keep DIR]
                                  [--also cnn+speech] [--adapt 1.0,0.5] [--bundles DIR]

(a) FSDD: 4 speakers → the 5th, for each held-out speaker and each lever.
(b) Speech Commands v0.01 sample (30 words, official lists): validation-list clips, whose speakers never appear in
    training; accuracy on the words (the generated ``_silence_`` validation clips are left out of the figure).
Levers: ``none`` (default flags: synthetic voices on for keyword data such as Speech Commands, off for FSDD),
``nosynth`` (``--no-synthesize``), ``synth`` (``--synthesize``), ``utt`` (``--input-norm utterance``), ``synth_utt``
(both). Accuracy is the exported bundle's on onnxruntime. With ``--protocol test`` (the default) the unseen
speakers are the run's test fold (``--test-fold``): nothing in training, in choosing the epoch or the family sees
them, and the figure is the card's ``metrics.test``; the epoch is chosen on 10 % of the training speakers' clips
(FSDD: any takes; Speech Commands: whole speakers). ``--protocol val`` makes them the validation fold instead, as
the earlier figures below were measured: the CNN then keeps its best epoch on them, which leans optimistic.
Each row has wall and CPU seconds. Set OMP_NUM_THREADS=1 on a busy machine.

Figures with --protocol test (seed 0, 2 cores): FSDD --synthesize nicolas 0.900, jackson 0.914, george 0.936,
lucas 0.958, theo 0.944 (mean 0.930); default flags 0.804 / 0.838 / 0.894 / 0.884 / 0.960 (mean 0.876; george
kept the transfer head on a 1.0 validation tie and scored 0.524 until ties went to the CNN on speech-like clips);
Speech Commands 0.886 (synthetic voices, the default there), 0.341 with --no-synthesize (transfer kept).
With --model cnn+speech (the CNN and a head on Google's speech embedding, averaged) and --synthesize: FSDD
nicolas 0.946, jackson 0.968, george 0.944, lucas 0.988, theo 0.990 (mean 0.967; 501-574 s a speaker, nothing
else running); Speech Commands 1.000 (44 of 44). With the CNN's default of 20 epochs when synthetic takes are
present (30 before), --model auto, the same flags: 0.938 / 0.978 / 0.952 / 0.984 / 0.984 (mean 0.967), 315-409 s
a speaker. With the word head (EfficientWord-Net's embedding) in `auto` (cnn+speech+word kept), the same flags and
--also cnn+speech (the run's cnn+speech candidate scored on the test fold too): george 0.968 (cnn+speech 0.952),
jackson 0.984 (0.974), lucas 0.990 (0.984), nicolas 0.934 (0.938), theo 0.986 (0.984); mean 0.972 (0.966),
394-484 s a speaker. With Whisper tiny.en's encoder as a fourth member (`auto` keeps cnn+speech+word+whisper), the
same flags: george 0.976, jackson 0.990, lucas 0.992, nicolas 0.940, theo 0.992 (mean 0.978), 471-585 s a speaker;
nicolas adapted (--adapt 1) 0.964; seed 1,
nicolas 0.946, adapted 0.958. Before short clips were centred for the speech head and it
learnt from the recordings alone: 0.934 / 0.974 / 0.930 / 0.998 / 0.994 (mean 0.966), Speech Commands 0.977.
Measured the same way and not kept (nicolas 0.900 and jackson 0.914 for the same seed): BatchNorm statistics
recomputed on the real training clips 0.902 (real and synthetic 0.908; on nicolas's own unlabelled clips 0.924);
weights of the last 3-12 epochs averaged, jackson 0.902-0.910; per-band style mixing (MixStyle over frequency)
0.834; a prior trained on 574 synthetic words first, 0.896 / 0.932 after 8 epochs of it, nicolas 0.844 after 24;
speaker-adversarial training (gradient reversal, weight 0.3) 0.872; twice the synthetic takes per epoch, george
0.912 against 0.936; a high-band shelf (above 1.5-3.5 kHz, 10-30 dB down, half of the examples) 0.894 / 0.942 /
0.922 / 0.956 / 0.946, mean 0.932 against 0.930; 800 synthetic takes per epoch instead of 2000, 0.870 / 0.882.

``--adapt 1,0.5`` (``earshot adapt`` on each unseen speaker, cross-fitted over even and odd takes; seconds per
speaker): strength 1 nicolas 0.922, jackson 0.942, george 0.928, lucas 0.974, theo 0.976 (mean 0.948 against
0.930 unadapted); strength 0.5 0.922 / 0.922 / 0.934 / 0.968 / 0.970 (mean 0.943). Not kept, with adaptation
(nicolas; 0.900, adapted 0.922 for the defaults): batches of one voice at a time, 0.868 / adapted 0.902 (each real
speaker and each synthesiser alone) and 0.816 / 0.854 (each synthetic voice alone); the input normalised per mel
band, 0.884 / 0.866. The default `cnn+speech+word` bundles, whose heads' input standardisation adapts too:
george / jackson / lucas / nicolas / theo 0.976 / 0.992 / 0.994 / 0.952 / 0.992 (mean 0.981 against 0.972 trained,
seed 0); nicolas on seeds 1 and 2, 0.942 and 0.942 against 0.936 and 0.934. Also not kept (test protocol,
nicolas; jackson where given): a 20 Hz-4 kHz front-end 0.874;
contrast scaling x0.71-1.4, 0.878 / 0.902; no mixup 0.886; synthesiser shares 0.3/0.35/0.35 and 0.8/0.1/0.1
(espeak-ng/flite/festival) 0.860 and 0.846; test-time shifts 0.900.

``--levers words``: keyword models from their words alone (no recordings; `words_only`), scored on every FSDD
speaker and on every clip of the Speech Commands sample's ten commands.

Earlier figures, --protocol val (CNN, 30 epochs max, seed 0, 2 shared cores). FSDD held-out speaker nicolas (--model
cnn, scored in torch): default 0.824; --input-norm utterance 0.836; --synthesize with every take in every epoch (500
takes a digit: epochs 3.5 times as long; the earlier figure) 0.91; --synthesize with the per-epoch draw (as many
synthetic takes as real clips each epoch) 0.870 in 533 s (jackson: 0.948 in 306 s, against 0.880; george 0.964 in
474 s, against 0.944; lucas 0.976 in 370 s, against 0.946; theo 0.986 in 356 s, against 0.988; mean 0.949), with
--input-norm utterance too 0.862. With word edges cut short in training, a quarter of the espeak-ng takes in other
languages' voices and synthetic takes band-limited to the real clips' 8 kHz sampling: nicolas 0.902 (244 s with
takes and features cached), jackson 0.958 (236 s), george 0.954 (298 s), lucas 0.980 (320 s), theo 0.982 (257 s),
mean 0.955; the edge cuts alone gave nicolas 0.902, with the accents 0.896. Test-time augmentation (resampled
x0.9/1.0/1.1) 0.892 on nicolas; averaging two to four such models 0.898-0.914; a room's tail in training (RT60
0.15-0.8 s on 30 % of the batch) 0.902; twice the synthetic takes per epoch 0.910 (401 s, --model cnn); a CNN 1.5
times as wide (widths 24-192) 0.888 (593 s); word heads cut as often as tails (HEAD_P 0.5, HEAD_MAX 0.3) 0.914 (277
s, --model cnn). Frozen mn04-as features + MLP head 0.396; that head then fine-tuned with the backbone for 2 epochs
0.472 (835 s). Utterance normalisation is not the default: windows holding the tail of a word get stretched to full
contrast, and in a stream they open false events (the tail of "one" read as "seven"). Speech Commands sample, 44
validation-list clips: default 0.295 (transfer kept, 37 s); --synthesize 0.909 (CNN, 5010 synthetic takes, 2000
drawn each epoch, 187 s); with --input-norm utterance too 0.909 (200 s); with the edge cuts and accented voices
0.909 (211 s, takes rendered in the run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")) / "data"
os.environ.setdefault("EARSHOT_MODEL_MIRROR", str(DATA.parent / "weights"))
os.environ.setdefault("EARSHOT_HOME", str(ROOT / ".cache" / "earshot"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import SPEAKERS, fsdd_csv  # noqa: E402

LEVERS = {"none": {}, "nosynth": {"synthesize": False}, "synth": {"synthesize": True},
          "utt": {"input_norm": "utterance"}, "synth_utt": {"synthesize": True, "input_norm": "utterance"}}


def words_accuracy(card: dict, split: str = "validation") -> tuple[float, int]:
    """Accuracy over the `split` clips (the card's validation metrics, or its ``metrics.test``) whose true label
    is not a background label, and their number."""
    m = card["metrics"] if split == "validation" else card["metrics"][split]
    cm = np.asarray(m["confusion_matrix"])
    keep = [i for i, lab in enumerate(card["labels"]) if lab not in set(card.get("background_labels") or ())]
    n = int(cm[keep].sum())
    return (float(np.trace(cm[np.ix_(keep, keep)]) / n) if n else float("nan")), n


def _cpu() -> float:
    """CPU seconds used by this process so far: on a shared machine, wall time says more about the others."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(name: str, out: Path, data, also: tuple[str, ...] = (), **options) -> dict:
    """Train as `earshot train` does; `also`: candidate families scored on the test fold too (in torch, before
    export), beside the kept one, from the same run."""
    from earshot.training.card import write_bundle
    from earshot.training.families import candidate_metrics, fit

    t0, c0 = time.time(), _cpu()
    options = {"quiet": True, **options}
    result = fit(data, **options)
    t1, held = time.time(), result.manifest.holdout_indices()
    others = {c.family: round(candidate_metrics(c, result.manifest, held)["accuracy"], 4)
              for c in result.candidates if c.family in also and len(held)}
    scoring = time.time() - t1  # not part of training: taken out of the wall
    bundle = write_bundle(result, out / name.replace(" ", "_"), t_start=t0)
    wall, cpu = time.time() - t0 - scoring, _cpu() - c0
    card = json.loads((bundle / "card.json").read_text())
    acc, n = words_accuracy(card, "test" if options.get("test_fold") else "validation")
    synth = (card["data"].get("synthetic") or {}).get("n", 0)
    row = {"benchmark": name, "family": card["training"]["family"], "accuracy": round(acc, 4), "n": n,
           "card_accuracy": card["metrics"]["accuracy"], "synthetic": synth, "wall_s": round(wall, 1),
           "cpu_s": round(cpu, 1), "epochs_run": card["training"].get("epochs_run")}
    if others:
        row["also"] = others
    print(f"{name:44s} {row['family']:8s} acc {acc:.4f}  n {n:4d}  synthetic {synth:5d}  {wall:6.1f} s wall  "
          f"{cpu:6.1f} s cpu" + "".join(f"  {k} {v:.4f}" for k, v in others.items()), flush=True)
    return row


def top_label(clf, path: Path) -> str:
    return clf.labels[int(np.argmax(clf.clip_scores(clf.decode(path))))]


def top_keyword(clf, path: Path) -> str:
    """The best-scoring label that is not a background label: the forced choice among the keywords."""
    keys = [i for i, lab in enumerate(clf.labels) if lab not in set(clf.bundle.card.get("background_labels") or ())]
    scores = clf.clip_scores(clf.decode(path))
    return clf.labels[keys[int(np.argmax(scores[keys]))]]


def adapted(bundle: Path, speaker: str, strength: float = 1.0) -> dict:
    """Cross-fitted adaptation to an unseen FSDD speaker: `earshot adapt` on the speaker's even takes (unlabelled),
    scored on the odd ones, and the other way round; one figure over all the speaker's clips, beside the unadapted
    bundle's on the same clips. No clip is scored by a bundle adapted on it."""
    from earshot.adaptation import adapt
    from earshot.bundle import read_bundle
    from earshot.classifier import Classifier

    files = sorted((DATA / "fsdd" / "recordings").glob(f"*_{speaker}_*.wav"))
    halves = [[f for f in files if int(f.stem.rsplit("_", 1)[1]) % 2 == parity] for parity in (0, 1)]

    def correct(path: Path, chosen: list[Path]) -> int:
        clf = Classifier(read_bundle(path))
        return sum(top_label(clf, f) == f.name.split("_")[0] for f in chosen)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        ok = 0
        for i, half in enumerate(halves):
            ok += correct(adapt(bundle, half, Path(tmp) / f"adapted{i}", strength=strength), halves[1 - i])
        wall = time.time() - t0
    row = {"benchmark": f"FSDD adapted to unseen {speaker}", "bundle": bundle.name, "strength": strength,
           "accuracy_unadapted": round(correct(bundle, files) / len(files), 4),
           "accuracy_adapted": round(ok / len(files), 4), "n": len(files), "wall_s": round(wall, 1)}
    print(f"{row['benchmark']:44s} unadapted {row['accuracy_unadapted']:.4f}  adapted {row['accuracy_adapted']:.4f}  "
          f"(strength {strength}, two adaptations on {len(halves[0])} clips each + scoring: {wall:.1f} s)", flush=True)
    return row


DIGITS = "0=zero,1=one,2=two,3=three,4=four,5=five,6=six,7=seven,8=eight,9=nine"
COMMANDS = "yes,no,up,down,left,right,on,off,stop,go"


def words_only(out: Path, only: set[str], common: dict) -> list[dict]:
    """Keyword models from their words alone (``earshot train --words ... --out``, no recordings): scored on every
    FSDD speaker (2500 clips; every one a voice never heard) and on every clip of the ten commands in the Speech
    Commands sample (none took part in training); the sample's other words that the synthetic voices never said
    as `_unknown_` (not in `keywords.FILLER_WORDS`) give the share answered "no keyword"."""
    from earshot.bundle import read_bundle
    from earshot.classifier import Classifier
    from earshot.training import train
    from earshot.training.keywords import FILLER_WORDS

    rows = []
    opts = {"quiet": True, **common}  # --model auto trains the CNN here; cnn+speech adds the speech head
    if "fsdd" in only:
        t0, c0 = time.time(), _cpu()
        bundle = train(None, out / "words_digits", words=DIGITS, **opts)
        wall, cpu = time.time() - t0, _cpu() - c0
        clf = Classifier(read_bundle(bundle))
        per, forced = {}, {}
        for spk in SPEAKERS:
            files = sorted((DATA / "fsdd" / "recordings").glob(f"*_{spk}_*.wav"))
            per[spk] = round(sum(top_label(clf, f) == f.name.split("_")[0] for f in files) / len(files), 4)
            forced[spk] = round(sum(top_keyword(clf, f) == f.name.split("_")[0] for f in files) / len(files), 4)
        mean, mean_forced = (round(float(np.mean(list(d.values()))), 4) for d in (per, forced))
        rows.append({"benchmark": "FSDD digits, words only (no recordings)", "per_speaker": per, "mean": mean,
                     "forced_choice_per_speaker": forced, "forced_choice_mean": mean_forced, "n": 2500,
                     "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
        print(f"{'FSDD digits, words only':44s} " + " / ".join(f"{k} {v:.3f}" for k, v in per.items())
              + f"  mean {mean:.4f}; forced choice among the digits " + " / ".join(f"{v:.3f}" for v in forced.values())
              + f"  mean {mean_forced:.4f}  {wall:6.1f} s wall  {cpu:6.1f} s cpu", flush=True)
    if "sc" in only:
        root = DATA / "speech_commands_v0.01_subset"
        t0, c0 = time.time(), _cpu()
        bundle = train(None, out / "words_commands", words=COMMANDS, **opts)
        wall, cpu = time.time() - t0, _cpu() - c0
        clf = Classifier(read_bundle(bundle))
        commands = set(COMMANDS.split(","))
        words = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith("_")]
        kw = [p for d in words if d.name in commands for p in sorted(d.glob("*.wav"))]
        others = [p for d in words if d.name not in commands and d.name not in FILLER_WORDS
                  for p in sorted(d.glob("*.wav"))]
        acc = sum(top_label(clf, p) == p.parent.name for p in kw) / max(1, len(kw))
        forced = sum(top_keyword(clf, p) == p.parent.name for p in kw) / max(1, len(kw))
        rejected = sum(top_label(clf, p) in ("_unknown_", "_silence_") for p in others) / max(1, len(others))
        rows.append({"benchmark": "Speech Commands commands, words only (no recordings)", "accuracy": round(acc, 4),
                     "forced_choice": round(forced, 4), "n": len(kw), "other_words_rejected": round(rejected, 4),
                     "n_other": len(others), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
        print(f"{'Speech Commands commands, words only':44s} acc {acc:.4f}  forced choice {forced:.4f}  n {len(kw):4d}"
              f"  other words answered _unknown_/_silence_ {rejected:.3f} (n {len(others)})  {wall:6.1f} s wall  "
              f"{cpu:6.1f} s cpu", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="fsdd,sc")
    ap.add_argument("--speaker", default="all", help="held-out FSDD speakers: all or a comma list")
    ap.add_argument("--levers", default="none,synth", help=f"comma list of {', '.join(LEVERS)}, or words (keyword "
                    "models from their words alone, no recordings)")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-label", type=int, help="synthetic takes per label (default: earshot's)")
    ap.add_argument("--protocol", choices=("test", "val"), default="test",
                    help="test: the unseen speakers are a test fold, untouched until the bundle is scored, and the "
                         "best epoch is chosen on 10 %% of the training speakers' clips; val: they are the "
                         "validation fold (the best epoch chosen on them: optimistic)")
    ap.add_argument("--also", default="", help="comma list of candidate families (e.g. cnn+speech) scored on the "
                    "test fold beside the kept one, from the same run")
    ap.add_argument("--keep", type=Path, help="keep the bundles in this folder")
    ap.add_argument("--verbose", action="store_true", help="training's per-stage lines on stderr, with times")
    ap.add_argument("--adapt", default="", help="comma list of strengths: after each FSDD run (test protocol), "
                    "adapt the bundle to the unseen speaker with `earshot adapt`, cross-fitted over halves of the "
                    "speaker's takes, at each strength")
    ap.add_argument("--bundles", type=Path, help="with --adapt: adapt the FSDD bundles kept in this folder by an "
                    "earlier run (--keep) instead of training")
    args = ap.parse_args(argv)
    strengths = [float(s) for s in args.adapt.split(",") if s]
    if args.bundles:
        speakers = SPEAKERS if args.speaker == "all" else tuple(args.speaker.split(","))
        rows = [adapted(args.bundles / f"FSDD_{lever}_unseen_{spk}", spk, st) for lever in args.levers.split(",")
                for spk in speakers for st in strengths or [1.0]]
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    only = set(args.only.split(","))
    also = tuple(f for f in args.also.split(",") if f)
    tmp = Path(tempfile.mkdtemp(prefix="earshot-kws-"))
    out = args.keep or tmp
    common = {"model": args.model, "epochs": args.epochs, "seed": args.seed, "synth_per_label": args.per_label}
    if args.verbose:
        common["quiet"] = False
    rows = []
    try:
        for lever in args.levers.split(","):
            if lever == "words":
                rows += words_only(out, only, common)
                continue
            opts = {**common, **LEVERS[lever]}
            held_out = args.protocol == "test"
            if "fsdd" in only:
                manifest = fsdd_csv(tmp, grouped=not held_out)
                speakers = SPEAKERS if args.speaker == "all" else tuple(args.speaker.split(","))
                for spk in speakers:
                    split = {"test_fold": spk, "val_split": 0.1} if held_out else {"val_fold": spk}
                    rows.append(run(f"FSDD {lever} unseen {spk}", out, manifest, also, **split, **opts))
                    if held_out:
                        rows += [adapted(out / f"FSDD_{lever}_unseen_{spk}", spk, st) for st in strengths]
            if "sc" in only:
                split = {"test_fold": "validation", "val_split": 0.1} if held_out else {}
                rows.append(run(f"Speech Commands {lever} validation list", out,
                                DATA / "speech_commands_v0.01_subset", also, **split, **opts))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    json.dump(rows, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
