// earshot web page: plain JS, no dependencies, talks to the /v1 REST API of the same server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { model: null, audioUrl: null, result: null, jobTimer: null, recorder: null };
const KEY = "earshot.apiKey";

// ------------------------------------------------------------------ API
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = localStorage.getItem(KEY);
  if (key) headers.set("X-API-Key", key);
  let resp;
  try {
    resp = await fetch(path, { ...options, headers });
  } catch (e) {
    throw { type: "NetworkError", message: "the server did not answer (" + e.message + ")" };
  }
  const isJson = (resp.headers.get("content-type") || "").includes("json");
  const body = isJson ? await resp.json().catch(() => null) : null;
  if (!resp.ok) {
    if (resp.status === 401) $("#keybar").hidden = false;
    const err = (body && body.error) || {};
    throw {
      status: resp.status,
      type: err.type || "HTTP " + resp.status,
      reason: err.reason,
      message: err.message || resp.statusText,
      retryAfter: resp.headers.get("Retry-After"),
    };
  }
  return body;
}

function showError(err) {
  const title = err.status ? `${err.type} (${err.status})` : err.type || "Error";
  let msg = err.message || String(err);
  if (err.retryAfter) msg += ` — retry in ${err.retryAfter} s`;
  $("#error-title").textContent = title;
  $("#error-message").textContent = msg;
  $("#error").hidden = false;
}
function clearError() { $("#error").hidden = true; }

// ------------------------------------------------------------------ views, theme, key
function showView(name) {
  for (const tab of document.querySelectorAll(".tab[data-view]")) {
    const on = tab.dataset.view === name;
    tab.classList.toggle("active", on);
    tab.setAttribute("aria-selected", on);
  }
  $("#view-classify").hidden = name !== "classify";
  $("#view-train").hidden = name !== "train";
  if (name === "train") loadJobs();
}

function initChrome() {
  for (const tab of document.querySelectorAll(".tab[data-view]")) tab.onclick = () => showView(tab.dataset.view);
  const saved = localStorage.getItem("earshot.theme");
  if (saved) document.documentElement.dataset.theme = saved;
  $("#theme-btn").onclick = () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    document.documentElement.dataset.theme = dark ? "light" : "dark";
    localStorage.setItem("earshot.theme", document.documentElement.dataset.theme);
  };
  $("#key-btn").onclick = () => { $("#keybar").hidden = !$("#keybar").hidden; $("#key-input").focus(); };
  $("#key-save").onclick = () => {
    localStorage.setItem(KEY, $("#key-input").value.trim());
    $("#keybar").hidden = true;
    clearError();
    boot();
  };
  $("#key-clear").onclick = () => { localStorage.removeItem(KEY); $("#key-input").value = ""; };
  $("#error-close").onclick = clearError;
}

// ------------------------------------------------------------------ models & samples
async function loadModels(select) {
  const data = await api("/v1/models");
  const sel = $("#model-select");
  const current = select || sel.value || data.default;
  sel.innerHTML = "";
  state.models = Object.fromEntries(data.models.map((m) => [m.name, m]));
  for (const m of data.models) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = m.name + (m.source === "bundle" ? " (custom)" : "");
    opt.title = m.description || "";
    sel.appendChild(opt);
  }
  sel.value = data.models.some((m) => m.name === current) ? current : data.default;
  state.model = sel.value;
  const adaptSel = $("#adapt-model");  // the models one may adapt: this server's bundles (the tagger is refused)
  const keep = adaptSel.value;
  adaptSel.innerHTML = "";
  for (const m of data.models.filter((m) => m.source === "bundle")) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = m.name;
    adaptSel.appendChild(opt);
  }
  if (keep && [...adaptSel.options].some((o) => o.value === keep)) adaptSel.value = keep;
}

