"""earshot.audio on real recordings: rates, channels, formats, streaming, and a corpus of malformed inputs."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import DATA, esc50_clip

from earshot import audio
from earshot.errors import AudioError

FSDD = DATA / "fsdd" / "recordings"
SR = 32000


# ---------------------------------------------------------------------------------------------- helpers


def reference(path: Path | str, rate: int | None = SR) -> np.ndarray:
    """The pipeline the pretrained references were computed with: sf float32 -> channel mean -> soxr."""
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    return y if rate is None or rate == sr else soxr.resample(y, sr, rate)


def aligned_corr(a: np.ndarray, b: np.ndarray, max_lag: int = 4096) -> float:
    """Pearson correlation of `a` and `b` at the lag (|lag| <= max_lag) that aligns them best."""
    n = 1 << (len(a) + len(b)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    lag = int(lags[np.argmax(np.r_[xc[: max_lag + 1], xc[-max_lag:]])])
    a, b = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
    m = min(len(a), len(b))
    return float(np.corrcoef(a[:m], b[:m])[0, 1])


def av_encode(y: np.ndarray, sr: int, path: Path, fmt: str, codec: str, rate: int | None = None) -> Path:
    """Encode mono float32 `y` with PyAV (the test's own encoder, independent of earshot)."""
    rate = rate or sr
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate)
        st.layout = "mono"
        frame = av.AudioFrame.from_ndarray(y[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sr
        rs = av.AudioResampler(format=st.codec_context.format, layout="mono", rate=rate)
        for f in rs.resample(frame) + rs.resample(None):
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return path


def wav_header(channels=1, rate=16000, bits=16, fmt_code=1, data_size=0, riff_size=None) -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_code, channels, rate, rate * align, align, bits)
    riff = (36 + data_size) & 0xFFFFFFFF if riff_size is None else riff_size
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )


