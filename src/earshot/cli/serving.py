"""`earshot serve` (REST API and web page) and `earshot stream` (a live source classified as it arrives)."""

from __future__ import annotations

from typing import Annotated

import typer

from earshot.cli.app import Classes, Exclude, Model, app


@app.command(rich_help_panel="Serve")
def serve(
    model: Model = "mn04-as",
    host: Annotated[str, typer.Option(help="Bind address (127.0.0.1 unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """REST API (/v1) and the web page at /."""
    from earshot.serve import run

    run(model=model, host=host, port=port)


@app.command(rich_help_panel="Serve")
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
    classes: Classes = None,
    exclude: Exclude = None,
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
                      event_starts=event_start, timeout=timeout, classes=classes, exclude=exclude)
    raise typer.Exit(code)