async function loadSamples() {
  const data = await api("/v1/samples");
  const list = $("#gallery-list");
  list.innerHTML = "";
  for (const s of data.samples) {
    const b = document.createElement("button");
    b.className = "chip";
    b.type = "button";
    b.textContent = s.name.replace(/\.[^.]+$/, "");
    b.title = s.name;
    b.onclick = async () => {
      try {
        const key = localStorage.getItem(KEY);
        const resp = await fetch(s.url, { headers: key ? { "X-API-Key": key } : {} });
        if (!resp.ok) throw { status: resp.status, type: "SampleError", message: "could not fetch " + s.name };
        const blob = await resp.blob();
        classify(new File([blob], s.name.split("/").pop(), { type: blob.type }));
      } catch (e) { showError(e); }
    };
    list.appendChild(b);
  }
  $("#gallery").hidden = data.samples.length === 0;
}

// ------------------------------------------------------------------ classify
async function classify(file) {
  clearError();
  if (state.maxUpload && file.size > state.maxUpload) {  // over the server's upload cap: streamed instead
    streamFile(file, `over the ${(state.maxUpload / 1048576).toFixed(0)} MB upload limit, streamed`);
    return;
  }
  resetSimilar(file);
  if (!liveActive()) $("#live").hidden = true;
  $("#empty-state").hidden = true;
  $("#result").hidden = false;
  $("#busy").hidden = false;
  $("#result-title").textContent = file.name || "recording";
  $("#result-meta").textContent = "listening…";
  if (state.audioUrl) URL.revokeObjectURL(state.audioUrl);
  state.audioUrl = URL.createObjectURL(file);
  $("#player").src = state.audioUrl;
  const params = new URLSearchParams({
    top_k: $("#topk-select").value, timeline: "true", spectrogram: "true", links: "true",
  });
  if (state.model) params.set("model", state.model);
  // custom classifiers judge windows as long as they were trained on; the tagger's default is 1 s
  const info = (state.models || {})[state.model];
  if (info && info.source === "bundle" && info.window_seconds) params.set("window", info.window_seconds);
  const form = new FormData();
  form.append("file", file, file.name || "recording");
  const t0 = performance.now();
  try {
    const pred = await api("/v1/predict?" + params, { method: "POST", body: form });
    state.result = pred;
    renderResult(pred, performance.now() - t0);
  } catch (e) {
    if (e.status === 413) {  // too large to upload: streamed through /v1/stream instead, as it is decoded
      $("#result").hidden = true;
      streamFile(file, "over the upload limit, streamed");
      return;
    }
    $("#result-meta").textContent = "failed";
    $("#chart").innerHTML = "";
    $("#timeline").innerHTML = "";
    $("#spectrogram").hidden = true;
    showError(e);
  } finally {
    $("#busy").hidden = true;
  }
}

function fmtTime(s) {
  if (s == null) return "?";
  const m = Math.floor(s / 60);
  const sec = s - m * 60;
  return m ? `${m}:${sec.toFixed(1).padStart(4, "0")}` : `${sec.toFixed(1)} s`;
}

// a label, as a link to its `links` URL (http/https only) with its description as tooltip when the server sent them
function labelElement(pred, i) {
  const label = pred.labels[i];
  const el = document.createElement("span");
  el.className = "bar-label";
  const link = pred.links && pred.links[i];
  const desc = pred.descriptions && pred.descriptions[i];
  if (typeof link === "string" && /^https?:\/\//i.test(link)) {
    const a = document.createElement("a");
    a.href = link;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = label;
    el.appendChild(a);
  } else {
    el.textContent = label;
  }
  if (desc) el.title = desc;
  return el;
}

