"""`earshot models list|info|pull|labels`: the registry, local bundles and their labels."""

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


@models_app.command("labels")
def models_labels(
    model: Annotated[str, typer.Argument(help="Registry name or bundle directory.")] = "mn04-as",
    only: Annotated[list[str] | None, typer.Option(
        "--filter", help="Only labels under this AudioSet class (name or id, whole subtree) or of this label "
        "name; repeatable.")] = None,
    tree: Annotated[bool, typer.Option("--tree", help="Indent labels under their ontology classes.")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
) -> None:
    """A model's labels with their ontology ids and parent classes; --tree draws the ontology above them."""
    from earshot import ontology
    from earshot.bundle import read_bundle
    from earshot.models import resolve

    try:
        card = read_bundle(resolve(model)).card
        labels = list(card["labels"])
        ids = list(card.get("label_ids") or [None] * len(labels))
        mask = ontology.label_mask(labels, ids, only, model=card["name"])
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    kept = [(lab, i) for k, (lab, i) in enumerate(zip(labels, ids)) if mask is None or mask[k]]
    if fmt == "json":
        _, _, parents = ontology.describe([i for _, i in kept])
        rows = [{"label": lab, "label_id": i, "parents": p} for (lab, i), p in zip(kept, parents)]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif tree and any(i in ontology.load().nodes for _, i in kept):
        _print_tree(kept)
    else:
        for lab, i in kept:
            typer.echo(f"{lab}\t{i or ''}")


def _print_tree(kept: list[tuple[str, str | None]]) -> None:
    """The ontology from its roots down to the kept labels: classes that lead to none are left out, classes that
    are not labels of the model are shown in brackets, labels without an ontology id are listed last."""
    from earshot import ontology

    onto = ontology.load()
    mine = {i: lab for lab, i in kept if i in onto.nodes}
    shown = set(mine)
    for i in list(mine):
        shown.update(onto.ancestors(i))

    def walk(node: str, depth: int) -> None:
        name = mine.get(node)
        text = f"{name}  {node}" if name is not None else f"[{onto.nodes[node].name}]"
        typer.echo("  " * depth + text)
        for c in onto.children(node):
            if c in shown:
                walk(c, depth + 1)

    for root in onto.roots:
        if root in shown:
            walk(root, 0)
    for lab, i in kept:
        if i not in onto.nodes:
            typer.echo(f"{lab}\t{i or ''}")
