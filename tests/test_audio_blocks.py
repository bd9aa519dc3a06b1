"""earshot.audio read in blocks, as long files and streams are: the blocks against a whole decode, overlaps,
short tails, pipes and an early close."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audiofiles import SR, reference
from conftest import DATA

from earshot import audio


@pytest.fixture(scope="session")
def long_wav(tmp_path_factory) -> Path:
    """About 3 minutes of real recordings (36 ESC-50 clips back to back), stereo to exercise the mixdown."""
    clips = sorted((DATA / "esc50" / "audio").glob("*.wav"))[:36]
    y = np.concatenate([sf.read(c, dtype="int16")[0] for c in clips])
    stereo = np.stack([y, np.roll(y, 1234)], axis=1)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, stereo, 16000, subtype="PCM_16")
    return path


def test_blocks_concatenate_to_full_decode(long_wav):
    full = audio.decode(long_wav, SR)
    assert len(full) == 36 * 5 * SR
    reader = audio.blocks(long_wav, SR, block_seconds=10.0)
    assert reader.info.channels == 2 and reader.block_size == 10 * SR and reader.hop_size == 10 * SR
    parts = list(reader)
    assert len(parts) == 18 and all(len(p) == 10 * SR for p in parts)
    joined = np.concatenate(parts)
    assert abs(len(joined) - len(full)) <= 2
    m = min(len(joined), len(full))
    np.testing.assert_allclose(joined[:m], full[:m], atol=1e-4)


def test_blocks_with_overlap_and_short_tail(long_wav):
    full = audio.decode(long_wav, SR)
    size, hop = 7 * SR, 4 * SR
    parts = list(audio.blocks(long_wav, SR, block_seconds=7.0, overlap_seconds=3.0))
    for k, p in enumerate(parts):
        want = full[k * hop : k * hop + size]
        m = min(len(p), len(want))
        assert abs(len(p) - len(want)) <= 2
        np.testing.assert_allclose(p[:m], want[:m], atol=1e-4)
    assert len(parts[-1]) < size  # 180 s = 44 hops + 4 s: a short tail, nothing past the end
    assert (len(parts) - 1) * hop + len(parts[-1]) == pytest.approx(len(full), abs=2)


def test_blocks_native_rate_is_exact(long_wav):
    full = audio.decode(long_wav)
    np.testing.assert_array_equal(np.concatenate(list(audio.blocks(long_wav, None, 30.0))), full)


def test_blocks_long_mp3(long_wav, tmp_path):
    """libsndfile's MP3 decoder glitches at some read boundaries; streamed MP3 must still match decode()."""
    y = sf.read(long_wav, dtype="float32")[0][:, 0]
    path = tmp_path / "long.mp3"
    sf.write(path, y, 16000, format="MP3", subtype="MPEG_LAYER_III")
    full = audio.decode(path, SR)
    np.testing.assert_array_equal(full, reference(path))
    joined = np.concatenate(list(audio.blocks(path, SR, 10.0)))
    assert abs(len(joined) - len(full)) <= 2
    m = min(len(joined), len(full))
    np.testing.assert_allclose(joined[:m], full[:m], atol=1e-4)


def test_blocks_short_input_and_pyav(dog, media):
    (only,) = list(audio.blocks(dog, SR, 60.0))
    np.testing.assert_allclose(only, audio.decode(dog, SR), atol=1e-4)
    parts = list(audio.blocks(media["m4a"], SR, 1.0))
    full = audio.decode(media["m4a"], SR)
    np.testing.assert_allclose(np.concatenate(parts)[: len(full)], full[: sum(map(len, parts))], atol=1e-4)


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus", "mp3", "m4a"])
@pytest.mark.parametrize("rate", [None, 32000, 22050])
def test_an_input_within_one_block_reads_as_if_streamed(dog, media, fmt, rate):
    """A clip that fits in one block is read and resampled in one go: the very samples that streaming it gives."""
    path = dog if fmt == "wav" else media[fmt]
    (whole,) = list(audio.blocks(path, rate, 60.0))
    streamed = np.concatenate(list(audio.blocks(path, rate, 0.3)))
    assert whole.dtype == np.float32 and whole.flags.c_contiguous
    np.testing.assert_array_equal(whole, streamed)


def test_blocks_from_bytes_and_pipe(dog):
    want = audio.decode(dog, SR)
    got = np.concatenate(list(audio.blocks(dog.read_bytes(), SR, 1.0, name="upload.wav")))
    np.testing.assert_allclose(got[: len(want)], want[: len(got)], atol=1e-4)
    proc = subprocess.Popen(["cat", str(dog)], stdout=subprocess.PIPE)
    try:
        got = np.concatenate(list(audio.blocks(proc.stdout, SR, 2.0)))
    finally:
        proc.stdout.close()
        proc.wait()
    np.testing.assert_allclose(got[: len(want)], want[: len(got)], atol=1e-4)


def test_blocks_close_early(long_wav):
    with audio.blocks(long_wav, SR, 1.0) as reader:
        first = next(reader)
    assert len(first) == SR
    with pytest.raises(StopIteration):
        next(reader)