function renderResult(pred, ms) {
  $("#result-title").textContent = pred.title;
  $("#result-meta").textContent = `${fmtTime(pred.duration)} · ${pred.model} · ${Math.round(ms)} ms`;
  const chart = $("#chart");
  chart.innerHTML = "";
  pred.labels.forEach((label, i) => {
    const p = pred.probabilities[i];
    const row = document.createElement("div");
    row.className = "bar-row";
    const text = document.createElement("div");
    text.className = "bar-text";
    text.appendChild(labelElement(pred, i));
    const parents = pred.parents && pred.parents[i];
    if (parents && parents.length) {
      const c = document.createElement("span");
      c.className = "bar-parents";
      c.textContent = parents.join(" › ");
      c.title = `${label} — ${parents.join(" › ")}`;
      text.appendChild(c);
    }
    const id = pred.labels_info && pred.labels_info[i];
    if (id) {
      const s = document.createElement("span");
      s.className = "bar-id";
      s.textContent = id;
      text.appendChild(s);
    }
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    track.appendChild(fill);
    const v = document.createElement("div");
    v.className = "bar-value";
    v.textContent = (p * 100).toFixed(1) + "%";
    row.append(text, track, v);
    chart.appendChild(row);
    requestAnimationFrame(() => { fill.style.width = Math.max(1, p * 100) + "%"; });
  });
  if (!pred.labels.length) chart.innerHTML = '<p class="meta">No label above the threshold.</p>';

  const spec = $("#spectrogram");
  spec.hidden = !pred.spectrogram;
  if (pred.spectrogram) $("#spectrogram-img").src = pred.spectrogram;
  renderTimeline(pred);
}


// One row of an event lane: the label's name, events appended after it.
function laneRow(label) {
  const lane = document.createElement("div");
  lane.className = "lane";
  const name = document.createElement("span");
  name.className = "lane-name";
  name.textContent = label;
  lane.appendChild(name);
  return lane;
}
function renderTimeline(pred) {
  const tl = $("#timeline");
  tl.innerHTML = "";
  const events = pred.events || [];
  const dur = pred.duration || 0;
  if (!events.length || !dur) return;
  const lanes = new Map();
  for (const e of events) {
    if (!lanes.has(e.label)) lanes.set(e.label, []);
    lanes.get(e.label).push(e);
  }
  const order = [...lanes.entries()].sort((a, b) => Math.max(...b[1].map((e) => e.score)) - Math.max(...a[1].map((e) => e.score)));
  for (const [label, evs] of order.slice(0, 8)) {
    const lane = laneRow(label);
    for (const e of evs) {
      const bar = document.createElement("div");
      bar.className = "event";
      bar.style.left = (100 * e.start / dur) + "%";
      bar.style.width = Math.max(0.5, 100 * (e.end - e.start) / dur) + "%";
      bar.style.opacity = 0.35 + 0.6 * e.score;
      bar.title = `${e.label} ${fmtTime(e.start)}–${fmtTime(e.end)} (${(e.score * 100).toFixed(0)}%)`;
      lane.appendChild(bar);
    }
    tl.appendChild(lane);
  }
  const axis = document.createElement("div");
  axis.className = "axis";
  for (let i = 0; i <= 4; i++) {
    const t = document.createElement("span");
    t.textContent = fmtTime(dur * i / 4);
    axis.appendChild(t);
  }
  tl.appendChild(axis);
  const cursor = document.createElement("div");
  cursor.className = "cursor";
  cursor.id = "tl-cursor";
  tl.appendChild(cursor);
}

// playback cursor over the spectrogram (first 60 s at most) and the timeline (whole clip)
function tick() {
  const player = $("#player");
  const pred = state.result;
  if (pred && pred.duration) {
    const t = player.currentTime;
    const specSpan = Math.min(pred.duration, 60);
    const spec = $("#spec-cursor");
    spec.style.left = Math.min(100, (100 * t) / specSpan) + "%";
    spec.classList.toggle("on", t > 0 && t <= specSpan);
    const tc = $("#tl-cursor");
    if (tc) {
      tc.style.left = Math.min(100, (100 * t) / pred.duration) + "%";
      tc.classList.toggle("on", t > 0);
    }
  }
  requestAnimationFrame(tick);
}

function seekFrom(el, span) {
  el.addEventListener("click", (ev) => {
    const pred = state.result;
    if (!pred || !pred.duration) return;
    const r = el.getBoundingClientRect();
    const player = $("#player");
    player.currentTime = ((ev.clientX - r.left) / r.width) * span(pred);
    player.play().catch(() => {});
  });
}

// ------------------------------------------------------------------ input: drop, pick, record
function dropTarget(el, onFile, onFiles = null) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    el.classList.remove("over");
    if (onFiles) { if (e.dataTransfer.files.length) onFiles(e.dataTransfer.files); return; }
    const f = e.dataTransfer.files[0];
    if (f) onFile(f);
  });
}

