"""The PyAV path (the ``earshot[media]`` extra): the one place that imports ``av``, and its decode loop.

PyAV is optional and imported only when an input needs it, never when ``earshot.audio`` is imported.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from typing import Any

import numpy as np
import soxr

from earshot.errors import AudioError, EarshotError

__all__ = ["MEDIA_EXTRA", "available", "decode_frames", "frame_to_mono", "import_av", "require_av"]

MEDIA_EXTRA = "pip install 'earshot[media]'"


@functools.cache
def available() -> bool:
    """Whether the media extra (PyAV) is installed, found without importing it."""
    return importlib.util.find_spec("av") is not None


def import_av() -> Any:
    """The ``av`` module, or None when the media extra is not installed."""
    try:
        import av
    except ImportError:
        return None
    return av


def require_av(source: str, what: str) -> Any:
    """The ``av`` module; AudioError ``needs_media_extra`` naming `what` needs it when it is not installed."""
    av = import_av()
    if av is None:
        raise AudioError(f"{what} needs the media extra (PyAV) to decode: {MEDIA_EXTRA}", source=source,
                         reason="needs_media_extra")
    return av


def frame_to_mono(frame: Any) -> np.ndarray:
    """A PyAV AudioFrame as mono float32 (channels averaged, integer formats scaled to [-1, 1))."""
    a = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        a = a.reshape(-1, channels).T
    half = np.float32(2 ** (8 * a.dtype.itemsize - 1))
    if a.dtype.kind == "u":
        a = (a.astype(np.float32) - half) / half
    elif a.dtype.kind == "i":
        a = a.astype(np.float32) / half
    else:
        a = a.astype(np.float32, copy=False)
    return np.ascontiguousarray(a[0]) if channels == 1 else a.mean(axis=0)


def decode_frames(container: Any, stream: Any, rate: int, source: str) -> Iterator[np.ndarray]:
    """Mono float32 chunks of an audio `stream` of an opened `container`, at `rate`: a frame at another rate (a
    mid-stream change) is resampled to it. A decoder failure part-way raises AudioError ``truncated``; an
    EarshotError raised by the source a file-like container reads (a stream gone idle) passes through as it is."""
    decoded = container.decode(stream)
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except EarshotError:
            raise
        except Exception as e:
            raise AudioError(f"is truncated or damaged: decoding failed part-way ({e})", source=source,
                             reason="truncated") from e
        if not frame.samples:
            continue
        y = frame_to_mono(frame)
        if frame.sample_rate and frame.sample_rate != rate:
            y = soxr.resample(y, frame.sample_rate, rate)
        yield y
