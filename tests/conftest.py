"""Shared test fixtures: real data from ../shared, one model cache per checkout, the dog clip in every format, and
Debian's chromium with a served site for the browser tests."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"
REFERENCE = SHARED / "reference"

# Tests never reach a model hub: weights come from the shared mirror, bundles are built once per checkout.
os.environ.setdefault("EARSHOT_MODEL_MIRROR", str(WEIGHTS))
os.environ.setdefault("EARSHOT_HOME", str(ROOT / ".cache" / "earshot"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def esc50_clip(category: str, index: int = 0) -> Path:
    """The index-th ESC-50 clip (sorted by file name) of a category, from the shared subset."""
    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as f:
        rows = sorted(r["filename"] for r in csv.DictReader(f) if r["category"] == category)
    return DATA / "esc50" / "audio" / rows[index]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; set EARSHOT_SHARED")
    return DATA


@pytest.fixture(scope="session")
def tagger():
    """The default pretrained tagger (mn04-as), bundle built once from the mirrored weights."""
    import earshot

    return earshot.load("mn04-as")


def fsdd_take(speaker: str, digit: int, index: int) -> Path:
    """One FSDD recording: the `index`-th take of `digit` by `speaker` (8 kHz WAV)."""
    return DATA / "fsdd" / "recordings" / f"{digit}_{speaker}_{index}.wav"


def fsdd_take_at(speaker: str, digit: int, index: int, samples: int, at: int) -> np.ndarray:
    """An FSDD take decoded at 16 kHz, starting `at` samples into `samples` of silence."""
    from earshot import audio

    y = audio.decode(fsdd_take(speaker, digit, index), 16000)
    out = np.zeros(samples, dtype=np.float32)
    out[at : at + len(y)] = y
    return out


def fsdd_digits_csv(tmp_path: Path, takes: int, digits: tuple[int, ...]) -> str:
    """A CSV of FSDD takes (the first `takes` of each of `digits`) with fold and group = speaker: george, jackson
    and theo to train, nicolas to validate, lucas to hold out."""
    path = tmp_path / "digits.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold", "group"])
        for speaker in ("george", "jackson", "theo", "nicolas", "lucas"):
            for digit in digits:
                for index in range(takes):
                    w.writerow([fsdd_take(speaker, digit, index), digit, speaker, speaker])
    return str(path)


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory):
    """A spotter of four digits: 4 speakers (30 takes of each) train, theo validates, plus a _silence_ class.
    About 90 s on 2 cores; 0.99 on theo. (With three training speakers and 15 epochs the CNN reached only 0.43.)"""
    from earshot.training import train

    tmp = tmp_path_factory.mktemp("digits")
    manifest = tmp / "digits.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold", "group"])
        for speaker in ("george", "jackson", "lucas", "nicolas", "theo"):
            for digit in (1, 3, 7, 9):
                for index in range(30):
                    w.writerow([fsdd_take(speaker, digit, index), digit, speaker, speaker])
    t0 = time.time()
    bundle = train(manifest, tmp / "bundle", model="cnn", val_fold="theo", epochs=12, background=True, quiet=True)
    print(f"digits_bundle trained in {time.time() - t0:.0f} s")
    return bundle


def need_engine(engine: str) -> None:
    """Skip without the speech synthesiser `engine`; under CI (which installs them all) fail instead."""
    from earshot.training import synthesis

    if engine in synthesis.available_engines():
        return
    if os.environ.get("CI"):
        pytest.fail(f"speech synthesiser {engine} is not installed (.ci/run installs it)")
    pytest.skip(f"speech synthesiser {engine} is not installed")


@pytest.fixture(scope="session")
def dog() -> Path:
    return esc50_clip("dog")


@pytest.fixture(scope="session")
def dog_y(dog) -> np.ndarray:
    return sf.read(dog, dtype="float32")[0]


@pytest.fixture(scope="session")
def media(tmp_path_factory, dog, dog_y) -> dict[str, Path]:
    """The dog clip re-encoded into every format we claim to read, written at test time."""
    from audiofiles import av_encode  # PyAV, the media extra: only the tests that read these formats need it

    d = tmp_path_factory.mktemp("media")
    out = {}
    for ext, fmt, subtype in [
        ("flac", "FLAC", "PCM_16"),
        ("ogg", "OGG", "VORBIS"),
        ("opus", "OGG", "OPUS"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ]:
        out[ext] = d / f"dog.{ext}"
        sf.write(out[ext], dog_y, 16000, format=fmt, subtype=subtype)
    out["m4a"] = av_encode(dog_y, 16000, d / "dog.m4a", "ipod", "aac")
    out["aac"] = av_encode(dog_y, 16000, d / "dog.aac", "adts", "aac")
    out["webm"] = av_encode(dog_y, 16000, d / "dog.webm", "webm", "libopus", rate=48000)
    out["mp4"] = av_encode(dog_y, 16000, d / "dog.mp4", "mp4", "aac")
    return out


@pytest.fixture(scope="module")
def playwright():
    """Playwright's driver. Missing (or no chromium), it skips the browser tests, except under CI (`CI` set) where
    it fails them."""
    from chromium import missing_browser

    missing = missing_browser()
    if missing and os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {missing}", pytrace=False)
    if missing:
        pytest.skip(missing)
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    """Chromium under Playwright."""
    from chromium import ARGS, CHROMIUM

    b = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A server (in a thread) with the default model and two sample clips; yields its base URL."""
    from apiserver import running_server

    root = tmp_path_factory.mktemp("web")
    samples = root / "samples"
    samples.mkdir()
    for cat in ("rooster", "church_bells"):
        shutil.copy(esc50_clip(cat), samples / f"{cat}.wav")
    with running_server(root, samples_dir=samples) as base:
        yield base


@pytest.fixture
def page(browser, site):
    """The site's page, loaded with its models listed; fails the test if the page reached anything off the site."""
    from chromium import open_page

    requests_out: list[str] = []
    ctx, pg = open_page(browser, site, timeout_ms=20_000, requests=requests_out)
    yield pg
    assert all(u.startswith((site, "data:", "blob:")) for u in requests_out), "page reached off-site"
    ctx.close()


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A fresh moto S3 server with bucket `earshot` (credentials and endpoint exported to the environment)."""
    from s3server import S3_ENV, MotoServer

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    srv = MotoServer(log=tmp_path / "moto.log").start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", srv.url)
    srv.client().create_bucket(Bucket="earshot")
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def esc10():
    """ESC-50's ESC-10 subset as a manifest."""
    from shareddata import ESC50

    from earshot.training import load_manifest

    return load_manifest(ESC50, filters=["esc10=True"])


@pytest.fixture(scope="module")
def us8k():
    """The UrbanSound8K subset as a manifest (its official folds)."""
    from shareddata import US8K

    from earshot.training import load_manifest

    return load_manifest(US8K)


@pytest.fixture(scope="module")
def fsdd():
    """FSDD as a manifest: the digit from the file name, the speaker as the group."""
    from shareddata import FSDD, FSDD_GROUP, FSDD_LABEL

    from earshot.training import load_manifest

    return load_manifest(FSDD, label_regex=FSDD_LABEL, group_regex=FSDD_GROUP)


@pytest.fixture(scope="session")
def corpus200(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """200 files of `corpus.build_corpus` (real clips, awkward keys, bad files) and their kinds."""
    from corpus import build_corpus

    root = tmp_path_factory.mktemp("corpus200")
    return root, build_corpus(root, 200)