// The microphone as it is: the browser's speech processing (noise suppression, echo cancellation, automatic gain)
// removes or reshapes the very sounds a classifier listens for, and Record, the Adapt card's Record and Listen
// must all hear the same chain for an adapted model to fit what Listen later streams.
const RAW_MIC = { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false };

// One microphone recording at a time (`state.recorder`), from the Classify view's Record button or the Adapt
// card's: `btn` shows its state in `labelSel`, and the finished recording goes to `onFile` as a File.
async function toggleRecording(btn, labelSel, onFile) {
  if (state.recorder) { state.recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError({ type: "RecordingError", message: "this browser cannot record audio here (needs https or localhost)" });
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: RAW_MIC });
  } catch (e) {
    showError({ type: "RecordingError", message: "microphone not available: " + e.message });
    return;
  }
  const types = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"];
  const mimeType = types.find((t) => MediaRecorder.isTypeSupported(t)) || "";
  const rec = new MediaRecorder(stream, mimeType ? { mimeType } : {});
  const chunks = [];
  const started = Date.now();
  const idle = $(labelSel).textContent;
  const timer = setInterval(() => {
    $(labelSel).textContent = `Stop · ${((Date.now() - started) / 1000).toFixed(0)} s`;
  }, 250);
  rec.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  rec.onstop = () => {
    clearInterval(timer);
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    btn.classList.remove("recording");
    $(labelSel).textContent = idle;
    const type = rec.mimeType || mimeType || "audio/webm";
    const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    onFile(new Blob(chunks, { type }), ext);
  };
  state.recorder = rec;
  btn.classList.add("recording");
  $(labelSel).textContent = "Stop";
  rec.start(250);
}

function toggleRecord() {
  toggleRecording($("#record-btn"), "#record-label",
    (blob, ext) => classify(new File([blob], `recording.${ext}`, { type: blob.type })));
}

// ------------------------------------------------------------------ training
let trainFile = null;

function setTrainFile(f) {
  trainFile = f;
  $("#train-file-label").textContent = f ? `${f.name} · ${(f.size / 1048576).toFixed(1)} MB` : "Drop a .zip of class folders";
}

async function submitTraining(ev) {
  ev.preventDefault();
  clearError();
  const words = $("#train-words").value.trim();
  if (!trainFile && !words) {
    showError({ type: "DataError", message: "choose a zip of class folders, or name keywords to train from synthetic voices" });
    return;
  }
  const fields = {};
  const name = $("#train-name").value.trim();
  if (name) fields.name = name;
  if ($("#train-method").value) fields.model = $("#train-method").value;
  if ($("#train-epochs").value) fields.epochs = $("#train-epochs").value;
  if (words) fields.words = words;
  let request;
  if (trainFile) {  // the archive and the options as multipart fields
    const form = new FormData();
    form.append("file", trainFile, trainFile.name);
    for (const [k, v] of Object.entries(fields)) form.append(k, v);
    request = { method: "POST", body: form };
  } else {  // keywords alone: synthetic voices say them
    request = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(fields) };
  }
  const btn = $("#train-submit");
  btn.disabled = true;
  btn.textContent = trainFile ? "Uploading…" : "Starting…";
  try {
    const job = await api("/v1/train", request);
    followJob(job.id);
  } catch (e) {
    showError(e);
  } finally {
    btn.disabled = false;
    btn.textContent = "Start training";
  }
}

// ------------------------------------------------------------------ adapting a model to a new domain
let adaptFiles = [];

// Files picked, dropped and recorded add up, until Clear.
function setAdaptFiles(files) {
  adaptFiles = [...files];
  const mb = adaptFiles.reduce((n, f) => n + f.size, 0) / 1048576;
  $("#adapt-file-label").textContent = adaptFiles.length
    ? `${adaptFiles.length} recording${adaptFiles.length > 1 ? "s" : ""} · ${mb.toFixed(1)} MB`
    : "Drop recordings of the new voice or microphone";
  $("#adapt-clear").hidden = !adaptFiles.length;
}

function addAdaptFiles(files) {
  setAdaptFiles([...adaptFiles, ...files]);
}

