"""`earshot` command line: a thin shell over the Python API (no ML logic here), one module per area.

`app` (the console entry point) lives in `app`; importing this package registers every command: `predict`,
`models`, `training` (train, evaluate), `pipeline` (watch, batch), `embeddings` (embed), `serving` (serve, stream),
`search` (index, search).

`earshot predict` is the command run once per file in shell loops, so its start and end are kept short: numpy's
OpenBLAS gets one thread (set before numpy is imported), and a finished run skips the interpreter's teardown
(`_leave`).
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
from typing import NoReturn

if sys.argv[1:2] == ["predict"]:
    # numpy's OpenBLAS starts a pool of threads when numpy is imported and joins it at exit: about 20 ms of each
    # `earshot predict`, whose numeric work runs in ONNX Runtime and soxr. Set before numpy is first imported.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from earshot.cli.app import app, models_app, reflow_help  # noqa: E402

# Importing a command module registers its commands; `earshot --help` lists them in this order.
for _area in ("predict", "training", "embeddings", "serving", "pipeline", "search", "models"):
    importlib.import_module(f"earshot.cli.{_area}")
reflow_help(app, models_app)

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """The console entry point. A command named first on the line is built alone: turning every command's
    signature into options costs tens of milliseconds at each start, which `earshot predict x.wav` need not pay.
    Anything else (no command, `--help`, the `models` group) goes through the whole app. Run as the program
    (`argv` None), `predict` ends through `_leave`; called with `argv`, every command ends in SystemExit."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = sys.argv[1:] if argv is None else list(argv)
    info = next((c for c in app.registered_commands if args and _command_name(c) == args[0]), None)
    if info is None:
        app(args=args, prog_name="earshot")
        return
    solo = typer.Typer(add_completion=False)  # one command and no callback: typer runs it as the program itself
    solo.registered_commands = [info]
    try:
        solo(args=args[1:], prog_name=f"earshot {args[0]}")
    except SystemExit as done:
        if args[0] == "predict" and argv is None:  # given its arguments, main() is being called, not run
            _leave(done)
        raise


def _leave(done: SystemExit) -> NoReturn:
    """End a finished one-shot command without the interpreter's teardown (finalising every module and object, and
    the native libraries' static destructors: about 25 ms of each `earshot predict`, an eighth of its run on one
    file). The exit handlers still run (logging, temporary files, anything a library registered) and the standard
    streams are flushed first; with another thread alive, a tracer or profiler attached, or anything unusual, the
    normal exit happens instead."""
    code = done.code
    watched = sys.gettrace() is not None or sys.getprofile() is not None  # coverage, cProfile: they report at exit
    if watched or not (code is None or isinstance(code, int)) or threading.active_count() > 1:
        raise done
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - e.g. a closed pipe: the normal exit reports it as Python does
        raise done from None
    os._exit(code or 0)


def _command_name(info: typer.models.CommandInfo) -> str:
    """The name typer gives a registered command: its own, else one made from the function's name."""
    return info.name or typer.main.get_command_name(info.callback.__name__)  # type: ignore[union-attr]
