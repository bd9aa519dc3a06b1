"""Synthetic spoken examples of each label's word, rendered by the speech synthesisers installed on the machine.

Engines (Debian packages, all offline): ``espeak-ng`` (English accents x voice variants, speed and pitch),
``flite`` (its built-in voices, duration stretch and mean pitch), ``festival`` (``text2wave`` voices such as
``kal_diphone``, ``ked_diphone``, ``cmu_us_slt_arctic_hts``; duration stretch). Every rendering ("take") also
gets a speed perturbation (resampled by x0.88-1.14: tempo, pitch and formants together, like another vocal
tract), is trimmed to the word with a short random margin and peak-normalised, and is cached as 16 kHz 16-bit WAV
under ``$EARSHOT_HOME/synth/<engine>/`` keyed by engine version, voice, parameters and word, so reruns render
nothing. The plan of takes is deterministic for a seed.

`synthesize` returns training `Item`s (group ``synthetic:<engine>:<voice>``, ``extra["synthetic"]``) and the
summary the card records (engines, versions, voices used, counts per label). No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from earshot import cores
from earshot.errors import DataError
from earshot.models.weights import earshot_home
from earshot.training.manifest import Item

SAMPLE_RATE = 16000
ENGINES = ("espeak-ng", "flite", "festival")
ENGINE_SHARE = {"espeak-ng": 0.6, "flite": 0.2, "festival": 0.2}  # of the takes, among the engines present
SYNTH_BUDGET = 5000  # synthetic takes in all, by default: 500 a word for 10 words, 166 for 30
PER_LABEL_RANGE = (100, 500)
DIGIT_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
               "7": "seven", "8": "eight", "9": "nine"}
ESPEAK_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak",
                   "whisper", "whisperf", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "Alex",
                   "Andrea", "Andy", "Annie", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "ed",
                   "edward", "grandma", "grandpa", "iven", "john", "linda", "max", "michel", "norbert", "paul",
                   "quincy", "rob", "robert", "steph", "travis", "victor", "zac")
# Other languages' voices reading the English word: English as their speakers say it with their own phonemes
# ("six" in the French voice is /sis/), drawn for this share of the espeak-ng takes.
ESPEAK_FOREIGN = ("fr", "de", "es", "it", "nl", "pt", "pl")
ESPEAK_FOREIGN_SHARE = 0.25
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts", "cmu_us_awb_cg", "cmu_us_rms_cg",
                   "cmu_us_slt_cg", "rab_diphone", "don_diphone")
RATE_RANGE = (0.88, 1.14)
FESTIVAL_DIRS = (Path("/usr/share/festival/voices"),)


@dataclass(frozen=True)
class Take:
    """One rendering of `word` by `engine`'s `voice`: `stretch` (duration factor, 1 = the engine's own),
    `pitch` (0-1 across the engine's range; None where the engine has no pitch control), `rate` (speed
    perturbation), `margin` (seconds of silence kept each side)."""

    engine: str
    voice: str
    word: str
    stretch: float
    pitch: float | None
    rate: float
    margin: float

    def key(self, version: str) -> str:
        text = json.dumps({**asdict(self), "version": version, "sr": SAMPLE_RATE}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def word_for(label: str, words: Mapping[str, str] | None = None) -> str | None:
    """What to say for `label`: the `words` entry, the digit's name, else the label (``_``/``-`` as spaces);
    None for background labels (starting with ``_``) and labels without letters."""
    if words and label in words:
        return words[label]
    if label.startswith("_"):
        return None
    if label in DIGIT_WORDS:
        return DIGIT_WORDS[label]
    text = re.sub(r"[_\-]+", " ", label).strip()
    return text if re.search(r"[A-Za-z]", text) else None


def available_engines() -> list[str]:
    """The engines whose programs are on PATH (festival needs ``festival`` and at least one voice)."""
    found = []
    for engine in ENGINES:
        if engine == "festival":
            if shutil.which("festival") and festival_voices():
                found.append(engine)
        elif shutil.which(engine):
            found.append(engine)
    return found


def festival_voices() -> list[str]:
    """Festival voices of `FESTIVAL_VOICES` installed on this machine."""
    present = {p.name for d in FESTIVAL_DIRS if d.is_dir() for p in d.glob("*/*") if p.is_dir()}
    return [v for v in FESTIVAL_VOICES if v in present]


def voices(engine: str) -> list[str]:
    """The voices `synthesize` draws from for `engine`."""
    if engine == "espeak-ng":
        return [a + (f"+{v}" if v else "") for a in ESPEAK_ACCENTS + ESPEAK_FOREIGN for v in ESPEAK_VARIANTS]
    if engine == "flite":
        return list(FLITE_VOICES)
    if engine == "festival":
        return festival_voices()
    raise DataError(f"unknown speech synthesiser {engine!r}; known: {', '.join(ENGINES)}", reason="bad_option")


def engine_version(engine: str) -> str:
    """The engine's version line (part of the cache key)."""
    cmd = {"espeak-ng": ["espeak-ng", "--version"], "flite": ["flite", "--version"],
           "festival": ["festival", "--version"]}[engine]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "version" in ln.lower()
             or ln.lower().startswith(engine.split("-")[0])]
    return (lines[-1] if lines else "unknown")[:200]


