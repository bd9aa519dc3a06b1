"""`earshot train` and `earshot evaluate`: data sets to bundles, bundles to honest metrics (needs earshot[train]
to train)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from earshot.cli.app import Endpoint, app, err
from earshot.errors import EarshotError


@app.command(rich_help_panel="Train")
def train(
    out: Annotated[str, typer.Option("--out", "-o", help="Bundle directory (or s3:// prefix) to write.")],
    data: Annotated[str | None, typer.Argument(help="Folder per class, CSV, ESC-50/UrbanSound8K/Speech Commands "
                                               "layout... Left out with --words: a keyword model from synthetic "
                                               "voices alone.")] = None,
    model: Annotated[str, typer.Option(help="auto, transfer, cnn, speech (a head on a speech embedding "
                                              "pretrained on many real voices), word (a head on a spoken-word "
                                              "embedding; 50+ recordings a label), whisper (a head on Whisper "
                                              "tiny.en's encoder; 50+ recordings a label), cnn+speech, "
                                              "cnn+speech+word or cnn+speech+word+whisper (averages).")
                     ] = "auto",
    backbone: Annotated[str, typer.Option(help="Pretrained backbone for transfer.")] = "mn04-as",
    val_fold: Annotated[str | None, typer.Option(help="Official fold used for validation.")] = None,
    val_split: Annotated[float | None, typer.Option(help="Group-aware stratified validation fraction.")] = None,
    test_fold: Annotated[str | None, typer.Option(help="Fold held out of training and of choosing epochs and "
                                                 "families, scored once into the card's metrics.test (default: "
                                                 "the layout's test fold, e.g. testing_list.txt).")] = None,
    cv: Annotated[int | None, typer.Option(help="K-fold cross-validation, reports mean ± std.")] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter", help="COL=VALUE on manifest columns.")] = None,
    label_regex: Annotated[str | None, typer.Option(help="Label = first group of this regex on file names.")] = None,
    group_regex: Annotated[str | None, typer.Option(help="Group (speaker, recording) kept on one side.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most training epochs (default: each family's own; the CNN "
                                               "trains 30, or 20 when synthetic takes are added; heads stop "
                                               "early).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    finetune: Annotated[bool, typer.Option(help="Unfreeze the backbone at a low learning rate.")] = False,
    synthesize: Annotated[bool | None, typer.Option("--synthesize/--no-synthesize",
                                                    help="Add synthetic spoken examples of each label's word "
                                                         "(espeak-ng, flite, festival; default: on for Speech "
                                                         "Commands layouts and with --words when one is "
                                                         "installed). auto then trains the CNN, the speech head "
                                                         "and their average, no transfer head.")] = None,
    words: Annotated[str | None, typer.Option(help="Keywords, optionally with what to say: 'yes,no,sheila=shayla'; "
                                              "other labels become _unknown_.")] = None,
    synth_per_label: Annotated[int | None, typer.Option(min=1, help="Synthetic takes of each word (default: 5000 "
                                                        "in all, 100-500 a word).")] = None,
    background: Annotated[bool | None, typer.Option("--background/--no-background",
                                                    help="Add a _silence_ class (default: on for Speech Commands "
                                                         "layouts and with --words).")] = None,
    input_norm: Annotated[str, typer.Option(help="CNN input: none, or utterance (per-window mean and variance "
                                            "normalisation of the log-mel; see the README's keyword section).")]
    = "none",
    pooling: Annotated[str | None, typer.Option(help="Multi-label head: attention (default), mean or max. "
                                                "Embedding files and multi-label data train one.")] = None,
    window: Annotated[float | None, typer.Option(help="Multi-label data: embedding window, seconds (1.0).")] = None,
    hop: Annotated[float | None, typer.Option(help="Multi-label data: embedding hop, seconds (the window).")] = None,
    endpoint_url: Endpoint = None,
    devices: Annotated[int, typer.Option(help="Train with N processes under torchrun (DistributedDataParallel): "
                                         "one GPU each, or CPU processes sharing the cores.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a classifier and export it as a bundle (needs the `train` extra: pip install "earshot\\[train]")."""
    from earshot.training import train as run_train

    if data is None and not words:
        err("give a data set to train on, or --words to train a keyword model from synthetic voices alone")
        raise typer.Exit(2)
    if data is None and devices > 1:
        err("--devices trains on a data set; a keyword model from --words alone trains in one process")
        raise typer.Exit(2)
    if devices > 1:
        from functools import partial

        from earshot.training.distributed import launch

        run_train = partial(launch, devices)

    try:
        path = run_train(data, out, model=model, backbone=backbone, val_fold=val_fold, val_split=val_split,
                         test_fold=test_fold, cv=cv, filters=tuple(filter_ or ()), label_regex=label_regex,
                         group_regex=group_regex, epochs=epochs, seed=seed, finetune=finetune, quiet=quiet,
                         synthesize=synthesize, words=words, background=background, input_norm=input_norm,
                         synth_per_label=synth_per_label,
                         **{k: v for k, v in (("pooling", pooling), ("window", window), ("hop", hop),
                                              ("endpoint_url", endpoint_url)) if v is not None})
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
    endpoint_url: Endpoint = None,
) -> None:
    """Metrics of a bundle on labelled data it never saw (accuracy, macro-F1, per class, confusion matrix; mAP,
    AUC, d' for multi-label bundles and embedding files)."""
    from earshot.cli.embeddings import use_endpoint
    from earshot.pipeline.remote import local_input
    from earshot.training import evaluate as run_eval

    use_endpoint(endpoint_url)
    try:
        with local_input(data, endpoint_url) as local:
            metrics = run_eval(bundle, local, val_fold=val_fold, filters=tuple(filter_ or ()),
                               label_regex=label_regex, group_regex=group_regex)
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    if fmt == "json":
        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
    else:
        for k in ("n", "accuracy", "macro_f1", "mAP", "auc", "d_prime"):
            if k in metrics:
                typer.echo(f"{k:>10}: {metrics[k]}")


