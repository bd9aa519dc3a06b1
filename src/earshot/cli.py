"""`earshot` command line: a thin shell over the Python API (no ML logic here)."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from earshot import audio
from earshot.errors import EarshotError
from earshot.prediction import Prediction

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sound classification: tag, train, serve.")
models_app = typer.Typer(no_args_is_help=True, help="Pretrained models and bundles.")
app.add_typer(models_app, name="models")

Model = Annotated[str, typer.Option("--model", "-m", help="Registry name, bundle directory or s3:// bundle.")]
Endpoint = Annotated[str | None, typer.Option("--endpoint-url", envvar="AWS_ENDPOINT_URL",
                                              help="S3-compatible endpoint (MinIO, IBM COS, ...).")]


def _err(msg: str) -> None:
    typer.echo(f"earshot: {msg}", err=True)


def expand_inputs(paths: list[str], endpoint_url: str | None = None) -> Iterator[Any]:
    """Files, folders (recursive, audio files only), globs, s3:// prefixes and `-` (stdin) → sources."""
    for p in paths:
        if p == "-":
            yield io.BytesIO(sys.stdin.buffer.read())
        elif p.startswith("s3://"):
            from earshot.pipeline.storage import open_store

            store = open_store(p, endpoint_url=endpoint_url)
            for obj in store.list():
                if audio.is_audio_name(obj.key):
                    yield _RemoteObject(store, obj.key)
        elif Path(p).is_dir():
            files = sorted(Path(p).rglob("*"))
            yield from (str(f) for f in files if f.is_file() and audio.is_audio_name(f))
        elif any(c in p for c in "*?[") and not Path(p).exists():
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                yield p  # reported as not found by the decoder
            yield from matches
        else:
            yield p


class _RemoteObject(io.BytesIO):
    """An object-store key read lazily when the decoder asks; named by its URL."""

    def __init__(self, store, key: str) -> None:
        super().__init__()
        self.name = store.child_url(key)
        self._store, self._key, self._loaded = store, key, False

    def read(self, *args):  # type: ignore[override]
        self._load()
        return super().read(*args)

    def seek(self, *args):  # type: ignore[override]
        self._load()
        return super().seek(*args)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            super().write(self._store.get(self._key))
            super().seek(0)


class _Writer:
    """Writes predictions as json (object or array), jsonl or csv to a stream."""

    CSV_FIELDS = ["title", "rank", "label", "label_id", "probability", "duration", "model", "error"]

    def __init__(self, fmt: str, out, single: bool) -> None:
        self.fmt, self.out, self.single, self.n = fmt, out, single, 0
        if fmt == "csv":
            self.csv = csv.DictWriter(out, fieldnames=self.CSV_FIELDS)
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
                self.csv.writerow({**base, "rank": i + 1, "label": lab, "label_id": lid, "probability": prob})
        self.n += 1
        self.out.flush()

    def close(self) -> None:
        if self.fmt == "json":
            if not self.single:
                self.out.write("\n]\n" if self.n else "[]\n")
            elif self.n:
                self.out.write("\n")


@app.command()
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
) -> None:
    """Classify audio. Exit 1 when some inputs failed (their error objects are printed with the rest)."""
    if fmt not in ("json", "jsonl", "csv"):
        raise typer.BadParameter("--format must be json, jsonl or csv")
    import earshot

    try:
        clf = earshot.load(model)
    except EarshotError as e:
        _err(str(e))
        raise typer.Exit(2) from e
    sources = list(expand_inputs(paths, endpoint_url))
    out = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    writer = _Writer(fmt, out, single=len(sources) == 1 and len(paths) == 1 and not Path(paths[0]).is_dir())
    failed = 0
    results = clf.predict_many(sources, top_k=top_k, timeline=timeline, window=window, hop=hop, threshold=threshold)
    try:
        with _progress(len(sources), quiet) as advance:
            for p in results:
                writer.write(p)
                failed += p.error is not None
                advance()
        writer.close()
    finally:
        if output:
            out.close()
    if failed:
        _err(f"{failed} of {len(sources)} inputs failed")
        raise typer.Exit(1)


class _progress:
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


# ------------------------------------------------------------------------------------------- models
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
        _err(str(e))
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
        _err(str(e))
        raise typer.Exit(2) from e