def default_per_label(labels: Sequence[str], words: Mapping[str, str] | None = None) -> int:
    """Takes per word by default: `SYNTH_BUDGET` shared by the labels with a word, within `PER_LABEL_RANGE`.
    On FSDD (unseen speaker nicolas) 500 takes a digit lifted accuracy from 0.87 (200 takes) to 0.91."""
    n = sum(word_for(lab, words) is not None for lab in labels)
    return int(min(PER_LABEL_RANGE[1], max(PER_LABEL_RANGE[0], round(SYNTH_BUDGET / max(1, n)))))


def plan(labels: Sequence[str], *, words: Mapping[str, str] | None = None, per_label: int | None = None,
         seed: int = 0, engines: Sequence[str] | None = None) -> list[tuple[str, Take]]:
    """The takes to render, (label, take), `per_label` (default `default_per_label`) for each label with a word:
    engines in the proportions of `ENGINE_SHARE`, voices and parameters drawn uniformly. Deterministic for
    `seed`."""
    per_label = per_label or default_per_label(labels, words)
    engines = list(engines if engines is not None else available_engines())
    pools = {e: voices(e) for e in engines}
    engines = [e for e in engines if pools[e]]
    if not engines:
        return []
    # espeak-ng's other-language voices, drawn for ESPEAK_FOREIGN_SHARE of its takes
    foreign = {e: [v for v in pools[e] if v.split("+")[0] in ESPEAK_FOREIGN] for e in engines}
    native = {e: [v for v in pools[e] if v.split("+")[0] not in ESPEAK_FOREIGN] for e in engines}
    share = np.array([ENGINE_SHARE.get(e, 0.2) for e in engines])
    share = share / share.sum()
    out = []
    for label in labels:
        word = word_for(label, words)
        if word is None:
            continue
        digest = hashlib.sha256(f"{seed}:{label}:{word}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        counts = np.floor(share * per_label).astype(int)
        counts[: per_label - counts.sum()] += 1
        for engine, n in zip(engines, counts):
            for _ in range(int(n)):
                pool = native[engine]
                if foreign[engine] and rng.random() < ESPEAK_FOREIGN_SHARE:
                    pool = foreign[engine]
                voice = pool[int(rng.integers(len(pool)))]
                stretch = round(float(rng.uniform(0.8, 1.35)), 3)
                pitch = round(float(rng.uniform(0.0, 1.0)), 3) if engine != "festival" else None
                rate = round(float(rng.uniform(*RATE_RANGE)), 3)
                margin = round(float(rng.uniform(0.02, 0.15)), 3)
                out.append((label, Take(engine, voice, word, stretch, pitch, rate, margin)))
    return out


def synth_dir() -> Path:
    """Cache of rendered takes."""
    return earshot_home() / "synth"


def synthesize(labels: Sequence[str], *, words: Mapping[str, str] | None = None,
               per_label: int | None = None, seed: int = 0, engines: Sequence[str] | None = None,
               log: Callable[..., None] | None = None) -> tuple[list[Item], dict[str, Any]]:
    """Training items of synthetic spoken words for `labels` and the card's summary of them.

    Renders (or finds in the cache) the takes of `plan`. Raises `DataError` (reason ``no_synthesizer``) when no
    engine is installed. Takes an engine fails to render are counted in the summary, never silently dropped."""
    engines = list(engines if engines is not None else available_engines())
    if not engines:
        raise DataError("--synthesize needs a speech synthesiser: install espeak-ng, flite or festival "
                        "(apt-get install espeak-ng flite festival festvox-kallpc16k)", reason="no_synthesizer")
    takes = plan(labels, words=words, per_label=per_label, seed=seed, engines=engines)
    versions = {e: engine_version(e) for e in {t.engine for _, t in takes}}
    paths, failed, rendered = render([t for _, t in takes], versions)
    items = []
    for (label, take), path in zip(takes, paths):
        if path is not None:
            items.append(Item(path=path, label=label, group=f"synthetic:{take.engine}:{take.voice}",
                              extra={"synthetic": take.engine, "voice": take.voice, "word": take.word}))
    used: dict[str, Counter] = {}
    for it in items:
        used.setdefault(it.extra["synthetic"], Counter())[it.extra["voice"]] += 1
    summary = {
        "n": len(items),
        "per_label_planned": per_label or default_per_label(labels, words),
        "per_label": dict(sorted(Counter(it.label for it in items).items())),
        "words": {lab: word_for(lab, words) for lab in labels if word_for(lab, words) is not None},
        "engines": {e: {"version": versions.get(e), "n": sum(used.get(e, Counter()).values()),
                        "voices": dict(sorted(used.get(e, Counter()).items()))} for e in engines},
        "failed": failed,
        "rendered_now": rendered,
        "params": {"stretch": [0.8, 1.35], "pitch": [0.0, 1.0], "rate": list(RATE_RANGE), "margin_s": [0.02, 0.15],
                   "sample_rate": SAMPLE_RATE},
        "seed": seed,
    }
    if log is not None:
        used_n = {e: summary["engines"][e]["n"] for e in engines}
        log(f"synthesized {len(items)} clips of {len(summary['per_label'])} words with "
            f"{', '.join(f'{e} ({used_n[e]})' for e in engines)}; {rendered} rendered now, "
            f"{len(items) - rendered} from the cache" + (f", {failed} failed" if failed else ""), stage="synthesize",
            n=len(items), rendered=rendered, failed=failed)
    return items, summary


def render(takes: Sequence[Take], versions: Mapping[str, str]) -> tuple[list[Path | None], int, int]:
    """Cache paths of `takes` (None where rendering failed), the number failed, the number rendered now."""
    paths = [synth_dir() / t.engine / f"{t.key(versions[t.engine])}.wav" for t in takes]
    todo = [(t, p) for t, p in zip(takes, paths) if not p.is_file()]
    for engine in {t.engine for t, _ in todo}:
        (synth_dir() / engine).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="earshot-synth-") as tmp:
        raw = {p: Path(tmp) / f"{p.stem}.wav" for _, p in todo}
        simple = [(t, raw[p]) for t, p in todo if t.engine != "festival"]
        with ThreadPoolExecutor(max_workers=min(4, cores.usable())) as pool:
            list(pool.map(lambda tp: _run_engine(*tp), simple))
        _run_festival([(t, raw[p]) for t, p in todo if t.engine == "festival"])
        done = 0
        for t, p in todo:
            if _finish(t, raw[p], p):
                done += 1
    out = [p if p.is_file() else None for p in paths]
    return out, sum(p is None for p in out), done


