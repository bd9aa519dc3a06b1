"""`earshot predict`: classify audio and print Prediction JSON, JSON lines or CSV."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from earshot.cli.app import Classes, Endpoint, Exclude, Model, app, err
from earshot.cli.inputs import expand_inputs
from earshot.cli.output import PredictionWriter, progress
from earshot.errors import EarshotError
from earshot.prediction import Prediction


@app.command(rich_help_panel="Classify")
def predict(
    paths: Annotated[list[str], typer.Argument(help="Files, folders, globs, s3:// prefixes, or - for stdin.")],
    model: Model = "mn04-as",
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    timeline: Annotated[bool, typer.Option(help="Add per-window segments and merged events.")] = False,
    window: Annotated[float, typer.Option(help="Timeline window, seconds.")] = 1.0,
    hop: Annotated[float | None, typer.Option(help="Timeline hop, seconds (default window/2).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Only labels scoring at least this.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json, jsonl or csv.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    endpoint_url: Endpoint = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    links: Annotated[bool, typer.Option(
        "--links", help="Add each label's link (citation or search URL), description and parent classes.")] = False,
    classes: Classes = None,
    exclude: Exclude = None,
) -> None:
    """Classify audio. Exit 1 when some inputs failed (their error objects are printed with the rest), 2 when the
    model or a --classes / --exclude value is unknown."""
    if fmt not in ("json", "jsonl", "csv"):
        raise typer.BadParameter("--format must be json, jsonl or csv")
    from earshot.packed import is_packed_path

    if any(is_packed_path(p) for p in paths):  # embedding files: scored row by row by the bundle's head
        from earshot.cli.embeddings import predict_packed

        raise typer.Exit(predict_packed(paths, model=model, top_k=top_k, threshold=threshold, fmt=fmt,
                                        output=output, endpoint_url=endpoint_url))
    import earshot

    inputs = list(expand_inputs(paths, endpoint_url))
    try:  # several inputs run one per thread, each call on one core: the session needs no threads of its own
        clf = earshot.load(model, threads=1 if len(inputs) > 1 else None)
        clf.class_mask(classes, exclude)
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    out = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    writer = PredictionWriter(fmt, out, single=len(inputs) == 1 and len(paths) == 1 and not Path(paths[0]).is_dir(),
                              links=links)
    failed = 0
    sources = [s for s in inputs if not isinstance(s, EarshotError)]
    predicted = clf.predict_many(sources, top_k=top_k, timeline=timeline, window=window, hop=hop, threshold=threshold,
                                 links=links, classes=classes, exclude=exclude)
    results = (Prediction.failure(s.source or "", s, clf.name) if isinstance(s, EarshotError) else next(predicted)
               for s in inputs)
    try:
        with progress(len(inputs), quiet) as advance:
            for p in results:
                writer.write(p)
                failed += p.error is not None
                advance()
        writer.close()
    finally:
        if output:
            out.close()
    if failed:
        err(f"{failed} of {len(inputs)} inputs failed")
        raise typer.Exit(1)