function toggleAdaptRecord() {
  toggleRecording($("#adapt-record"), "#adapt-record-label", (blob, ext) => {
    const n = adaptFiles.filter((f) => f.name.startsWith("voice-")).length + 1;
    addAdaptFiles([new File([blob], `voice-${n}.${ext}`, { type: blob.type })]);
  });
}

async function submitAdapt(ev) {
  ev.preventDefault();
  clearError();
  const model = $("#adapt-model").value;
  const out = $("#adapt-name").value.trim() || (model ? `${model}-adapted` : "");
  if (!model) { showError({ type: "ModelError", message: "no custom model to adapt: train one first" }); return; }
  if (!adaptFiles.length) { showError({ type: "DataError", message: "choose recordings of the new voice first" }); return; }
  const form = new FormData();
  for (const f of adaptFiles) form.append("file", f, f.name);
  const btn = $("#adapt-submit");
  btn.disabled = true;
  btn.textContent = "Adapting…";
  try {
    const q = new URLSearchParams({ out });
    const res = await api(`/v1/models/${encodeURIComponent(model)}/adapt?${q}`, { method: "POST", body: form });
    const a = res.adaptation;
    let text = `${res.model}: ${a.layers} layers adapted on ${a.files} recording${a.files === 1 ? "" : "s"} ` +
      `(${a.seconds.toFixed(1)} s of audio).`;
    if (a.skipped.length) text += ` Skipped ${a.skipped.length}: ${a.skipped.map((s) => s.source).join(", ")}.`;
    $("#adapt-result").textContent = text;
    $("#adapt-result").hidden = false;
    await loadModels(res.model);
  } catch (e) {
    showError(e);
  } finally {
    btn.disabled = false;
    btn.textContent = "Adapt";
  }
}

function renderJob(job) {
  $("#job").hidden = false;
  $("#job-name").textContent = job.name;
  const t = job.timings || {};
  const parts = [`job ${job.id.slice(0, 8)}`];
  if (t.queued_s != null && job.status === "queued") parts.push(`queued ${t.queued_s.toFixed(0)} s`);
  if (t.run_s != null) parts.push(`ran ${t.run_s.toFixed(1)} s`);
  $("#job-meta").textContent = parts.join(" · ");
  const pill = $("#job-status");
  pill.textContent = job.status;
  pill.className = "pill " + job.status;
  $("#job-progress").className = "progress " + job.status;
  const err = $("#job-error");
  err.hidden = !job.error;
  if (job.error) err.textContent = `${job.error.type}: ${job.error.message}`;
  const use = $("#job-use");
  use.hidden = job.status !== "succeeded";
  use.textContent = `Classify with ${job.model}`;
  use.onclick = async () => {
    await loadModels(job.model);
    showView("classify");
  };
}

function followJob(id) {
  clearTimeout(state.jobTimer);
  const poll = async () => {
    try {
      const job = await api(`/v1/jobs/${id}`);
      renderJob(job);
      if (job.status === "queued" || job.status === "running") {
        state.jobTimer = setTimeout(poll, 1000);
      } else {
        loadJobs();
        if (job.status === "succeeded") loadModels();
      }
    } catch (e) {
      showError(e);
    }
  };
  poll();
}

async function loadJobs() {
  try {
    const data = await api("/v1/jobs?limit=10");
    const ul = $("#jobs-list");
    ul.innerHTML = "";
    for (const j of data.jobs) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "#";
      a.textContent = j.name;
      a.onclick = (e) => { e.preventDefault(); followJob(j.id); };
      const s = document.createElement("span");
      s.className = "pill " + j.status;
      s.textContent = j.status;
      li.append(a, s);
      ul.appendChild(li);
    }
    if (!data.jobs.length) ul.innerHTML = '<li class="meta">No jobs yet.</li>';
  } catch (e) { /* shown by the caller's flow */ }
}

