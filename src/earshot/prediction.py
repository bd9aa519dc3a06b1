"""Result types of the Prediction JSON contract (a superset of the DEEPaaS audio classifier output)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from earshot.errors import EarshotError


@dataclass
class Segment:
    """Top labels of one analysis window."""

    start: float
    end: float
    labels: list[str]
    probabilities: list[float]


@dataclass
class Event:
    """A label active over a time span, merged from consecutive windows."""

    label: str
    label_id: str | None
    start: float
    end: float
    score: float


@dataclass
class Prediction:
    """What earshot says about one input; `error` is set (and `labels` empty) when it failed.

    `links`, `descriptions` and `parents` are parallel to `labels` and present only when asked for
    (`predict(..., links=True)`): the class's citation or search URL, its ontology description, and the names of
    the classes above it, nearest first; null, null and [] for a label without an ontology id.
    """

    title: str
    labels: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    labels_info: list[str | None] = field(default_factory=list)
    model: str | None = None
    duration: float | None = None
    segments: list[Segment] | None = None
    events: list[Event] | None = None
    error: dict[str, Any] | None = None
    links: list[str | None] | None = None
    descriptions: list[str | None] | None = None
    parents: list[list[str]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for optional in ("segments", "events", "links", "descriptions", "parents"):
            if d[optional] is None:
                del d[optional]
        return d

    @classmethod
    def failure(cls, title: str, exc: BaseException, model: str | None = None) -> Prediction:
        """The contract's failure object: same shape, no labels, a typed error."""
        if isinstance(exc, EarshotError):
            err = exc.to_dict()
        else:
            err = {"type": type(exc).__name__, "reason": "internal", "message": f"{title}: {exc}"}
        return cls(title=title, model=model, error=err)
