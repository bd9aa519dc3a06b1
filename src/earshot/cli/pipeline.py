"""`earshot watch` and `earshot batch`: folders and buckets classified exactly once through a durable ledger."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from earshot.cli.app import Endpoint, Model, app, default_workers


@app.command(rich_help_panel="Object storage")
def watch(
    src: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix to watch.")],
    dst: Annotated[str | None, typer.Argument(help="Folder or s3:// prefix for results (or --output).")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Folder or s3:// prefix for results.")] = None,
    model: Model = "mn04-as",
    poll: Annotated[float, typer.Option(help="Seconds between listings.")] = 5.0,
    workers: Annotated[int, typer.Option(help="Classifier threads (default: one per core; writes run beside).")] = 0,
    ledger: Annotated[str | None, typer.Option(help="SQLite path or postgresql:// URL.")] = None,
    max_attempts: Annotated[int, typer.Option()] = 3,
    once: Annotated[bool, typer.Option(help="Process what is there, then exit.")] = False,
    http: Annotated[str | None, typer.Option(help="host:port accepting S3 event notifications.")] = None,
    status: Annotated[bool, typer.Option("--status", help="Print ledger status and exit.")] = False,
    endpoint_url: Endpoint = None,
    lease: Annotated[float, typer.Option(help="Seconds a claimed object stays leased without renewal.")] = 60.0,
    backoff: Annotated[float, typer.Option(help="Base seconds of the retry backoff.")] = 1.0,
    scan_interval: Annotated[float, typer.Option(help="Seconds between full scans beside inotify.")] = 60.0,
    settle: Annotated[float, typer.Option(help="Seconds a local file must be unchanged before it is read.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    no_watchdog: Annotated[bool, typer.Option("--no-watchdog", help="Poll local folders, no inotify.")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Classify every object that lands in SRC into DST/<key>.json (or .error.json), exactly once."""
    from earshot import watch as w
    from earshot.pipeline.logs import configure_logging

    configure_logging(log_level)
    output = output or dst
    if status:
        from earshot.pipeline.ledger import default_ledger_path
        from earshot.pipeline.storage import open_store

        if output is None and ledger is None:
            raise typer.BadParameter("--status needs --output (or --ledger)")
        source = open_store(src, endpoint_url=endpoint_url).url
        sink = open_store(output, endpoint_url=endpoint_url).url if output else None
        led = ledger or default_ledger_path(source, sink)
        typer.echo(json.dumps(w.status(led, source, sink), indent=2, default=str))
        return
    if output is None:
        raise typer.BadParameter("an output (DST or --output) is required")
    workers = workers or default_workers()
    result = w.watch(src, output, model=model, poll=poll, workers=workers, ledger=ledger, max_attempts=max_attempts,
                     once=once, stop_event=w.stop_on_signals(), endpoint_url=endpoint_url, http=http, lease=lease,
                     backoff=backoff, scan_interval=scan_interval, settle=settle, top_k=top_k,
                     use_watchdog=False if no_watchdog else None)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command(rich_help_panel="Object storage")
def batch(
    src: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix.")],
    output: Annotated[str, typer.Option("--output", "-o")],
    model: Model = "mn04-as",
    engine: Annotated[str, typer.Option(help="local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Classifier threads (default: one per core; writes run beside); "
                                              "Ray actors (default: as many as the cluster holds).")] = 0,
    address: Annotated[str | None, typer.Option(help="Ray cluster to run on: HOST:PORT or auto (engine ray).")] = None,
    num_cpus: Annotated[float, typer.Option(help="CPUs each Ray actor asks for (its onnxruntime threads).")] = 1.0,
    num_gpus: Annotated[float, typer.Option(help="GPUs each Ray actor asks for (fractions share one).")] = 0.0,
    ledger: Annotated[str | None, typer.Option()] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json (one file per input) or jsonl.")] = "json",
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    endpoint_url: Endpoint = None,
    max_attempts: Annotated[int, typer.Option()] = 3,
    lease: Annotated[float, typer.Option(help="Seconds a claimed object stays leased without renewal.")] = 300.0,
    backoff: Annotated[float, typer.Option(help="Base seconds of the retry backoff.")] = 1.0,
) -> None:
    """One-shot classification of everything under SRC; resumable on the same ledger."""
    from earshot.batch import batch as run_batch

    if address and engine != "ray":
        raise typer.BadParameter("--address needs --engine ray")
    workers = workers or (0 if engine == "ray" and address else default_workers())
    summary = run_batch(src, output, model=model, workers=workers, ledger=ledger, fmt=fmt, engine=engine,
                        progress=not quiet, endpoint_url=endpoint_url, top_k=top_k, max_attempts=max_attempts,
                        lease=lease, backoff=backoff, address=address, num_cpus=num_cpus, num_gpus=num_gpus)
    typer.echo(json.dumps(summary, indent=2, default=str))
    if summary.get("failed"):
        raise typer.Exit(1)
