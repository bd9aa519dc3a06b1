"""Predictions written as a JSON object or array, JSON lines or CSV rows, and the progress bar beside them."""

from __future__ import annotations

import csv
import json
import sys

from earshot.prediction import Prediction


class PredictionWriter:
    """Writes predictions as json (object or array), jsonl or csv to a stream; csv gains a `link` column with
    `links`."""

    CSV_FIELDS = ["title", "rank", "label", "label_id", "probability", "duration", "model", "error"]

    def __init__(self, fmt: str, out, single: bool, links: bool = False) -> None:
        self.fmt, self.out, self.single, self.n = fmt, out, single, 0
        if fmt == "csv":
            self.csv = csv.DictWriter(out, fieldnames=self.CSV_FIELDS + (["link"] if links else []))
            self.csv.writeheader()

    def write(self, p: Prediction) -> None:
        d = p.to_dict()
        if self.fmt == "jsonl":
            self.out.write(json.dumps(d, ensure_ascii=False) + "\n")
        elif self.fmt == "json":
            text = json.dumps(d, indent=2, ensure_ascii=False)
            if not self.single:
                text = ("[\n" if self.n == 0 else ",\n") + text
            self.out.write(text)
        else:
            base = {"title": p.title, "duration": p.duration, "model": p.model}
            if p.error:
                self.csv.writerow({**base, "error": p.error.get("message")})
            for i, (lab, prob, lid) in enumerate(zip(p.labels, p.probabilities, p.labels_info)):
                row = {**base, "rank": i + 1, "label": lab, "label_id": lid, "probability": prob}
                if p.links is not None:
                    row["link"] = p.links[i]
                self.csv.writerow(row)
        self.n += 1
        self.out.flush()

    def close(self) -> None:
        if self.fmt == "json":
            if not self.single:
                self.out.write("\n]\n" if self.n else "[]\n")
            elif self.n:
                self.out.write("\n")


class progress:  # noqa: N801 - used as a context manager, named for what it shows
    """A rich progress bar on stderr, shown for more than a few inputs on a terminal."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar = None
        if not quiet and total > 3 and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("classifying", total=total)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return (lambda: self.bar.advance(self.task)) if self.bar else (lambda: None)

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()