def png_bytes() -> bytes:
    """A valid 2x2 RGB PNG, built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def dog() -> Path:
    return esc50_clip("dog")


@pytest.fixture(scope="session")
def dog_y(dog) -> np.ndarray:
    return sf.read(dog, dtype="float32")[0]


@pytest.fixture(scope="session")
def media(tmp_path_factory, dog, dog_y) -> dict[str, Path]:
    """The dog clip re-encoded into every format we claim to read, written at test time."""
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


# ---------------------------------------------------------------------------------------------- decoding


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


# ---------------------------------------------------------------------------------------------- streaming


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


def test_audio_module_does_not_import_torch():
    code = "import sys, earshot.audio; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_blocks_close_early(long_wav):
    with audio.blocks(long_wav, SR, 1.0) as reader:
        first = next(reader)
    assert len(first) == SR
    with pytest.raises(StopIteration):
        next(reader)


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


# ------------------------------------------------------------------------------------------- malformed corpus

Case = Callable[[Path, np.ndarray, dict], tuple[object, dict]]


def _file(name: str, data: bytes) -> Callable:
    def make(tmp: Path, y, media):
        p = tmp / name
        p.write_bytes(data() if callable(data) else data)
        return p, {}

    return make


def _float_wav(tmp: Path, name: str, y: np.ndarray, channels: int = 1) -> Path:
    p = tmp / name
    sf.write(p, y if channels == 1 else np.stack([y] * channels, 1), 16000, subtype="FLOAT")
    return p


def _with(value: float, at: int, channels: int = 1) -> Callable:
    def make(tmp, y, media):
        y = y.copy()
        y[at] = value
        return _float_wav(tmp, f"bad_{value}_{channels}.wav", y, channels), {}

    return make


def _cut(ext: str, fraction: float) -> Callable:
    def make(tmp, y, media):
        data = media[ext].read_bytes()
        p = tmp / f"cut.{ext}"
        p.write_bytes(data[: int(len(data) * fraction)])
        return p, {}

    return make


def _clip_bytes() -> bytes:
    return esc50_clip("dog").read_bytes()


def _video_only(tmp, y, media):
    p = tmp / "silent_film.mp4"
    with av.open(str(p), "w") as out:
        st = out.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            img = np.full((32, 32, 3), i * 40, np.uint8)
            out.mux(st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(st.encode(None))
    return p, {}


def _zero_length(fmt: str, subtype: str, ext: str) -> Callable:
    def make(tmp, y, media):
        p = tmp / f"zero.{ext}"
        sf.write(p, np.zeros(0, np.float32), 16000, format=fmt, subtype=subtype)
        return p, {}

    return make


def _text_mode(tmp, y, media):
    p = tmp / "textmode.wav"
    p.write_bytes(_clip_bytes())
    return open(p), {"name": "textmode.wav"}  # noqa: SIM115 (the decoder must not close what it did not open)


def _closed() -> io.BytesIO:
    f = io.BytesIO(_clip_bytes())
    f.close()
    return f


def _bytes(data: Callable[[], bytes], **kw) -> Callable:
    return lambda tmp, y, media: (data(), kw)


WAV = _clip_bytes
RNG = np.random.default_rng(1234)
RANDOM = RNG.bytes(8000)

CORPUS: dict[str, tuple[Case, str]] = {
    "empty_file": (_file("empty.wav", b""), "empty"),
    "empty_bytes": (_bytes(lambda: b""), "empty"),
    "header_only_wav": (_file("header_only.wav", wav_header(data_size=0)), "no_samples"),
    "header_only_promising_data": (_file("promise.wav", wav_header(data_size=32000)), "truncated"),
    "truncated_wav": (_file("half.wav", lambda: WAV()[: len(WAV()) // 2]), "truncated"),
    "truncated_wav_bytes": (_bytes(lambda: WAV()[:30000]), "truncated"),
    "truncated_wav_mid_header": (_file("riff.wav", b"RIFF\x24\x00"), "truncated"),
    "bogus_data_size": (
        _file("bogus.wav", lambda: wav_header(data_size=0x7FFFFFF0) + WAV()[44:2044]),
        "truncated",
    ),
    "truncated_flac": (_cut("flac", 0.5), "truncated"),
    "truncated_mp3": (_cut("mp3", 0.6), "truncated"),
    "truncated_m4a": (_cut("m4a", 0.5), "truncated"),
    "truncated_webm": (_cut("webm", 0.5), "truncated"),
    "truncated_aac": (_cut("aac", 0.7), "truncated"),
    "random_bytes_wav": (_file("noise.wav", RANDOM), "unsupported"),
    "random_bytes_input": (_bytes(lambda: RANDOM), "unsupported"),
    "text_named_wav": (_file("notes.wav", b"this is a shopping list, not a recording\n" * 20), "unsupported"),
    "json_named_mp3": (_file("meta.mp3", json.dumps({"label": "dog", "ok": True}).encode()), "unsupported"),
    "png_named_flac": (_file("picture.flac", png_bytes()), "unsupported"),
    "gzipped_wav": (_file("clip.wav.gz", lambda: __import__("gzip").compress(WAV())), "unsupported"),
    "video_without_audio": (_video_only, "unsupported"),
    "bad_format_code": (
        _file("fmt.wav", wav_header(fmt_code=0x1234, data_size=2000) + b"\x01" * 2000),
        "unsupported",
    ),
    "zero_sample_rate": (
        _file("sr0.wav", wav_header(rate=0, data_size=2000) + b"\x01" * 2000),
        "unsupported",
    ),
    "zero_channels": (_file("nochan.wav", wav_header(channels=0) + b"\x01" * 2000), "no_channels"),
    "nan_sample": (_with(float("nan"), 40000), "non_finite"),
    "inf_sample": (_with(float("inf"), 10), "non_finite"),
    "neg_inf_stereo": (_with(float("-inf"), 79999, channels=2), "non_finite"),
    "nan_bytes": (
        lambda tmp, y, m: (_with(float("nan"), 5)(tmp, y, m)[0].read_bytes(), {"name": "upload.wav"}),
        "non_finite",
    ),  # fmt: skip
    "zero_length_aiff": (_zero_length("AIFF", "PCM_16", "aiff"), "no_samples"),
    "zero_length_float_wav": (_zero_length("WAV", "FLOAT", "wav"), "no_samples"),
    "too_long": (lambda tmp, y, m: (esc50_clip("dog"), {"max_seconds": 4.9}), "too_long"),
    "too_long_checked_before_decoding": (
        lambda tmp, y, m: (_with(float("nan"), 79000)(tmp, y, m)[0], {"max_seconds": 1.0}),
        "too_long",
    ),  # fmt: skip
    "directory": (lambda tmp, y, m: (tmp, {}), "read_error"),
    "missing_path": (lambda tmp, y, m: (tmp / "nope.wav", {}), "not_found"),
    "missing_parent": (lambda tmp, y, m: (str(tmp / "no" / "such" / "dir.wav"), {}), "not_found"),
    "text_mode_file_object": (_text_mode, "read_error"),
    "closed_file_object": (lambda tmp, y, m: (_closed(), {"name": "closed.wav"}), "read_error"),
    "url_is_not_a_path": (lambda tmp, y, m: ("https://example.com/dog.wav", {}), "not_found"),
}


@pytest.fixture
def case_dir(tmp_path) -> Path:
    return tmp_path


def _expected_name(source: object, kw: dict) -> str:
    if "name" in kw:
        return kw["name"]
    if isinstance(source, bytes | bytearray):
        return "<bytes>"
    return str(source)


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("case", list(CORPUS))
def test_malformed_input_raises_typed_error(case, case_dir, dog_y, media):
    make, reason = CORPUS[case]
    source, kw = make(case_dir, dog_y, media)
    name = _expected_name(source, kw)
    try:
        for call in ("decode", "blocks"):
            if hasattr(source, "seek") and not getattr(source, "closed", False):
                source.seek(0)
            with pytest.raises(AudioError) as e:  # any other exception type fails the test
                if call == "decode":
                    audio.decode(source, SR, **kw)
                else:
                    for _ in audio.blocks(source, SR, 1.0, **kw):
                        pass
            err = e.value
            assert err.reason == reason, f"{call}: {err}"
            assert name in str(err), f"{call}: {err}"
            assert err.source == name
            assert len(str(err)) > len(name) + 10  # says what is wrong in words, not just the name
            assert err.to_dict()["reason"] == reason
    finally:
        if hasattr(source, "close"):
            source.close()
