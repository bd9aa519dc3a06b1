"""`earshot index` and `earshot search`: find every recording like this one."""

from __future__ import annotations

import io
import json
import sys
from typing import Annotated

import typer

from earshot.cli.app import Endpoint, app, err
from earshot.errors import EarshotError


@app.command(rich_help_panel="Search")
def index(
    data: Annotated[list[str], typer.Argument(help="Folders (recursive), globs, files or s3:// prefixes.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Index folder or s3:// prefix (created or updated).")],
    model: Annotated[str | None, typer.Option(
        "--model", "--backbone", "-m", help="Embedding model: registry name, bundle or s3:// bundle "
        "(default: the index's, else mn04-as).")] = None,
    window: Annotated[float | None, typer.Option(help="Window, seconds (default: the index's, else 1).")] = None,
    hop: Annotated[float | None, typer.Option(help="Hop, seconds (default: the window).")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Drop indexed files that are gone from DATA.")] = False,
    workers: Annotated[int, typer.Option(help="Embedding threads (default: one per core).")] = 0,
    endpoint_url: Endpoint = None,
) -> None:
    """Embed every audio file under DATA window by window into a search index. Run again, only new or changed
    files are embedded. Prints a JSON report; bad files are reported on stderr, skipped and counted (exit 1)."""
    from earshot.search import index_sources

    try:
        report = index_sources(data, out, model=model, window=window, hop=hop, endpoint_url=endpoint_url,
                               prune=prune, workers=workers or None,
                               on_error=lambda r: err(f"skipped {r['source']}: {r['reason']}: {r['message']}"))
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    if report.failed:
        err(f"{report.failed} inputs failed")
        raise typer.Exit(1)


@app.command(rich_help_panel="Search")
def search(
    index_url: Annotated[str, typer.Argument(metavar="INDEX", help="Index folder or s3:// prefix.")],
    query: Annotated[str, typer.Argument(help="Audio file, s3:// object, - for stdin, or an id in the index.")],
    k: Annotated[int, typer.Option("--k", "-k", "--top-k", min=1, max=10_000, help="Number of hits.")] = 10,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json or jsonl.")] = "json",
    endpoint_url: Endpoint = None,
) -> None:
    """The indexed files most like QUERY, best first: [{"id", "score", "start", "end", "source"}], where
    start/end is the best-matching window of the hit and score its cosine similarity (1 = the same clip)."""
    if fmt not in ("json", "jsonl"):
        raise typer.BadParameter("--format must be json or jsonl")
    from earshot.search import SearchIndex, query_embeddings
    from earshot.search import search as run_search

    try:
        idx = SearchIndex.open(index_url, endpoint_url)
        source = _query_source(query, idx, endpoint_url)
        hits = run_search(idx, query_embeddings(idx, source, title=query), k)
    except EarshotError as e:
        err(str(e))
        raise typer.Exit(2) from e
    rows = [h.to_dict() for h in hits]
    if fmt == "jsonl":
        for r in rows:
            typer.echo(json.dumps(r, ensure_ascii=False))
    else:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))


def _query_source(query: str, idx, endpoint_url: str | None):
    """An id of the index as it is, stdin's bytes, an s3:// object's bytes, else the path."""
    if query in idx.files:
        return query
    if query == "-":
        return io.BytesIO(sys.stdin.buffer.read())
    if query.startswith("s3://"):
        from earshot.pipeline.storage import open_store

        parent, _, key = query.rpartition("/")
        return io.BytesIO(open_store(parent + "/", endpoint_url=endpoint_url).get(key))
    return query
