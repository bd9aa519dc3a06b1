"""Typed errors: every failure names the input it concerns and a machine-readable reason."""

from __future__ import annotations


class EarshotError(Exception):
    """Base class of every error earshot raises on purpose."""

    def __init__(self, message: str, *, source: str | None = None, reason: str = "error") -> None:
        self.source = source
        self.reason = reason
        self.message = message
        super().__init__(f"{source}: {message}" if source else message)

    def to_dict(self) -> dict:
        """The `error` object of the Prediction JSON contract."""
        return {"type": type(self).__name__, "reason": self.reason, "message": str(self)}


class AudioError(EarshotError):
    """An input could not be decoded into usable audio.

    `reason` is one of: not_found, empty, truncated, unsupported, no_channels, non_finite, no_samples,
    too_long, needs_media_extra, read_error.
    """


class ModelError(EarshotError):
    """A model or bundle could not be found, downloaded, verified or loaded."""


class DataError(EarshotError):
    """A training data set or manifest is unusable."""


class StorageError(EarshotError):
    """An object store or folder could not be listed, read or written."""


class StreamError(EarshotError):
    """A live stream that broke its protocol or its bounds: `reason` is bad_message, frame_too_large, idle,
    slow_consumer or overloaded."""


class LabelError(EarshotError):
    """A class or label name that neither the ontology nor the model knows (`reason` unknown_label), or one that
    names no label of the model (`reason` no_label). `suggestions` holds close matches."""

    def __init__(self, message: str, *, suggestions: list[str] | None = None, reason: str = "unknown_label",
                 source: str | None = None) -> None:
        self.suggestions = list(suggestions or [])
        if self.suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        super().__init__(message, source=source, reason=reason)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "suggestions": self.suggestions}