@app.command(rich_help_panel="Train")
def adapt(
    bundle: Annotated[str, typer.Argument(help="Bundle directory, registry name or s3:// bundle prefix.")],
    inputs: Annotated[list[str], typer.Argument(help="Unlabelled audio of the new domain: files, folders, globs, "
                                                "s3:// prefixes.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Bundle directory (or s3:// prefix) to write.")],
    strength: Annotated[float, typer.Option(help="Share of the new statistics, in (0, 1]; 1 replaces the "
                                            "training ones.")] = 1.0,
    max_seconds: Annotated[float, typer.Option(help="Audio read at most, in the order given.")] = 3600.0,
    name: Annotated[str | None, typer.Option(help="The adapted model's name (default: the folder's).")] = None,
    force: Annotated[bool, typer.Option(help="Adapt a transfer bundle or the pretrained tagger too (measured to "
                                        "cost accuracy; evaluate the result).")] = False,
    endpoint_url: Endpoint = None,
) -> None:
    """Adapt a bundle to a new voice, microphone or site from unlabelled recordings of it: its normalisation
    statistics are measured again on them (AdaBN), every weight unchanged. Needs onnx (pip install
    "earshot\\[adapt]"). Inputs that cannot be decoded are reported and skipped."""
    from earshot.adaptation import adapt as run_adapt
    from earshot.cli.embeddings import use_endpoint
    from earshot.cli.inputs import expand_inputs

    use_endpoint(endpoint_url)
    try:
        path = run_adapt(bundle, expand_inputs(inputs, endpoint_url), out, strength=strength,
                         max_seconds=max_seconds, name=name, endpoint_url=endpoint_url, force=force,
                         on_error=lambda e: err(f"skipped {e}"))
        summary = json.loads((path / "card.json").read_text())["adaptation"]
        if out.startswith("s3://"):
            import shutil

            shutil.rmtree(path.parent, ignore_errors=True)  # the staging copy, uploaded
    except (EarshotError, ValueError) as e:
        err(str(e))
        raise typer.Exit(2) from e
    err(f"adapted {summary['layers']} layers on {summary['files']} files ({summary['seconds']:.1f} s of audio, "
        f"{summary['model_inputs']} model inputs; {len(summary['skipped'])} skipped)")
    typer.echo(out)
