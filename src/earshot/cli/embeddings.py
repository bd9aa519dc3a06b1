"""`earshot embed` (a data set → per-window embeddings in one HDF5 file) and `earshot predict --model M FILE.h5`
(embedding files scored row by row by a bundle's head)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from earshot.cli.app import Endpoint, app, err
from earshot.errors import EarshotError


def use_endpoint(endpoint_url: str | None) -> None:
    """Make `--endpoint-url` the endpoint of every s3:// access of this command, bundles included."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url


@app.command(rich_help_panel="Train")
def embed(
    data: Annotated[str, typer.Argument(help="Folder per class, CSV (labels: ';'-separated), ESC-50/UrbanSound8K "
                                             "layout..., or an s3:// prefix holding one.")],
    out: Annotated[str, typer.Option("--out", "-o", help="HDF5 file (or s3:// URL) to write.")],
    backbone: Annotated[str, typer.Option(help="Registry model or bundle that embeds each window.")] = "mn04-as",
    window: Annotated[float, typer.Option(help="Window, seconds.")] = 1.0,
    hop: Annotated[float | None, typer.Option(help="Hop between windows, seconds (default: the window).")] = None,
    dtype: Annotated[str, typer.Option(help="float16 or float32.")] = "float16",
    filter_: Annotated[list[str] | None, typer.Option("--filter", help="COL=VALUE on manifest columns.")] = None,
    label_regex: Annotated[str | None, typer.Option(help="Label = first group of this regex on file names.")] = None,
    group_regex: Annotated[str | None, typer.Option(help="Group (speaker, recording) of each file.")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse and keep per-file embeddings under "
                                                                   "$EARSHOT_HOME/embeddings.")] = True,
    endpoint_url: Endpoint = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Per-window embeddings of every clip: x (N, T, D), y (N, C) multi-hot, video_id_list, mask; unreadable
    files are skipped and listed. Prints a JSON summary."""
    from earshot.training.embed import embed as run_embed

    use_endpoint(endpoint_url)
    bar = _Bar(quiet)
    try:
        with bar:
            summary = run_embed(data, out, backbone=backbone, window=window, hop=hop, dtype=dtype,
                                filters=tuple(filter_ or ()), label_regex=label_regex, group_regex=group_regex,
                                cache=cache, endpoint_url=endpoint_url, progress=bar.update, quiet=True)
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    for path in summary["bad_files"]:
        err(f"skipped {path}")
    typer.echo(json.dumps(summary, indent=2))


class _Bar:
    """A rich progress bar on stderr while embedding, shown on a terminal only."""

    def __init__(self, quiet: bool) -> None:
        self.bar, self.task = None, None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)

    def __enter__(self) -> _Bar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task("embedding", total=total)
        self.bar.update(self.task, completed=done)


def predict_packed(paths: list[str], *, model: str, top_k: int, threshold: float | None, fmt: str,
                   output: Path | None, endpoint_url: str | None) -> int:
    """Score embedding files with a bundle's head: one Prediction per row (title = its clip id). Returns the
    exit code: 0, 1 when a file failed (an error record in its place), 2 when the model is unusable."""
    from earshot.cli.output import PredictionWriter
    from earshot.head import HeadScorer
    from earshot.packed import is_packed_path, open_packed
    from earshot.prediction import Prediction

    use_endpoint(endpoint_url)
    try:
        scorer = HeadScorer.load(model, endpoint_url)
    except EarshotError as e:
        err(str(e))
        return 2
    mixed = [p for p in paths if not is_packed_path(p)]
    if mixed:
        err(f"embedding files (.h5, .npz) and audio cannot be predicted together: {mixed[0]}")
        return 2
    out = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    writer = PredictionWriter(fmt, out, single=False)
    failed = 0
    try:
        for path in paths:
            try:
                with open_packed(path, endpoint_url) as reader:
                    for p in scorer.predictions(reader, top_k=top_k, threshold=threshold):
                        writer.write(p)
            except EarshotError as e:
                writer.write(Prediction.failure(path, e, scorer.name))
                failed += 1
        writer.close()
    finally:
        if output:
            out.close()
    if failed:
        err(f"{failed} of {len(paths)} embedding files failed")
    return 1 if failed else 0