// ------------------------------------------------------------------ start
async function boot() {
  try {
    await loadModels();
    await loadSamples();
  } catch (e) {
    showError(e);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  initChrome();
  $("#model-select").onchange = (e) => { state.model = e.target.value; };
  $("#file-input").onchange = (e) => { if (e.target.files[0]) classify(e.target.files[0]); e.target.value = ""; };
  dropTarget($("#dropzone"), classify);
  $("#dropzone").addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("#file-input").click(); });
  $("#record-btn").onclick = toggleRecord;
  seekFrom($("#spectrogram"), (p) => Math.min(p.duration, 60));
  seekFrom($("#timeline"), (p) => p.duration);
  $("#train-file").onchange = (e) => setTrainFile(e.target.files[0] || null);
  dropTarget($("#train-drop"), setTrainFile);
  $("#train-form").onsubmit = submitTraining;
  $("#adapt-files").onchange = (e) => { addAdaptFiles(e.target.files); e.target.value = ""; };
  dropTarget($("#adapt-drop"), null, addAdaptFiles);
  $("#adapt-record").onclick = toggleAdaptRecord;
  $("#adapt-clear").onclick = () => setAdaptFiles([]);
  $("#adapt-form").onsubmit = submitAdapt;
  requestAnimationFrame(tick);
  boot();
});

// "More like this": the clip on show searched in the server's index (/v1/search), hits listed and playable
async function loadIndexes() {
  try {
    const data = await api("/v1/indexes");
    state.searchIndex = data.default;
  } catch (e) {
    state.searchIndex = null;
  }
  $("#similar-btn").hidden = !state.searchIndex || !state.file;
}

function resetSimilar(file) {
  state.file = file;
  $("#similar").hidden = true;
  $("#similar-list").innerHTML = "";
  $("#similar-player").hidden = true;
  $("#similar-player").removeAttribute("src");
  $("#similar-btn").hidden = !state.searchIndex;
}

async function moreLikeThis() {
  if (!state.file) return;
  clearError();
  const file = state.file;
  const list = $("#similar-list");
  list.innerHTML = "";
  $("#similar").hidden = false;
  $("#similar-meta").textContent = "searching…";
  const form = new FormData();
  form.append("file", file, file.name || "recording");
  const t0 = performance.now();
  try {
    const res = await api("/v1/search?" + new URLSearchParams({ k: "10" }), { method: "POST", body: form });
    if (state.file !== file) return;
    $("#similar-meta").textContent = `${res.results.length} hits · index ${res.index} · ${res.model} · ${Math.round(performance.now() - t0)} ms`;
    for (const hit of res.results) list.appendChild(similarItem(hit));
    if (!res.results.length) list.innerHTML = '<li class="meta">Nothing in the index yet.</li>';
  } catch (e) {
    $("#similar-meta").textContent = "failed";
    showError(e);
  }
}

function similarItem(hit) {
  const li = document.createElement("li");
  const play = document.createElement("button");
  play.className = "play";
  play.type = "button";
  play.textContent = "▶";
  play.disabled = !hit.url;
  play.title = hit.url ? `play from ${fmtTime(hit.start)}` : "not playable here (outside the samples folder)";
  if (hit.url) play.onclick = () => playHit(hit);
  const id = document.createElement("span");
  id.className = "similar-id";
  id.textContent = hit.id;
  const span = document.createElement("span");
  span.className = "similar-span";
  span.textContent = `${fmtTime(hit.start)}–${fmtTime(hit.end)}`;
  const score = document.createElement("span");
  score.className = "similar-score";
  score.textContent = hit.score.toFixed(3);
  score.title = "cosine similarity (1 = the same clip)";
  li.append(play, id, span, score);
  return li;
}

async function playHit(hit) {
  try {
    const key = localStorage.getItem(KEY);
    const resp = await fetch(hit.url, { headers: key ? { "X-API-Key": key } : {} });
    if (!resp.ok) throw { status: resp.status, type: "SampleError", message: "could not fetch " + hit.id };
    const player = $("#similar-player");
    if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
    player.src = URL.createObjectURL(await resp.blob());
    player.hidden = false;
    player.currentTime = hit.start;
    player.play().catch(() => {});
  } catch (e) { showError(e); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#similar-btn").onclick = moreLikeThis;
  $("#key-save").addEventListener("click", loadIndexes);
  loadIndexes();
});
