// earshot page, live part: /v1/stream (Listen, long files). Loaded after app.js, whose helpers it uses
// ($, api, state, showError, fmtTime, laneRow, RAW_MIC...); app.js calls toggleListen, streamFile and loadLimits.
// Listen: microphone → AudioWorklet (static/listen-worklet.js: mono, s16le, 0.1 s blocks at the context's rate)
// → binary WebSocket frames. Long files (over the upload cap): WAV PCM read in slices as it is; any other file's
// bytes sent as they are (`format=file`) when the server decodes containers (`decodes_containers` in /healthz),
// else decoded and resampled by the browser; sent faster than real time with `bufferedAmount` bounded.
// The server answers with ready / segment / event_start / event / summary (or error) records.
const LIVE_SPAN = 30; // seconds shown by the scrolling lane while listening
const LIVE_LANES = 8; // labels with a lane at most
const MAX_BUFFERED = 1 << 18; // bytes queued on the socket before a file stream waits for the server
const FILE_FRAME = 1 << 15; // bytes per frame when a file is streamed (PCM, or a file's own bytes)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function streamUrl(params) {
  const key = localStorage.getItem(KEY);
  if (key) params.set("api_key", key);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/v1/stream?${params}`;
}

function streamParams(rate, channels, format, title) {
  const p = new URLSearchParams({ format, top_k: $("#topk-select").value });
  if (rate) { // a file's bytes carry their own rate and channels
    p.set("rate", String(rate));
    p.set("channels", String(channels));
  }
  if (title) p.set("title", title);
  if (state.model) p.set("model", state.model);
  // custom classifiers (keyword models) judge windows as long as they were trained on; the tagger's is 1 s
  const info = (state.models || {})[state.model];
  const win = info && info.source === "bundle" && info.window_seconds ? Number(info.window_seconds) : 1;
  p.set("window", String(win));
  p.set("hop", String(Math.round((win / 2) * 1000) / 1000));
  return p;
}

function liveActive() { return state.live && !state.live.done; }

function startLiveView(mode, title) {
  clearError();
  $("#empty-state").hidden = true;
  $("#result").hidden = true;
  $("#similar").hidden = true;
  $("#live").hidden = false;
  $("#live-title").textContent = title;
  $("#live-meta").textContent = mode === "mic" ? "asking for the microphone…" : "reading…";
  $("#live-chart").innerHTML = "";
  $("#live-chart").hidden = false;
  $("#live-summary").hidden = true;
  $("#live-summary-chart").innerHTML = "";
  $("#live-stop").hidden = false;
  $("#live-stop").disabled = false;
  $("#live-busy").hidden = false;
  $("#live-level").hidden = mode !== "mic";
  $("#live-progress").hidden = mode !== "file";
  $("#live-progress div").style.width = "0";
  const player = $("#live-player");
  player.hidden = true;
  if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
  player.removeAttribute("src");
  const s = {
    mode, title, ws: null, ready: null, summary: null, error: null, done: false, stopping: false,
    sent: 0, processed: 0, duration: null, events: [], segments: 0, started: performance.now(), dirty: true,
  };
  state.live = s;
  renderLane(s);
  requestAnimationFrame(() => liveFrame(s));
  return s;
}

// the lane and axis follow the audio: every frame while something changed, at 10 Hz while listening
function liveFrame(s) {
  if (state.live !== s) return;
  const now = performance.now();
  if ((s.dirty && (s.done || now - (s.drawn || 0) > 100)) || (!s.done && s.mode === "mic" && now - (s.drawn || 0) > 100)) {
    s.dirty = false;
    s.drawn = now;
    renderLane(s);
    renderLiveMeta(s);
  }
  const player = $("#live-player");
  const cursor = $("#live-cursor");
  if (cursor && s.mode === "file" && s.duration) {
    cursor.style.left = Math.min(100, (100 * player.currentTime) / s.duration) + "%";
    cursor.classList.toggle("on", player.currentTime > 0);
  }
  if (!s.done || s.mode === "file") requestAnimationFrame(() => liveFrame(s));
}

function laneWindow(s) {
  if (s.mode === "file") return { t0: 0, span: s.duration || Math.max(s.processed, 1) };
  const right = Math.max(s.sent, s.processed, s.summary ? s.summary.duration || 0 : 0);
  return { t0: Math.max(0, right - LIVE_SPAN), span: LIVE_SPAN };
}

function renderLane(s) {
  const box = $("#live-lanes");
  const { t0, span } = laneWindow(s);
  const upTo = s.summary ? s.summary.duration || s.processed : s.processed;
  const lanes = new Map(); // label → events in view, lanes in order of first appearance
  for (const e of s.events) {
    const end = e.end == null ? upTo : e.end;
    if (end < t0) continue;
    if (!lanes.has(e.label)) lanes.set(e.label, []);
    lanes.get(e.label).push(e);
  }
  // keep the lanes with the latest activity
  const shown = [...lanes.entries()]
    .map(([label, evs]) => [label, evs.reduce((m, e) => Math.max(m, e.start), 0)])
    .sort((a, b) => b[1] - a[1])
    .slice(0, LIVE_LANES);
  const keep = new Set(shown.map(([label]) => label));
  box.innerHTML = "";
  for (const [label, evs] of lanes) {
    if (!keep.has(label)) continue;
    const lane = laneRow(label);
    for (const e of evs) {
      const end = e.end == null ? Math.max(upTo, e.start) : e.end;
      const a = Math.max(e.start, t0);
      const bar = document.createElement("div");
      bar.className = "event live-event" + (e.end == null ? " open" : "");
      bar.style.left = (100 * (a - t0)) / span + "%";
      bar.style.width = Math.max(0.4, Math.min(100, (100 * (end - a)) / span)) + "%";
      bar.style.opacity = 0.35 + 0.6 * (e.score || 0);
      bar.title = e.end == null
        ? `${e.label} from ${fmtTime(e.start)} (${((e.score || 0) * 100).toFixed(0)}%)…`
        : `${e.label} ${fmtTime(e.start)}–${fmtTime(e.end)} (${((e.score || 0) * 100).toFixed(0)}%)`;
      lane.appendChild(bar);
    }
    box.appendChild(lane);
  }
  if (!box.children.length) {
    box.innerHTML = `<p class="meta live-empty">${s.done ? "No events." : "No events yet."}</p>`;
  }
  if (s.mode === "file" && s.duration) {
    const cursor = document.createElement("div");
    cursor.className = "cursor";
    cursor.id = "live-cursor";
    box.appendChild(cursor);
  }
  const axis = $("#live-axis");
  axis.innerHTML = "";
  for (let i = 0; i <= 4; i++) {
    const t = document.createElement("span");
    t.textContent = fmtTime(t0 + (span * i) / 4);
    axis.appendChild(t);
  }
  if (s.mode === "file" && s.duration) {
    $("#live-progress div").style.width = Math.min(100, (100 * upTo) / s.duration) + "%";
  }
}

function renderLiveMeta(s) {
  const parts = [];
  if (s.ready && s.ready.model) parts.push(s.ready.model);
  if (s.summary) {
    parts.unshift(s.summary.stopped === "error" ? "failed" : "done");
    parts.push(fmtTime(s.summary.duration));
  } else if (s.error) {
    parts.unshift("failed");
  } else if (s.done) {
    parts.unshift("closed");
  } else if (!s.ws || !s.ready) {
    parts.unshift(s.ws ? "connecting…" : s.mode === "mic" ? "asking for the microphone…" : "decoding…");
  } else if (s.mode === "mic") {
    parts.unshift(s.stopping ? "finishing…" : "listening");
    parts.push(fmtTime(s.sent));
    const lag = s.sent - s.processed;
    if (s.processed && lag > 3) parts.push(`${lag.toFixed(0)} s behind`);
  } else {
    const secs = (performance.now() - s.started) / 1000;
    parts.unshift(s.stopping ? "finishing…" : "streaming");
    parts.push(`${fmtTime(s.processed)} of ${fmtTime(s.duration)}`);
    if (s.processed && secs > 0.5) parts.push(`${(s.processed / secs).toFixed(1)}× real time`);
  }
  if (s.note) parts.push(s.note);
  $("#live-meta").textContent = parts.join(" · ");
}

function barRow() {
  const row = document.createElement("div");
  row.className = "bar-row";
  row.innerHTML = '<div class="bar-text"><span class="bar-label"></span><span class="bar-id"></span></div>'
    + '<div class="bar-track"><div class="bar-fill"></div></div><div class="bar-value"></div>';
  return row;
}

// label bars updated in place, so the widths glide from one window to the next
function renderLiveBars(box, rec) {
  const labels = rec.labels || [];
  while (box.children.length > labels.length || (box.firstElementChild && !box.firstElementChild.classList.contains("bar-row"))) {
    box.lastElementChild.remove();
  }
  while (box.children.length < labels.length) box.appendChild(barRow());
  labels.forEach((label, i) => {
    const row = box.children[i];
    const p = (rec.probabilities || [])[i] || 0;
    row.querySelector(".bar-label").textContent = label;
    row.querySelector(".bar-id").textContent = (rec.labels_info && rec.labels_info[i]) || "";
    row.querySelector(".bar-fill").style.width = Math.max(1, p * 100) + "%";
    row.querySelector(".bar-value").textContent = (p * 100).toFixed(1) + "%";
  });
  if (!labels.length) box.innerHTML = '<p class="meta">No label above the threshold.</p>';
}

function onRecord(s, rec) {
  s.dirty = true;
  switch (rec.type) {
    case "ready":
      s.ready = rec;
      if (s.onReady) s.onReady();
      break;
    case "segment":
      s.segments++;
      s.processed = Math.max(s.processed, rec.end || 0);
      renderLiveBars($("#live-chart"), rec);
      break;
    case "event_start":
      s.events.push({ label: rec.label, start: rec.start, end: null, score: rec.score });
      break;
    case "event": {
      const open = s.events.find((e) => e.end == null && e.label === rec.label && Math.abs(e.start - rec.start) < 1e-3)
        || s.events.find((e) => e.end == null && e.label === rec.label);
      if (open) Object.assign(open, { start: rec.start, end: rec.end, score: rec.score });
      else s.events.push({ label: rec.label, start: rec.start, end: rec.end, score: rec.score });
      break;
    }
    case "summary":
      s.summary = rec;
      for (const e of s.events) if (e.end == null) e.end = rec.duration;
      showSummary(s, rec);
      finishLive(s);
      if (rec.error) showError({ type: rec.error.type || "StreamError", message: rec.error.message || "the stream failed" });
      break;
    case "error": {
      const err = rec.error || {};
      s.error = err;
      if (err.type === "AuthError" || err.reason === "unauthorized") $("#keybar").hidden = false;
      if (!s.summary || !s.summary.error) {
        showError({ type: err.type || "StreamError", message: err.message || "the server ended the stream" });
      }
      finishLive(s);
      break;
    }
    default:
      break;
  }
}

function showSummary(s, rec) {
  const parts = [`${fmtTime(rec.duration)} of audio`, `${rec.segments} windows`, `${rec.events} events`];
  // what was heard, most often first (event_counts): "heard yes ×3, no, stop"
  const heard = Object.entries(rec.event_counts || {});
  if (heard.length) {
    const shown = heard.slice(0, 8).map(([label, n]) => (n > 1 ? `${label} ×${n}` : label));
    parts.push(`heard ${shown.join(", ")}${heard.length > 8 ? ", …" : ""}`);
  }
  if (rec.stopped) parts.push(`stopped: ${rec.stopped}`);
  $("#live-summary-meta").textContent = parts.join(" · ");
  renderLiveBars($("#live-summary-chart"), rec);
  $("#live-summary").hidden = false;
  $("#live-chart").hidden = true; // the last window's labels give way to the whole stream's
}

// open the socket; resolves once the server said ready (or, should it stay silent, 5 s after the socket opened)
function connectStream(s, params) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const go = () => { if (!settled) { settled = true; resolve(); } };
    const ws = new WebSocket(streamUrl(params));
    ws.binaryType = "arraybuffer";
    s.ws = ws;
    s.dirty = true;
    s.onReady = go;
    ws.onopen = () => setTimeout(go, 5000);
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      let rec;
      try { rec = JSON.parse(ev.data); } catch (e) { return; }
      if (rec && state.live === s) onRecord(s, rec);
    };
    ws.onclose = (ev) => {
      if (state.live === s && !s.summary && !s.error) {
        const why = ev.reason ? `: ${ev.reason}` : "";
        const message = s.ready || ev.code !== 1006
          ? `the live stream closed before its summary (code ${ev.code}${why})`
          : `the server refused the live stream at /v1/stream (code ${ev.code}${why})`;
        s.error = { type: "StreamError", message };
        showError(s.error);
      }
      finishLive(s);
      if (!settled) { settled = true; reject(s.error || new Error("closed")); }
    };
  });
}

function finishLive(s) {
  if (s.done) return;
  s.done = true;
  s.dirty = true;
  stopCapture(s);
  clearTimeout(s.endTimer);
  $("#live-busy").hidden = true;
  $("#live-stop").hidden = true;
  $("#live-level").hidden = true;
  $("#listen-btn").classList.remove("recording");
  $("#listen-label").textContent = "Listen";
  if (s.ws && s.ws.readyState <= 1 && !s.summary) {
    try { s.ws.close(); } catch (e) { /* closing anyway */ }
  }
  renderLane(s);
  renderLiveMeta(s);
}

function stopCapture(s) {
  if (s.node) { try { s.node.port.postMessage("stop"); s.node.disconnect(); } catch (e) { /* gone */ } s.node = null; }
  if (s.stream) { s.stream.getTracks().forEach((t) => t.stop()); s.stream = null; }
  if (s.ctx) { s.ctx.close().catch(() => {}); s.ctx = null; }
}

// Stop: no more audio; ask the server for its summary ({"type":"end"}) and wait for it
function stopLive() {
  const s = state.live;
  if (!s || s.done || s.stopping) return;
  s.stopping = true;
  s.dirty = true;
  $("#live-stop").disabled = true;
  stopCapture(s);
  if (s.ws && s.ws.readyState === 1) {
    s.ws.send(JSON.stringify({ type: "end" }));
    s.endTimer = setTimeout(() => {
      if (!s.done) {
        s.error = { type: "StreamError", message: "the server sent no summary within 30 s of the end" };
        showError(s.error);
        finishLive(s);
      }
    }, 30000);
  } else {
    finishLive(s);
  }
}

// an AudioContext at 16 kHz when the browser can feed the microphone into one (Chrome resamples), else at the
// device's rate (the server resamples); either way `rate` tells the server which
async function openCapture(stream) {
  let last;
  for (const opts of [{ sampleRate: 16000 }, {}]) {
    let ctx;
    try {
      ctx = new AudioContext(opts);
      await ctx.audioWorklet.addModule("/static/listen-worklet.js");
      const source = ctx.createMediaStreamSource(stream);
      if (ctx.state !== "running") await Promise.race([ctx.resume(), sleep(2000)]);
      return { ctx, source };
    } catch (e) {
      last = e;
      if (ctx) ctx.close().catch(() => {});
    }
  }
  throw last;
}

async function toggleListen() {
  if (liveActive()) { stopLive(); return; }
  if (state.recorder) state.recorder.stop();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
    showError({ type: "MicrophoneError", message: "this browser cannot capture audio here (needs https or localhost)" });
    return;
  }
  const s = startLiveView("mic", "Listening");
  $("#listen-btn").classList.add("recording");
  $("#listen-label").textContent = "Stop";
  try {
    s.stream = await navigator.mediaDevices.getUserMedia({ audio: RAW_MIC });
  } catch (e) {
    const refused = e && (e.name === "NotAllowedError" || e.name === "SecurityError");
    s.error = {
      type: "MicrophoneError",
      message: refused ? "microphone access was refused — allow it for this site and try again"
        : `microphone not available (${(e && (e.message || e.name)) || e})`,
    };
    showError(s.error);
    finishLive(s);
    return;
  }
  if (s.done) { stopCapture(s); return; } // stopped while the browser asked
  let capture;
  try {
    capture = await openCapture(s.stream);
  } catch (e) {
    s.error = { type: "MicrophoneError", message: "could not start audio capture: " + (e.message || e) };
    showError(s.error);
    finishLive(s);
    return;
  }
  s.ctx = capture.ctx;
  const rate = s.ctx.sampleRate;
  const pending = []; // blocks captured before the server is ready
  const node = new AudioWorkletNode(s.ctx, "earshot-listen", {
    numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { blockSeconds: 0.1 },
  });
  s.node = node;
  node.port.onmessage = (e) => {
    const { pcm, rms } = e.data;
    const level = $("#live-level span");
    if (level) level.style.width = Math.min(100, Math.sqrt(rms) * 140) + "%";
    if (s.done || s.stopping) return;
    s.sent += pcm.byteLength / 2 / rate;
    if (s.ready && s.ws && s.ws.readyState === 1) {
      while (pending.length) s.ws.send(pending.shift());
      s.ws.send(pcm);
    } else {
      pending.push(pcm);
    }
  };
  const mute = s.ctx.createGain(); // the worklet is pulled through a silent path to the output
  mute.gain.value = 0;
  capture.source.connect(node);
  node.connect(mute).connect(s.ctx.destination);
  try {
    await connectStream(s, streamParams(rate, 1, "s16le", "microphone"));
  } catch (e) {
    return; // shown by the socket's close
  }
  if (!s.ready) s.ready = { model: state.model };
  s.dirty = true;
}

// Long files: streamed instead of uploaded.
function toS16(f32) {
  const out = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) {
    const v = Math.max(-1, Math.min(1, f32[i]));
    out[i] = v < 0 ? v * 32768 : v * 32767;
  }
  return out.buffer;
}

// WAV with 16-bit integer or 32-bit float PCM: its data chunk is sent as it is, read in slices (any length, little
// memory); null for anything else
async function wavSource(file) {
  const head = new DataView(await file.slice(0, 1 << 16).arrayBuffer());
  const tag = (o) => String.fromCharCode(head.getUint8(o), head.getUint8(o + 1), head.getUint8(o + 2), head.getUint8(o + 3));
  if (head.byteLength < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") return null;
  let fmt = null;
  let off = 12;
  while (off + 8 <= head.byteLength) {
    const id = tag(off);
    const size = head.getUint32(off + 4, true);
    const body = off + 8;
    if (id === "fmt " && body + 16 <= head.byteLength) {
      let code = head.getUint16(body, true);
      if (code === 0xfffe && size >= 26 && body + 26 <= head.byteLength) code = head.getUint16(body + 24, true);
      fmt = {
        code, channels: head.getUint16(body + 2, true), rate: head.getUint32(body + 4, true),
        align: head.getUint16(body + 12, true), bits: head.getUint16(body + 14, true),
      };
    } else if (id === "data") {
      if (!fmt) return null;
      const format = fmt.code === 1 && fmt.bits === 16 ? "s16le" : fmt.code === 3 && fmt.bits === 32 ? "f32le" : null;
      if (!format || !fmt.channels || !fmt.rate || fmt.align !== (fmt.bits / 8) * fmt.channels) return null;
      let end = size === 0 || size === 0xffffffff ? file.size : Math.min(file.size, body + size);
      end -= (end - body) % fmt.align;
      const frame = Math.max(fmt.align, FILE_FRAME - (FILE_FRAME % fmt.align));
      const bytesPerSecond = fmt.rate * fmt.align;
      return {
        rate: fmt.rate, channels: fmt.channels, format, bytesPerSecond,
        duration: (end - body) / bytesPerSecond,
        chunks: () => fileFrames(file, body, end, frame),
      };
    }
    off = body + size + (size & 1);
  }
  return null;
}

// any other file, when the server decodes containers: its bytes as they are, decoded by the server as they come
// (any length and format, nothing decoded here, about 1 MB read at a time); the duration is the player's
async function fileSource(file, player) {
  const duration = await mediaDuration(player);
  return {
    rate: null, channels: null, format: "file", bytesPerSecond: duration ? file.size / duration : null, duration,
    chunks: () => fileFrames(file, 0, file.size, FILE_FRAME),
  };
}

// bytes [start, end) of a file in frames of `frame` bytes, read about 32 frames (1 MB) at a time
async function* fileFrames(file, start, end, frame) {
  const piece = frame * 32;
  for (let a = start; a < end; a += piece) {
    const buf = await file.slice(a, Math.min(end, a + piece)).arrayBuffer();
    for (let b = 0; b < buf.byteLength; b += frame) yield buf.slice(b, Math.min(buf.byteLength, b + frame));
  }
}

// the player's duration once it has read the file's header (null when it cannot tell within 3 s)
function mediaDuration(player) {
  const known = () => (Number.isFinite(player.duration) && player.duration > 0 ? player.duration : null);
  if (known()) return Promise.resolve(known());
  return new Promise((resolve) => {
    const done = () => resolve(known());
    player.addEventListener("loadedmetadata", done, { once: true });
    player.addEventListener("error", done, { once: true });
    setTimeout(done, 3000);
  });
}

// anything the browser can decode: decoded and resampled to 16 kHz by an OfflineAudioContext, averaged to mono
async function decodedSource(file) {
  const ctx = new OfflineAudioContext(1, 1, 16000);
  const audio = await ctx.decodeAudioData(await file.arrayBuffer());
  const n = audio.length;
  let mono = audio.getChannelData(0);
  if (audio.numberOfChannels > 1) {
    mono = new Float32Array(n);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const ch = audio.getChannelData(c);
      for (let i = 0; i < n; i++) mono[i] += ch[i] / audio.numberOfChannels;
    }
  }
  const step = FILE_FRAME / 2;
  return {
    rate: audio.sampleRate, channels: 1, format: "s16le", bytesPerSecond: audio.sampleRate * 2,
    duration: n / audio.sampleRate,
    async *chunks() { for (let i = 0; i < n; i += step) yield toS16(mono.subarray(i, i + step)); },
  };
}

async function streamFile(file, why) {
  if (liveActive()) stopLive();
  const s = startLiveView("file", file.name || "recording");
  s.note = why;
  const player = $("#live-player");
  player.src = URL.createObjectURL(file);
  player.hidden = false;
  let src;
  try {
    src = (await wavSource(file)) || (state.decodesContainers ? await fileSource(file, player) : await decodedSource(file));
  } catch (e) {
    s.error = { type: "AudioError", message: `the browser could not decode ${file.name || "the file"} (${(e && e.message) || e})` };
    showError(s.error);
    finishLive(s);
    return;
  }
  if (s.done) return;
  s.duration = src.duration;
  s.dirty = true;
  try {
    await connectStream(s, streamParams(src.rate, src.channels, src.format, file.name));
  } catch (e) {
    return; // shown by the socket's close
  }
  for await (const chunk of src.chunks()) {
    while (!s.done && !s.stopping && s.ws.bufferedAmount > MAX_BUFFERED) await sleep(10);
    if (s.done || s.stopping || s.ws.readyState !== 1) break;
    s.ws.send(chunk);
    if (src.bytesPerSecond) s.sent += chunk.byteLength / src.bytesPerSecond;
  }
  if (!s.done && !s.stopping) stopLive();
}

// the server's upload cap, when /healthz tells it (`max_upload_bytes`); otherwise a 413 answer shows it
async function loadLimits() {
  try {
    const resp = await fetch("/healthz");
    const body = await resp.json();
    state.maxUpload = Number(body.max_upload_bytes) || null;
    state.decodesContainers = Boolean(body.decodes_containers);
  } catch (e) {
    state.maxUpload = null;
    state.decodesContainers = false;
  }
}

function seekLive(ev) {
  const s = state.live;
  if (!s || s.mode !== "file" || !s.duration) return;
  const r = $("#live-lanes").getBoundingClientRect();
  const player = $("#live-player");
  player.currentTime = Math.max(0, ((ev.clientX - r.left) / r.width) * s.duration);
  player.play().catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  $("#listen-btn").onclick = toggleListen;
  $("#live-stop").onclick = stopLive;
  $("#live-lanes").addEventListener("click", seekLive);
  loadLimits();
});
