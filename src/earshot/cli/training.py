"""`earshot train` and `earshot evaluate`: data sets to bundles, bundles to honest metrics (needs earshot[train]
to train)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from earshot.cli.app import app, err
from earshot.errors import EarshotError


@app.command(rich_help_panel="Train")
def train(
    data: Annotated[str, typer.Argument(help="Folder per class, CSV, ESC-50/UrbanSound8K/Speech Commands layout...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    model: Annotated[str, typer.Option(help="auto, transfer or cnn.")] = "auto",
    backbone: Annotated[str, typer.Option(help="Pretrained backbone for transfer.")] = "mn04-as",
    val_fold: Annotated[str | None, typer.Option(help="Official fold used for validation.")] = None,
    val_split: Annotated[float | None, typer.Option(help="Group-aware stratified validation fraction.")] = None,
    cv: Annotated[int | None, typer.Option(help="K-fold cross-validation, reports mean ± std.")] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter", help="COL=VALUE on manifest columns.")] = None,
    label_regex: Annotated[str | None, typer.Option(help="Label = first group of this regex on file names.")] = None,
    group_regex: Annotated[str | None, typer.Option(help="Group (speaker, recording) kept on one side.")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    finetune: Annotated[bool, typer.Option(help="Unfreeze the backbone at a low learning rate.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a classifier and export it as a bundle (needs the `train` extra: pip install "earshot\\[train]")."""
    from earshot.training import train as run_train

    try:
        path = run_train(data, out, model=model, backbone=backbone, val_fold=val_fold, val_split=val_split, cv=cv,
                         filters=tuple(filter_ or ()), label_regex=label_regex, group_regex=group_regex,
                         epochs=epochs, seed=seed, finetune=finetune, quiet=quiet)
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    typer.echo(str(path))


@app.command(rich_help_panel="Train")
def evaluate(
    bundle: Annotated[str, typer.Argument(help="Bundle directory or registry name.")],
    data: Annotated[str, typer.Argument()],
    val_fold: Annotated[str | None, typer.Option(help="Evaluate only this fold.")] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter")] = None,
    label_regex: Annotated[str | None, typer.Option()] = None,
    group_regex: Annotated[str | None, typer.Option()] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json or text.")] = "json",
) -> None:
    """Metrics of a bundle on labelled data it never saw (accuracy, macro-F1, per class, confusion matrix)."""
    from earshot.training import evaluate as run_eval

    try:
        metrics = run_eval(bundle, data, val_fold=val_fold, filters=tuple(filter_ or ()), label_regex=label_regex,
                           group_regex=group_regex)
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    if fmt == "json":
        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
    else:
        for k in ("n", "accuracy", "macro_f1", "mAP"):
            if k in metrics:
                typer.echo(f"{k:>10}: {metrics[k]}")