# ------------------------------------------------------------------------------------------- training
@app.command()
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
    """Train a classifier and export it as a bundle (needs earshot[train])."""
    from earshot.training import train as run_train

    try:
        path = run_train(data, out, model=model, backbone=backbone, val_fold=val_fold, val_split=val_split, cv=cv,
                         filters=tuple(filter_ or ()), label_regex=label_regex, group_regex=group_regex,
                         epochs=epochs, seed=seed, finetune=finetune, quiet=quiet)
    except EarshotError as e:
        _err(str(e))
        raise typer.Exit(2) from e
    typer.echo(str(path))


@app.command()
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
        _err(str(e))
        raise typer.Exit(2) from e
    if fmt == "json":
        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
    else:
        for k in ("n", "accuracy", "macro_f1", "mAP"):
            if k in metrics:
                typer.echo(f"{k:>10}: {metrics[k]}")


# ------------------------------------------------------------------------------------------- shells
@app.command()
def serve(
    model: Model = "mn04-as",
    host: Annotated[str, typer.Option(help="Bind address (127.0.0.1 unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """REST API (/v1) and the web page at /."""
    from earshot.serve import run

    run(model=model, host=host, port=port)


@app.command()
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
    workers = workers or _default_workers()
    result = w.watch(src, output, model=model, poll=poll, workers=workers, ledger=ledger, max_attempts=max_attempts,
                     once=once, stop_event=w.stop_on_signals(), endpoint_url=endpoint_url, http=http, lease=lease,
                     backoff=backoff, scan_interval=scan_interval, settle=settle, top_k=top_k,
                     use_watchdog=False if no_watchdog else None)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def batch(
    src: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix.")],
    output: Annotated[str, typer.Option("--output", "-o")],
    model: Model = "mn04-as",
    engine: Annotated[str, typer.Option(help="local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Classifier threads (default: one per core; writes run beside).")] = 0,
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

    workers = workers or _default_workers()
    summary = run_batch(src, output, model=model, workers=workers, ledger=ledger, fmt=fmt, engine=engine,
                        progress=not quiet, endpoint_url=endpoint_url, top_k=top_k, max_attempts=max_attempts,
                        lease=lease, backoff=backoff)
    typer.echo(json.dumps(summary, indent=2, default=str))
    if summary.get("failed"):
        raise typer.Exit(1)


@app.command()
def stream(
    source: Annotated[str, typer.Argument(help="- (stdin), a file, mic[:N], or a URL with --allow-url.")],
    model: Model = "mn04-as",
    window: Annotated[float, typer.Option(help="Seconds of audio per analysis.")] = 1.0,
    hop: Annotated[float, typer.Option(help="Seconds between analyses (latency).")] = 0.5,
    threshold: Annotated[float | None, typer.Option(help="Event threshold (default: card thresholds).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 3,
    min_duration: Annotated[float, typer.Option(help="Shortest event reported, seconds.")] = 0.0,
    realtime: Annotated[bool, typer.Option(help="Pace a file at real time, as a live feed.")] = False,
    allow_url: Annotated[bool, typer.Option("--allow-url", help="Permit http(s)/rtsp/rtmp sources.")] = False,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this much audio.")] = None,
    raw_format: Annotated[str | None, typer.Option(help="Raw PCM on stdin: u8, s16le, s24le, s32le, f32le, f64le.")]
    = None,
    rate: Annotated[int | None, typer.Option(help="Sample rate of raw PCM.")] = None,
    channels: Annotated[int, typer.Option(help="Channels of raw PCM.")] = 1,
    event_start: Annotated[bool, typer.Option("--event-start/--no-event-start",
                                              help="Print event_start records as events begin.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait on a URL.")] = 10.0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl or text.")] = "jsonl",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Classify a live stream continuously: one JSON line per window, events as they close, a summary."""
    from earshot.audio.pcm import RAW_FORMATS
    from earshot.stream import run as run_stream

    if fmt not in ("jsonl", "text"):
        raise typer.BadParameter("--format must be jsonl or text")
    if raw_format is not None and raw_format not in RAW_FORMATS:
        raise typer.BadParameter(f"--raw-format must be one of {', '.join(RAW_FORMATS)}")

    code = run_stream(source, fmt=fmt, output=output, model=model, window=window, hop=hop, threshold=threshold,
                      top_k=top_k, min_duration=min_duration, realtime=realtime, allow_urls=allow_url,
                      max_seconds=max_seconds, raw_format=raw_format, rate=rate, channels=channels,
                      event_starts=event_start, timeout=timeout)
    raise typer.Exit(code)


def _default_workers() -> int:
    return os.cpu_count() or 1


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
