"""The `earshot` command root: the typer app, the options every command shares, and how commands report."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sound classification: tag, train, serve.")
models_app = typer.Typer(no_args_is_help=True, help="Pretrained models and bundles.")
app.add_typer(models_app, name="models", rich_help_panel="Models")

Model = Annotated[str, typer.Option("--model", "-m", help="Registry name, bundle directory or s3:// bundle.")]
Endpoint = Annotated[str | None, typer.Option("--endpoint-url", envvar="AWS_ENDPOINT_URL",
                                              help="S3-compatible endpoint (MinIO, IBM COS, ...).")]

Classes = Annotated[list[str] | None, typer.Option(
    "--classes", help="Only labels under this AudioSet class, by name or id (its whole subtree), or a label name of "
    "the model; repeatable.")]
Exclude = Annotated[list[str] | None, typer.Option(
    "--exclude", help="No labels under this class (name or id, whole subtree) or of this label name; repeatable.")]


def reflow_help(*apps: typer.Typer) -> None:
    """Give each registered command its docstring as help with the line breaks inside a paragraph made spaces
    (paragraphs kept). The rich help keeps a docstring's single line breaks, which cut sentences at the source's
    width in the command list and on every terminal narrower or wider than that."""
    for a in apps:
        for info in a.registered_commands:
            doc = inspect.getdoc(info.callback) if info.help is None and info.callback else None
            if doc:
                info.help = "\n\n".join(" ".join(p.split("\n")) for p in doc.split("\n\n"))


def err(msg: str) -> None:
    """One line on stderr, prefixed with the program name."""
    typer.echo(f"earshot: {msg}", err=True)


def default_workers() -> int:
    """Classifier threads when a command is not told: one per core."""
    from earshot import cores

    return cores.usable()
