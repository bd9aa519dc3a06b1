"""Decode any audio input to mono float32 at a requested rate, whole or block by block. No torch here.

Pipeline (the pretrained references were computed with exactly this, keep it so):
soundfile reads float32 -> mean over channels -> ``soxr.resample(y, native_rate, rate)`` (default quality).
Blocks may instead stay at the input's own rate where it is one of `native_rates` (a bundle with a graph for that
rate, which then applies the resampler's response itself: `resampler_power`).
Formats libsndfile cannot read (m4a/aac/webm/mp4/video, ...) go through PyAV, the ``media`` extra.

Every failure is an :class:`~earshot.errors.AudioError` whose ``source`` names the input and whose ``reason``
is one of: not_found, empty, truncated, unsupported, no_channels, non_finite, no_samples, too_long,
needs_media_extra, not_regular (a pipe, socket or device named by path), read_error.

Length limit: ``max_seconds=None`` means the ``EARSHOT_MAX_SECONDS`` environment variable when it is set
(a number of seconds; empty or 0 means no limit), else no limit; pass ``math.inf`` to ignore the variable.
The limit is checked from the header before decoding where the header says how long the input is, and again
while decoding, so a lying or missing header never makes us decode an unbounded input.

Modules: ``formats`` (what an input is, by name or magic bytes), ``source`` (inputs and argument checks),
``streams`` (soundfile and PyAV decoders, failures classified), ``decoding`` (the calls re-exported here), ``pcm``
(raw PCM sample formats, WAV headers), ``pyav`` (the optional PyAV import and decode loop), ``live`` (live
sources: pipes, raw PCM, URLs, files paced at real time, the microphone; imported on its own).
"""

from __future__ import annotations

from earshot.audio.decoding import Blocks, blocks, decode, duration, info, load, resampler_power
from earshot.audio.formats import EXTENSIONS, is_audio_name, not_audio
from earshot.audio.pyav import MEDIA_EXTRA, frame_to_mono
from earshot.audio.source import MAX_SECONDS_ENV, Source
from earshot.audio.streams import AudioInfo

__all__ = ["EXTENSIONS", "MAX_SECONDS_ENV", "MEDIA_EXTRA", "AudioInfo", "Blocks", "Source", "blocks", "decode",
           "duration", "frame_to_mono", "info", "is_audio_name", "load", "not_audio", "resampler_power"]
