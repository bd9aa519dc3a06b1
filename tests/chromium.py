"""Debian's chromium under Playwright for the browser tests: its flags, why it cannot run, a page opened on a
site, and a browser whose microphone plays a file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = ROOT / "artifacts"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "needs the playwright package (pip install playwright)"
    return None


def open_page(browser, base, key: str | None = None, *, timeout_ms: int = 30_000, requests: list | None = None):
    """A new context's page on `base` with its models listed: `key` stored as the page's API key, every URL the
    page requests appended to `requests`."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    if key:
        ctx.add_init_script(f"localStorage.setItem('earshot.apiKey', {key!r})")
    pg = ctx.new_page()
    pg.set_default_timeout(timeout_ms)
    if requests is not None:
        pg.on("request", lambda r: requests.append(r.url))
    pg.goto(base)
    pg.wait_for_function("document.querySelectorAll('#model-select option').length > 0")
    return ctx, pg


def fake_microphone(playwright, wav: Path):
    """Chromium whose microphone plays `wav` in a loop (permission granted); closed after use."""
    fake = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"]
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *fake])
    yield b
    b.close()