def _run_engine(take: Take, out: Path) -> None:
    """Render one espeak-ng or flite take into `out` (left absent on failure)."""
    if take.engine == "espeak-ng":
        speed = round(175 / take.stretch)
        cmd = ["espeak-ng", "-v", take.voice, "-s", str(speed), "-p", str(round(10 + 80 * (take.pitch or 0.5))),
               "-w", str(out), take.word]
    else:
        f0 = 80 + 140 * (take.pitch if take.pitch is not None else 0.3)
        cmd = ["flite", "-voice", take.voice, "--setf", f"duration_stretch={take.stretch}", "--setf",
               f"int_f0_target_mean={f0:.0f}", "-t", take.word, "-o", str(out)]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)


def _run_festival(jobs: Iterable[tuple[Take, Path]]) -> None:
    """Render festival takes, one festival process for each voice."""
    by_voice: dict[str, list[tuple[Take, Path]]] = {}
    for take, out in jobs:
        by_voice.setdefault(take.voice, []).append((take, out))
    for voice, group in by_voice.items():
        lines = [f"(voice_{voice})"]
        for take, out in group:
            word = re.sub(r"[^A-Za-z0-9' ]", " ", take.word)
            lines.append(f"(Parameter.set 'Duration_Stretch {take.stretch})")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{word}")) "{out}" \'riff)')
        script = out.parent / f"festival-{voice}.scm"
        script.write_text("\n".join(lines) + "\n")
        subprocess.run(["festival", "-b", str(script)], capture_output=True, timeout=600, check=False)


def _finish(take: Take, raw: Path, dest: Path) -> bool:
    """Raw engine output → speed-perturbed, trimmed, normalised 16 kHz take at `dest`; False if unusable."""
    try:
        y, sr = sf.read(raw, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError):
        return False
    y = y.mean(axis=1)
    if not len(y) or not np.isfinite(y).all() or np.abs(y).max() < 1e-4:
        return False
    y = soxr.resample(y, sr * take.rate, SAMPLE_RATE).astype(np.float32)
    y = trim(y, SAMPLE_RATE, take.margin)
    peak = float(np.abs(y).max())
    if peak < 1e-4:
        return False
    y = 0.5 * y / peak
    tmp = dest.with_suffix(".tmp.wav")
    sf.write(tmp, y, SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp, dest)
    return True


def trim(y: np.ndarray, sr: int, margin: float, floor_db: float = -40.0) -> np.ndarray:
    """`y` cut to the span whose 10 ms frames reach `floor_db` below the loudest frame, plus `margin` seconds
    each side."""
    hop = max(1, sr // 100)
    n = len(y) // hop
    if n < 2:
        return y
    energy = (y[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (floor_db / 10))
    pad = int(margin * sr)
    return y[max(0, loud[0] * hop - pad): min(len(y), (loud[-1] + 1) * hop + pad)]
