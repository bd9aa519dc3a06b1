"""The page live, in a real browser: Listen on a fake microphone, Record, a file past the upload cap streamed
through the WebSocket, and adapting a model to a new microphone or a voice recorded in the page."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from apiserver import running_server
from audiofiles import thin_microphone
from chromium import ARTIFACTS, fake_microphone, open_page
from conftest import esc50_clip, fsdd_take

DOG_LABELS = {"Dog", "Animal", "Domestic animals, pets", "Bark", "Bow-wow"}


def dog_audio(indices) -> np.ndarray:
    """Real ESC-50 dog clips (16 kHz mono) end to end."""
    return np.concatenate([sf.read(esc50_clip("dog", i), dtype="float32")[0] for i in indices])


@pytest.fixture
def mic_browser(playwright, tmp_path):
    """Chromium whose microphone plays (in a loop) a WAV of dog barks: 1-30226-A-0 (a bark from 1.5 s to its end)
    then 1-110389-A-0 (barks from the start)."""
    wav = tmp_path / "mic.wav"
    sf.write(wav, dog_audio([2, 1]), 16000, subtype="PCM_16")
    yield from fake_microphone(playwright, wav)


def test_listen_streams_microphone_live(mic_browser, site):
    ctx, pg = open_page(mic_browser, site)
    sockets = []
    pg.on("websocket", lambda ws: sockets.append(ws.url))
    pg.click("#listen-btn")
    pg.wait_for_selector("#live:not([hidden])")
    # the bars follow each window: the bark shows as Dog at some point (checked every frame)
    pg.wait_for_function(
        "[...document.querySelectorAll('#live-chart .bar-label')].some(e => e.textContent === 'Dog')",
        polling="raf", timeout=60_000,
    )
    # and the event lane draws the bark as an event (open, then closed)
    pg.wait_for_function(
        f"[...document.querySelectorAll('#live-lanes .lane')].some(l => {sorted(DOG_LABELS)!r}"
        ".includes(l.querySelector('.lane-name').textContent) && l.querySelector('.live-event'))",
        timeout=30_000,
    )
    assert pg.locator("#live-meta").inner_text().startswith("listening")
    assert pg.locator("#live-axis span").count() == 5
    assert sockets and "/v1/stream?" in sockets[0] and "format=s16le" in sockets[0] and "model=mn04-as" in sockets[0]
    pg.screenshot(path=str(ARTIFACTS / "web_listen.png"), full_page=True)
    pg.click("#live-stop")
    pg.wait_for_selector("#live-summary:not([hidden])")
    summary = pg.locator("#live-summary-chart .bar-label").all_inner_texts()
    assert set(summary) & DOG_LABELS, summary
    meta = pg.locator("#live-summary-meta").inner_text()
    assert "stopped: eof" in meta
    heard = meta.split("heard ", 1)[1].split(" · ")[0].split(", ")  # the labels whose events were heard
    assert {h.split(" ×")[0] for h in heard} & DOG_LABELS, meta
    assert pg.locator("#live-stop").is_hidden() and pg.locator("#error").is_hidden()
    assert pg.locator("#listen-label").inner_text() == "Listen"
    # a stream the server refuses ends with its error on show, not a hang
    pg.evaluate("state.model = 'no-such-model'")
    pg.click("#listen-btn")
    pg.wait_for_selector("#error:not([hidden])")
    pg.wait_for_function("document.querySelector('#live-meta').textContent.startsWith('failed')")
    assert pg.locator("#live-stop").is_hidden()
    ctx.close()


def test_record_classifies_the_microphone(mic_browser, site):
    """Classify view → Record, then Stop: the browser's own recording (WebM/Opus, the microphone as it is, its
    speech processing off) is uploaded and classified; the barks come out as a dog."""
    ctx, pg = open_page(mic_browser, site)
    try:
        answers = []
        pg.on("response", lambda r: answers.append((r.url, r.status)))
        pg.click("#record-btn")
        pg.wait_for_function("document.querySelector('#record-label').textContent === 'Stop · 4 s'")
        pg.click("#record-btn")
        pg.wait_for_selector("#result:not([hidden])", timeout=60_000)
        pg.wait_for_function("document.querySelectorAll('#chart .bar-label').length > 0")
        assert pg.locator("#error").is_hidden(), pg.locator("#error").inner_text()
        assert pg.locator("#result-title").inner_text().startswith("recording.")
        assert set(pg.locator("#chart .bar-label").all_inner_texts()[:3]) & DOG_LABELS
        assert pg.locator("#record-label").inner_text() == "Record"
        assert [s for u, s in answers if "/v1/predict" in u] == [200]
    finally:
        ctx.close()


def test_listen_without_microphone_shows_error(page):
    page.click("#listen-btn")
    page.wait_for_selector("#error:not([hidden])")
    assert "MicrophoneError" in page.locator("#error").inner_text()
    assert page.locator("#live-stop").is_hidden()


def test_file_over_upload_cap_streams_through_websocket(browser, tmp_path):
    import soxr

    audio = dog_audio(range(8))  # 40 s: 1.28 MB as 16-bit WAV, over the 0.25 MB cap
    wav = tmp_path / "long-dogs.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    stereo = soxr.resample(audio, 16000, 44100)
    flac = tmp_path / "long-dogs.flac"  # not WAV PCM: its bytes decoded by the server, or else by the browser
    sf.write(flac, np.stack([stereo, 0.5 * stereo], axis=1), 44100, subtype="PCM_16")
    assert flac.stat().st_size > 0.25 * 2**20
    with running_server(tmp_path, max_upload_mb=0.25, api_keys=["k3y"]) as base:
        ctx, pg = open_page(browser, base, key="k3y")  # the page's key goes to the socket as ?api_key=
        answers, sockets = [], []
        pg.on("response", lambda r: answers.append((r.url, r.status)))
        pg.on("websocket", lambda ws: sockets.append(ws.url))
        for path, server_decodes in ((wav, True), (flac, True), (flac, False)):
            # the third time as with a server without the media extra: the browser decodes the FLAC itself
            pg.evaluate(f"state.decodesContainers = {str(server_decodes).lower()}")
            pg.set_input_files("#file-input", str(path))
            pg.wait_for_function(f"document.querySelector('#live-title').textContent === '{path.name}'")
            pg.wait_for_selector("#live-lanes .live-event", timeout=60_000)
            pg.wait_for_selector("#live-summary:not([hidden])", timeout=60_000)
            assert pg.locator("#error").is_hidden(), pg.locator("#error").inner_text()
            assert "40.0 s of audio" in pg.locator("#live-summary-meta").inner_text()
            assert set(pg.locator("#live-lanes .lane-name").all_inner_texts()) & DOG_LABELS
            assert set(pg.locator("#live-summary-chart .bar-label").all_inner_texts()) & DOG_LABELS
            width = pg.locator("#live-progress div").evaluate("e => e.style.width")
            assert width == "100%", width
            assert pg.locator("#result").is_hidden()
        # the page read the cap from /healthz and streamed without uploading first
        assert [s for u, s in answers if "/v1/predict" in u] == []
        assert len(sockets) == 3 and all("api_key=k3y" in u for u in sockets), sockets
        assert "format=s16le" in sockets[0] and "rate=16000" in sockets[0] and "channels=1" in sockets[0]
        assert "format=file" in sockets[1] and "rate=" not in sockets[1]  # the FLAC's bytes as they are
        assert "format=s16le" in sockets[2] and "rate=16000" in sockets[2]  # decoded and resampled here
        pg.screenshot(path=str(ARTIFACTS / "web_stream_file.png"), full_page=True)
        ctx.close()


def choose_model_to_adapt(pg, name: str) -> None:
    """Train view, "Adapt a model" card: `name` chosen once the page lists it."""
    pg.click("#tab-train")
    pg.wait_for_function(f"[...document.querySelectorAll('#adapt-model option')].some(o => o.value === {name!r})")
    pg.select_option("#adapt-model", name)


def test_adapt_a_model_to_a_new_microphone_in_the_page(browser, digits_bundle, tmp_path):
    """Train view → "Adapt a model": recordings of a voice through a microphone the model never heard (one file
    that is not audio among them) adapt the digit spotter under a new name, which the page reports, lists and
    selects; classifying a held-out take with it then names a digit."""
    root = tmp_path / "site"
    shutil.copytree(digits_bundle, root / "models" / "digits")
    recordings = tmp_path / "mic"
    recordings.mkdir()
    for digit in (1, 3, 7, 9):
        for index in range(30, 36):
            thin_microphone(fsdd_take("theo", digit, index), recordings / f"{digit}_theo_{index}.wav")
    (recordings / "notes.wav").write_bytes(b"RIFF....WAVEnot audio")
    held_out = tmp_path / "7_theo_44.wav"
    thin_microphone(fsdd_take("theo", 7, 44), held_out)
    with running_server(root) as base:
        ctx, pg = open_page(browser, base)
        try:
            choose_model_to_adapt(pg, "digits")
            pg.set_input_files("#adapt-files", [str(p) for p in sorted(recordings.iterdir())])
            assert pg.locator("#adapt-file-label").inner_text().startswith("25 recordings")
            pg.fill("#adapt-name", "digits-mic")
            pg.click("#adapt-submit")
            pg.wait_for_selector("#adapt-result:not([hidden])", timeout=60_000)
            text = pg.locator("#adapt-result").inner_text()
            assert text.startswith("digits-mic: 6 layers adapted on 24 recordings") and "Skipped 1: notes.wav" in text
            pg.wait_for_function("document.querySelector('#model-select').value === 'digits-mic'")
            assert (root / "models" / "digits-mic" / "model.onnx").is_file()
            pg.screenshot(path=str(ARTIFACTS / "web_adapt.png"), full_page=True)
            pg.click("#tab-classify")
            pg.set_input_files("#file-input", str(held_out))
            pg.wait_for_function("['1', '3', '7', '9']"
                                 ".includes(document.querySelector('#chart .bar-label')?.textContent)")
            pg.screenshot(path=str(ARTIFACTS / "web_adapted.png"), full_page=True)
        finally:
            ctx.close()


@pytest.fixture
def voice_browser(playwright, tmp_path):
    """Chromium whose microphone plays (in a loop) theo's unseen takes of the spotter's digits through a
    microphone chain the model never heard, 0.3 s of silence after each (the takes are in tmp_path/takes)."""
    parts, takes = [], tmp_path / "takes"
    takes.mkdir()
    for digit in (1, 3, 7, 9):
        for index in (36, 37):
            thin_microphone(fsdd_take("theo", digit, index), takes / f"{digit}_theo_{index}.wav")
            y, sr = sf.read(takes / f"{digit}_theo_{index}.wav", dtype="float32")
            parts += [y, np.zeros(int(0.3 * sr), np.float32)]
    wav = tmp_path / "voice.wav"
    sf.write(wav, np.concatenate(parts), sr, subtype="PCM_16")
    yield from fake_microphone(playwright, wav)


def test_adapt_to_a_voice_recorded_in_the_page(voice_browser, digits_bundle, tmp_path):
    """"Adapt a model" → Record: takes of the new voice recorded from the microphone add up (Clear empties them),
    go up as the browser's own recordings (WebM/Opus) and adapt the spotter; the card names them and counts their
    seconds, and the statistics they give are those of the microphone's takes as files, not of the takes as
    recorded (the browser's speech processing is off)."""
    import json

    import earshot

    root = tmp_path / "site"
    shutil.copytree(digits_bundle, root / "models" / "digits")
    with running_server(root) as base:
        ctx, pg = open_page(voice_browser, base)
        try:
            choose_model_to_adapt(pg, "digits")

            def record(seconds: int, count: int) -> None:
                pg.click("#adapt-record")
                pg.wait_for_function(f"document.querySelector('#adapt-record-label').textContent"
                                     f" === 'Stop · {seconds} s'", timeout=30_000)
                pg.click("#adapt-record")
                pg.wait_for_function(f"document.querySelector('#adapt-file-label').textContent"
                                     f".startsWith('{count} recording')")
                assert pg.locator("#adapt-record-label").inner_text() == "Record"

            record(1, 1)
            pg.click("#adapt-clear")
            assert pg.locator("#adapt-file-label").inner_text().startswith("Drop recordings")
            assert pg.locator("#adapt-clear").is_hidden()
            record(3, 1)
            record(2, 2)
            pg.fill("#adapt-name", "digits-voice")
            pg.click("#adapt-submit")
            pg.wait_for_selector("#adapt-result:not([hidden])", timeout=60_000)
            assert pg.locator("#error").is_hidden(), pg.locator("#error").inner_text()
            text = pg.locator("#adapt-result").inner_text()
            assert text.startswith("digits-voice: 6 layers adapted on 2 recordings"), text
            assert "Skipped" not in text
            pg.wait_for_function("document.querySelector('#model-select').value === 'digits-voice'")
            pg.screenshot(path=str(ARTIFACTS / "web_adapt_record.png"), full_page=True)
        finally:
            ctx.close()
    card = json.loads((root / "models" / "digits-voice" / "card.json").read_text())
    a = card["adaptation"]
    assert a["files"] == 2 and a["skipped"] == []
    assert 3.0 <= a["seconds"] <= 9.0, a["seconds"]  # stopped at "3 s" and "2 s" on the button: at least 2.5 + 1.5
    # the first layer (the log-mel's level and spread) moved as the microphone's takes as files move it, not as
    # the same takes recorded plainly do: the recording carried the microphone's chain
    takes = sorted((tmp_path / "takes").glob("*.wav"))
    ref = {}
    plain = [fsdd_take("theo", int(p.name[0]), int(p.stem[-2:])) for p in takes]
    for name, files in (("thin", takes), ("plain", plain)):
        out = earshot.adapt(digits_bundle, files, tmp_path / f"ref-{name}")
        ref[name] = json.loads((out / "card.json").read_text())["adaptation"]["layer_mean_shift"][0]
    shift = a["layer_mean_shift"][0]
    assert abs(shift - ref["thin"]) < abs(shift - ref["plain"]), (shift, ref)
    assert abs(shift - ref["thin"]) < 0.15, (shift, ref)
