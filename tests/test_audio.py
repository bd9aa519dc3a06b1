"""earshot.audio decoding real recordings: rates, channels, formats, sources and limits."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
from audiofiles import SR, aligned_corr, reference
from conftest import DATA, esc50_clip

from earshot import audio
from earshot.errors import AudioError

FSDD = DATA / "fsdd" / "recordings"


@pytest.mark.parametrize(
    "path",
    [FSDD / "0_george_0.wav", FSDD / "7_jackson_12.wav", esc50_clip("rooster"), esc50_clip("rain", 3)],
    ids=lambda p: p.name,
)
def test_decode_to_32k_has_expected_length_and_matches_reference(path):
    inf = sf.info(path)
    y = audio.decode(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == inf.frames * SR // inf.samplerate  # 8 kHz and 16 kHz: integer ratios
    # bit-for-bit the pipeline the pretrained reference was computed with
    np.testing.assert_array_equal(y, reference(path))


def test_native_rate_is_the_file_as_read(dog, dog_y):
    y, rate = audio.load(dog)
    assert rate == 16000
    np.testing.assert_array_equal(y, dog_y)
    y8, rate8 = audio.load(FSDD / "3_theo_5.wav")
    assert rate8 == 8000 and len(y8) == sf.info(FSDD / "3_theo_5.wav").frames


def test_odd_ratio_and_downsampling(dog):
    y = audio.decode(dog, 22050)
    assert abs(len(y) - 5.0 * 22050) <= 1
    y8 = audio.decode(dog, 8000)
    assert len(y8) == 40000
    np.testing.assert_array_equal(y8, reference(dog, 8000))


def test_stereo_is_averaged(tmp_path, dog_y):
    other = sf.read(esc50_clip("rooster"), dtype="float32")[0]
    stereo = np.stack([dog_y, other], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="PCM_16")
    y = audio.decode(path)
    np.testing.assert_array_equal(y, stereo.mean(axis=1))
    assert not np.allclose(y, dog_y)
    np.testing.assert_array_equal(audio.decode(path, SR), reference(path))
    assert audio.info(path).channels == 2


@pytest.mark.parametrize("ext", ["flac", "ogg", "opus", "mp3"])
def test_soundfile_formats(media, ext, dog):
    path = media[ext]
    y = audio.decode(path, SR)
    np.testing.assert_array_equal(y, reference(path))  # soundfile path, same pipeline
    assert abs(len(y) / SR - 5.0) < 0.05
    want = reference(dog)
    if ext == "flac":
        np.testing.assert_array_equal(y, want)  # lossless
    else:
        assert aligned_corr(y, want) > 0.9


@pytest.mark.parametrize("ext", ["m4a", "aac", "webm", "mp4"])
def test_pyav_formats(media, ext, dog):
    y = audio.decode(media[ext], SR)
    assert y.dtype == np.float32
    assert abs(len(y) / SR - 5.0) < 0.2  # AAC adds up to one frame of priming/padding
    assert aligned_corr(y, reference(dog)) > 0.9
    assert audio.info(media[ext]).backend == "av"


def test_sources_path_str_bytes_fileobjects(dog, tmp_path):
    want = audio.decode(dog, SR)
    data = dog.read_bytes()
    np.testing.assert_array_equal(audio.decode(str(dog), SR), want)
    np.testing.assert_array_equal(audio.decode(data, SR), want)
    np.testing.assert_array_equal(audio.decode(bytearray(data), SR), want)
    np.testing.assert_array_equal(audio.decode(io.BytesIO(data), SR), want)
    with open(dog, "rb") as f:
        np.testing.assert_array_equal(audio.decode(f, SR), want)
    # a file object positioned after a prefix is read from where it stands
    shifted = io.BytesIO(b"JUNKJUNK" + data)
    shifted.read(8)
    np.testing.assert_array_equal(audio.decode(shifted, SR), want)
    # a real pipe (not seekable)
    proc = subprocess.Popen(["cat", str(dog)], stdout=subprocess.PIPE)
    try:
        np.testing.assert_array_equal(audio.decode(proc.stdout, SR), want)
    finally:
        proc.stdout.close()
        proc.wait()


def test_fifo_and_device_paths_fail_at_once(dog, tmp_path):
    """A path to a pipe nobody writes to (or a device) would block or read forever: a typed error at once.
    Pipes are read through a file object (stdin)."""
    import os
    import time

    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "named pipe"), ("/dev/zero", "device")):
        t = time.monotonic()
        with pytest.raises(AudioError) as e:
            audio.decode(path, SR)
        assert e.value.reason == "not_regular" and time.monotonic() - t < 1.0
        assert str(path) in str(e.value) and kind in str(e.value)
    writer = threading.Thread(target=lambda: fifo.write_bytes(dog.read_bytes()))
    writer.start()
    try:
        with open(fifo, "rb") as f:
            y = audio.decode(f, SR)
    finally:
        writer.join(5)
    np.testing.assert_array_equal(y, audio.decode(dog, SR))


def test_a_url_says_how_to_read_it():
    """A URL given as a file path is not fetched; the error says what does read it."""
    with pytest.raises(AudioError) as e:
        audio.decode("https://example.com/dog.wav", 32000)
    assert e.value.reason == "not_found" and "--allow-url" in str(e.value) and "s3://" in str(e.value)
    with pytest.raises(AudioError) as e:
        audio.decode("/no/such/dog.wav", 32000)
    assert "URL" not in str(e.value)  # the hint is for URLs only


def test_info_and_duration(dog, media):
    i = audio.info(dog)
    assert (i.sample_rate, i.channels, i.frames, i.format, i.backend) == (16000, 1, 80000, "WAV", "soundfile")
    assert audio.duration(dog) == 5.0
    assert audio.duration(FSDD / "0_george_0.wav") == sf.info(FSDD / "0_george_0.wav").duration
    assert audio.duration(media["mp3"]) == pytest.approx(5.0, abs=0.01)
    for ext in ("m4a", "webm", "aac"):  # ADTS has no length header: measured by decoding
        assert audio.duration(media[ext]) == pytest.approx(5.0, abs=0.2)


def test_media_extra_missing(media, monkeypatch, dog):
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV is optional: simulate an install without it
    for ext in ("m4a", "webm", "aac"):
        with pytest.raises(AudioError) as e:
            audio.decode(media[ext], SR)
        assert e.value.reason == "needs_media_extra"
        assert "pip install 'earshot[media]'" in str(e.value) and media[ext].name in str(e.value)
    with pytest.raises(AudioError) as e:
        audio.decode(np.random.default_rng(3).bytes(3000), SR)
    assert e.value.reason == "unsupported" and "earshot[media]" in str(e.value)
    # the core formats do not need it
    np.testing.assert_array_equal(audio.decode(dog, SR), reference(dog))
    np.testing.assert_array_equal(audio.decode(media["mp3"], SR), reference(media["mp3"]))


def test_audio_module_does_not_import_torch():
    code = "import sys, earshot.audio; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_argument_errors_are_value_errors(dog):
    with pytest.raises(ValueError):
        audio.decode(dog, 0)
    with pytest.raises(ValueError):
        audio.blocks(dog, SR, 1.0, overlap_seconds=1.0)
    with pytest.raises(ValueError):
        audio.decode(dog, SR, max_seconds=-1)


def test_max_seconds_env_var(dog, monkeypatch):
    monkeypatch.setenv(audio.MAX_SECONDS_ENV, "2")
    with pytest.raises(AudioError) as e:
        audio.decode(dog, SR)
    assert e.value.reason == "too_long" and "EARSHOT_MAX_SECONDS" in str(e.value)
    assert len(audio.decode(dog, SR, max_seconds=math.inf)) == 5 * SR  # explicit override
    assert len(audio.decode(dog, SR, max_seconds=6)) == 5 * SR
    monkeypatch.setenv(audio.MAX_SECONDS_ENV, "0")
    assert len(audio.decode(dog, SR)) == 5 * SR
    monkeypatch.setenv(audio.MAX_SECONDS_ENV, "ten minutes")
    with pytest.raises(ValueError, match="EARSHOT_MAX_SECONDS"):
        audio.decode(dog, SR)
