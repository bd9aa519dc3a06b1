"""AudioSet label list (display names and ontology ids) shipped as package data."""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources


@cache
def audioset() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(display names, ontology ids) of the 527 AudioSet classes in model output order."""
    text = resources.files("earshot.resources").joinpath("audioset_labels.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return tuple(r["display_name"] for r in rows), tuple(r["mid"] for r in rows)
