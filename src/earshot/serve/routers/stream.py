"""WebSocket `/v1/stream`: raw PCM in as binary frames, the records of `earshot stream` out as text frames.

`ws://HOST/v1/stream?model=&rate=16000&format=s16le|f32le&channels=1&window=1&hop=0.5&threshold=&top_k=3`
(also `min_duration`, `classes`/`exclude` (repeatable), `title`, `api_key`). `format=file`: the binary frames are
the bytes of an audio file in any format `earshot stream -` reads (WAV, FLAC, MP3, Ogg, ...; formats other than WAV
need the media extra), decoded as they come; `rate` and `channels` are then the file's own. Once the parameters are
checked, the model loaded and the stream admitted, the server sends a `ready` record (model, format, sample_rate
(None for a file), window, hop, labels); then `segment`, `event_start` and `event` records as the audio arrives, and
after the client's text frame `{"type": "end"}` (or its close) a `summary`, then it closes (1000). Anything wrong
ends with an `error` record and a close code that says why: 1008 (parameters, API key, idle, slow consumer), 1007
(samples that are not audio, a message it does not know), 1009 (frame too large), 1013 (overloaded), 1011
(internal).

A shell only: the records are made by `earshot.stream.classify_feed`; the bounds (backlog, pending records,
idle time, frame size, stream length, open streams) by `earshot.serve.streaming` and the settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.datastructures import QueryParams

from earshot import limits
from earshot.audio import pcm
from earshot.errors import EarshotError, StreamError
from earshot.serve.settings import Settings
from earshot.serve.streaming import (
    CLOSE_INTERNAL,
    CLOSE_INVALID,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_LATER,
    FILE_FORMAT,
    STREAM_FORMATS,
    Bridge,
)
from earshot.serve.uploads import upload_title
from earshot.stream import classify_feed

log = logging.getLogger("earshot.serve")

router = APIRouter(tags=["stream"])

CLOSE_TOO_BIG = 1009
_CLOSE_FOR = {"bad_samples": CLOSE_INVALID, "bad_message": CLOSE_INVALID, "frame_too_large": CLOSE_TOO_BIG,
              "overloaded": CLOSE_TRY_LATER, "internal": CLOSE_INTERNAL}


def _options(q: QueryParams, settings: Settings) -> dict[str, Any]:
    """The stream's parameters from the query string, checked (LimitError / ValueError name the bad one)."""

    def number(name: str, default: Any, kind: type = float) -> Any:
        raw = q.get(name)
        if raw is None or raw == "":
            return default
        try:
            return kind(raw)
        except ValueError:
            raise limits.LimitError(name, float("nan"), f"{name} must be {'an integer' if kind is int else 'a number'}"
                                    f", got {raw!r}") from None

    fmt = q.get("format") or "s16le"
    if fmt not in STREAM_FORMATS:
        raise limits.LimitError("format", float("nan"), f"format must be one of {', '.join(STREAM_FORMATS)}, "
                                f"got {fmt!r}")
    rate, channels = limits.check_pcm(number("rate", 16000, int), number("channels", 1, int))
    window, hop = limits.check_timeline(number("window", 1.0), number("hop", None))
    top_k = limits.check_top_k(number("top_k", 3, int), settings.max_top_k)
    min_duration = number("min_duration", 0.0)
    if not 0.0 <= min_duration <= limits.MAX_WINDOW_S * 10:
        raise limits.LimitError("min_duration", (0.0, limits.MAX_WINDOW_S * 10),
                                f"min_duration must be between 0 and {limits.MAX_WINDOW_S * 10:g} s")
    return {"model": q.get("model") or None, "format": fmt, "rate": rate, "channels": channels, "window": window,
            "hop": hop, "top_k": top_k, "threshold": limits.check_threshold(number("threshold", None)),
            "min_duration": min_duration, "classes": q.getlist("classes") or None,
            "exclude": q.getlist("exclude") or None, "title": upload_title(q.get("title"), "stream")}


def _error_record(name: str, at: float, error: BaseException | dict) -> dict[str, Any]:
    err = error if isinstance(error, dict) else error.to_dict() if isinstance(error, EarshotError) else {
        "type": type(error).__name__, "reason": "usage", "message": str(error)}
    return {"type": "error", "source": name, "at": round(at, 3), "error": err}


async def _refuse(ws: WebSocket, record: dict[str, Any] | None, code: int, timeout: float | None = None) -> None:
    """Send one error record (if any) and close; `timeout` (default: the send timeout) bounds each step."""
    timeout = ws.app.state.settings.stream_send_timeout_s if timeout is None else timeout
    try:
        if record is not None:
            await asyncio.wait_for(ws.send_text(json.dumps(record)), timeout)
        await asyncio.wait_for(ws.close(code), timeout)
    except Exception:  # noqa: BLE001 - the client is gone already
        pass


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    """One live stream (see the module doc)."""
    state = ws.app.state
    settings: Settings = state.settings
    await ws.accept()
    name = upload_title(ws.query_params.get("title"), "stream")
    try:
        opts = _options(ws.query_params, settings)
        state.store.resolve(opts["model"])
    except (EarshotError, ValueError) as e:
        state.metrics.error("/v1/stream", type(e).__name__)
        return await _refuse(ws, _error_record(name, 0.0, e), CLOSE_POLICY)
    streams = state.streams
    if not streams.try_acquire():
        state.metrics.reject("overload")
        err = StreamError(f"server busy: {streams.limit} streams open; retry shortly", source=name,
                          reason="overloaded")
        return await _refuse(ws, _error_record(name, 0.0, err), CLOSE_TRY_LATER)
    try:
        farewell = await _session(ws, state, settings, opts)
    finally:
        streams.release()
    if farewell is not None:  # the stream's slot is free; its last record waits for a slow client a while
        await _refuse(ws, *farewell, timeout=settings.stream_linger_s)


