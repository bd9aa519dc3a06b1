"""What an input is, from its name or its first bytes: the one sniffing policy of every reader.

Magic bytes → a coarse kind (:func:`sniff`), the kinds that are clearly not audio (:func:`not_audio`), the kinds
only PyAV decodes (:data:`AV_ONLY`), and the file names taken as audio when listing folders (:data:`EXTENSIONS`).
"""

from __future__ import annotations

import codecs
import os

__all__ = ["AV_ONLY", "EXTENSIONS", "NOT_AUDIO", "is_audio_name", "kind_name", "looks_like_text", "not_audio", "sniff"]

# File names taken as audio where a folder or prefix is listed (CLI inputs, training folders, server samples).
# Decoding itself never trusts the name: it sniffs the content.
EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".mp4", ".aiff",
                        ".aif", ".au", ".caf", ".wma", ".mkv", ".mov"})

# Kinds libsndfile cannot read: PyAV (the media extra) decodes them.
AV_ONLY = frozenset({"aac", "mp4", "matroska", "asf", "flv", "amr", "avi"})

# Kinds that are clearly not audio → what they are, in words.
NOT_AUDIO = {
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "gif": "a GIF image",
    "webp": "a WebP image",
    "bmp": "a BMP image",
    "pdf": "a PDF document",
    "zip": "a ZIP archive",
    "gzip": "a gzip archive",
    "text": "a text file",
}
_KIND_NAMES = {"wav": "WAV", "riff": "RIFF", "mp4": "MP4/M4A", "matroska": "Matroska/WebM", "aac": "AAC"}
_MAGICS = (
    (b"RF64", "wav"), (b"BW64", "wav"), (b"fLaC", "flac"), (b"OggS", "ogg"), (b"ID3", "mp3"),
    (b"FORM", "aiff"), (b"caff", "caf"), (b".snd", "au"), (b"\x1a\x45\xdf\xa3", "matroska"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"), (b"FLV", "flv"), (b"#!AMR", "amr"),
    (b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"%PDF", "pdf"),
    (b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"), (b"BM", "bmp"),
)  # fmt: skip


def is_audio_name(name: str | os.PathLike) -> bool:
    """Whether a file or object name has one of the audio `EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(str(name))[1].lower() in EXTENSIONS


def sniff(head: bytes) -> str | None:
    """A coarse guess of what the bytes are, from their magic numbers: ``wav``, ``riff`` (another RIFF form),
    ``flac``, ``ogg``, ``mp3``, ``aac`` (ADTS), ``aiff``, ``caf``, ``au``, ``mp4``, ``matroska``, ``asf``, ``flv``,
    ``amr``, ``avi``, a kind of :func:`not_audio`, or None when nothing matches."""
    if head[:4] in (b"RIFF", b"RIFX"):  # RIFX: the big-endian RIFF
        form = head[8:12]
        return {b"WAVE": "wav", b"AVI ": "avi", b"WEBP": "webp"}.get(form, "riff")
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "mp4"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0xF6 == 0xF0 else "mp3"
    if looks_like_text(head):
        return "text"
    return None


def not_audio(head: bytes) -> str | None:
    """What the first bytes of an input look like when they are clearly not audio (an image, a PDF, text...),
    else None: lets every reader refuse such input with the same words before trying a decoder."""
    return NOT_AUDIO.get(sniff(head) or "")


def kind_name(kind: str) -> str:
    """How a kind of :func:`sniff` is named in messages ("WAV", "MP4/M4A", "MP3", ...)."""
    return _KIND_NAMES.get(kind, kind.upper())


def looks_like_text(head: bytes) -> bool:
    """Whether the bytes read as UTF-8 text (at least 95 % printable, no NUL; a cut last character is fine)."""
    if not head or b"\x00" in head:
        return False
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    printable = sum(c.isprintable() or c in "\t\n\r\f\v" for c in text)
    return printable >= 0.95 * max(1, len(text))
