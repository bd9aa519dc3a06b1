"""JSON-lines logging for the pipeline: one object per record (ts, level, logger, msg and any `extra=` fields).

The pipeline's own records (processor, runner, discovery, notifications) go to the logger named `LOGGER`, as
`earshot watch` has always written them, whichever driver runs the pipeline.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

LOGGER = "earshot.watch"

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                d[k] = v
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, ensure_ascii=False, default=str)


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send earshot logs as JSON lines to `stream` (stderr)."""
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger("earshot")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False
