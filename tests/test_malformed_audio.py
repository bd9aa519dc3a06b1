"""A corpus of malformed inputs: each one raises a typed error that names the source and the reason."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from audiofiles import SR, png_bytes, wav_header
from conftest import esc50_clip

from earshot import audio
from earshot.errors import AudioError

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