async def _session(ws: WebSocket, state: Any, settings: Settings, opts: dict[str, Any]
                   ) -> tuple[dict[str, Any] | None, int] | None:
    """Run one admitted stream; how to end it, (last record to send or None, close code), or None when the
    socket is done with."""
    loop = asyncio.get_running_loop()
    name = opts["title"]
    try:
        clf = await loop.run_in_executor(state.streams.pool, state.store.get, opts["model"])
        allowed = clf.class_mask(opts["classes"], opts["exclude"])
    except (EarshotError, ValueError) as e:
        state.metrics.error("/v1/stream", type(e).__name__)
        return _error_record(name, 0.0, e), CLOSE_POLICY

    file = opts["format"] == FILE_FORMAT
    bridge = Bridge(name, None if file else pcm.PcmFormat(opts["format"], opts["channels"]),
                    None if file else opts["rate"], backlog_s=settings.stream_backlog_s,
                    max_pending=settings.stream_max_pending)
    max_seconds = settings.max_stream_s if settings.max_stream_s > 0 else None
    records = classify_feed(bridge.feed, name, clf, window=opts["window"], hop=opts["hop"],
                            threshold=opts["threshold"], top_k=opts["top_k"], min_duration=opts["min_duration"],
                            max_seconds=max_seconds, allowed=allowed)

    def drive() -> None:  # the stream's thread
        try:
            for rec in records:
                loop.call_soon_threadsafe(bridge.deliver, rec)
        except Exception as e:  # noqa: BLE001 - classify_feed reports its own failures; this is a bug
            log.exception("stream %s failed", name)
            err = {"type": type(e).__name__, "reason": "internal", "message": f"{name}: internal error"}
            loop.call_soon_threadsafe(bridge.deliver, _error_record(name, 0.0, err))
        finally:
            loop.call_soon_threadsafe(bridge.deliver, None)

    ready = {"type": "ready", "source": name, "model": getattr(clf, "name", None), "format": opts["format"],
             "sample_rate": None if file else opts["rate"], "model_sample_rate": clf.sample_rate,
             "window": opts["window"], "hop": opts["hop"], "labels": list(clf.labels)}
    try:
        await asyncio.wait_for(ws.send_text(json.dumps(ready)), settings.stream_send_timeout_s)
    except Exception:  # noqa: BLE001 - gone before it started
        return None
    worker = loop.run_in_executor(state.streams.pool, drive)
    receiver = asyncio.create_task(_receive(ws, bridge, settings))
    try:
        await _send_records(ws, bridge, settings.stream_send_timeout_s)
        await asyncio.gather(worker, return_exceptions=True)
        return _ending(state, bridge)
    finally:
        bridge.stop()
        receiver.cancel()
        await asyncio.gather(receiver, worker, return_exceptions=True)


async def _send_records(ws: WebSocket, bridge: Bridge, timeout: float) -> None:
    """Send the stream's records as they come; a client that does not take one within `timeout` is slow, one
    that is gone gets nothing more (the stream stops either way)."""
    async for rec in bridge.records():
        if bridge.slow or bridge.gone:
            continue
        bridge.last = rec
        try:
            await asyncio.wait_for(ws.send_text(json.dumps(rec)), timeout)
        except TimeoutError:
            bridge.slow = True
            bridge.stop()
        except Exception:  # noqa: BLE001 - the client went away
            bridge.gone = True
            bridge.stop()


def _ending(state: Any, bridge: Bridge) -> tuple[dict[str, Any] | None, int] | None:
    """How the stream ends: an error record for a slow client, and the close code that says why it ended."""
    if bridge.gone:
        return None
    if bridge.slow:
        state.metrics.error("/v1/stream", "StreamError")
        err = StreamError("the client did not read the records as fast as they came; stream stopped",
                          source=bridge.name, reason="slow_consumer")
        return _error_record(bridge.name, bridge.seconds(), err), CLOSE_POLICY
    last = bridge.last
    if last is None or last.get("type") != "error":
        return None, CLOSE_NORMAL
    error = last["error"]
    state.metrics.error("/v1/stream", error.get("type", "Error"))
    return None, _CLOSE_FOR.get(error.get("reason", ""), CLOSE_POLICY if error.get("type") == "StreamError"
                                else CLOSE_INVALID)


async def _receive(ws: WebSocket, bridge: Bridge, settings: Settings) -> None:
    """Read the client's frames into the bridge until the audio ends, then read and drop whatever else comes
    (so a client still sending is never blocked while its last records go out), until the client leaves."""
    max_frame = int(settings.stream_max_frame_mb * (1 << 20))
    while True:
        if not bridge.ended:
            await bridge.wait_for_room()
        try:
            message = await asyncio.wait_for(ws.receive(), None if bridge.ended else settings.stream_idle_timeout_s)
        except TimeoutError:
            bridge.fail(StreamError(f"no audio for {settings.stream_idle_timeout_s:g} s", source=bridge.name,
                                    reason="idle"))
            continue
        if message["type"] == "websocket.disconnect":
            bridge.gone = True
            bridge.stop()
            return
        if bridge.ended:
            continue
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > max_frame:
                bridge.fail(StreamError(f"a frame of {len(data)} bytes; at most {max_frame} per frame",
                                        source=bridge.name, reason="frame_too_large"))
            else:
                bridge.push(data)
        elif text is not None:
            try:
                kind = json.loads(text).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "end":
                bridge.end()
            else:
                bridge.fail(StreamError('a text frame that is not {"type": "end"}: audio goes in binary frames',
                                        source=bridge.name, reason="bad_message"))
