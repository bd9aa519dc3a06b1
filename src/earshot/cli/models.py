"""`earshot models list|info|pull`: the registry and local bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from earshot.cli.app import err, models_app
from earshot.errors import EarshotError


@models_app.command("list")
def models_list(fmt: Annotated[str, typer.Option("--format", "-f")] = "table") -> None:
    """Registry models and local bundles."""
    from earshot.models import list_models

    rows = list_models()
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['name']:<20} {'pulled' if r['pulled'] else '-':<7} {r['description']}")


@models_app.command("info")
def models_info(model: Annotated[str, typer.Argument(help="Registry name or bundle directory.")]) -> None:
    """Print a model's card (labels elided) as JSON."""
    from earshot.bundle import is_bundle, read_bundle
    from earshot.models import models_dir, spec

    try:
        path = Path(model) if is_bundle(model) else models_dir() / model
        if is_bundle(path):
            card = dict(read_bundle(path).card)
            card["labels"] = f"{len(card['labels'])} labels: {', '.join(card['labels'][:8])}, ..."
            card.pop("label_ids", None)
            card["path"] = str(path)
        else:
            s = spec(model)
            card = {"name": s.name, "description": s.description, "url": s.url, "sha256": s.sha256,
                    "sample_rate": s.sample_rate, "license": s.license, "source": s.source, "pulled": False,
                    "hint": f"earshot models pull {model}"}
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    typer.echo(json.dumps(card, indent=2, ensure_ascii=False))


@models_app.command("pull")
def models_pull(
    model: Annotated[str, typer.Argument()] = "mn04-as",
    force: Annotated[bool, typer.Option(help="Rebuild even if present.")] = False,
) -> None:
    """Fetch verified weights (cache → EARSHOT_MODEL_MIRROR → official URL) and build the bundle once."""
    from earshot.models import pull

    try:
        typer.echo(str(pull(model, force=force)))
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
