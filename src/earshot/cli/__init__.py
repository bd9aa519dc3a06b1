"""`earshot` command line: a thin shell over the Python API (no ML logic here), one module per area.

`app` (the console entry point) lives in `app`; importing this package registers every command: `predict`,
`models`, `training` (train, evaluate), `pipeline` (watch, batch), `embeddings` (embed), `serving` (serve, stream),
`search` (index, search).
"""

from __future__ import annotations

import importlib
import os

from earshot.cli.app import app

# Importing a command module registers its commands; `earshot --help` lists them in this order.
for _area in ("predict", "training", "embeddings", "serving", "pipeline", "search", "models"):
    importlib.import_module(f"earshot.cli.{_area}")

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
