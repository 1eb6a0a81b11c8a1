// vvtrt try-it page: WebSocket /v1/audio/stream, int16 PCM frames scheduled on Web Audio as they arrive.
"use strict";
const SAMPLE_RATE = 24000;
const $ = (id) => document.getElementById(id);
// Exposed for tests and curious users: what reached Web Audio.
window.vvtrt = { chunksReceived: 0, chunksScheduled: 0, chunksEnded: 0, ttfaMs: null, stopReason: null, done: false, error: null, failed: false };

let audioCtx = null, socket = null, nextTime = 0, pcmParts = [], t0 = 0, sources = [];

function log(msg) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toISOString().slice(11, 23)} ${msg}`;
  $("log").appendChild(line);
  $("log").scrollTop = $("log").scrollHeight;
}

function apiKey() { return ($("apikey").value || localStorage.getItem("vvtrt-api-key") || "").trim(); }

function setStatus(text, failed) {
  $("status").textContent = text;
  $("status").className = failed ? "error" : "muted";
}

async function loadConfig() {
  $("apikey").value = localStorage.getItem("vvtrt-api-key") || "";
  const key = apiKey();
  try {
    const r = await fetch("/config", { headers: key ? { Authorization: `Bearer ${key}` } : {} });
    if (r.status === 401) {
      $("keybox").hidden = false;
      setStatus("this server needs an API key: enter it, then Speak", true);
      return;
    }
    const cfg = await r.json();
    for (const sel of [$("voice"), $("voice2")]) {
      for (const o of [...sel.options]) if (o.value) o.remove();
      for (const v of cfg.voices) { const o = document.createElement("option"); o.value = o.textContent = v; sel.appendChild(o); }
    }
    $("voice").value = cfg.default_voice;
    $("cfg").value = cfg.default_cfg;
    $("framesbox").hidden = !cfg.allow_frames;
    $("keybox").hidden = !cfg.auth;
  } catch (e) { log(`config unavailable: ${e}`); }
}

function streamUrl() {
  const p = new URLSearchParams({ text: $("script").value, cfg: $("cfg").value, seed: $("seed").value || "0" });
  const voices = [$("voice").value, $("voice2").value].filter(Boolean);
  if (voices.length) p.set("voice", voices.join(","));
  if ($("frames").value && !$("framesbox").hidden) p.set("frames", $("frames").value);
  if ($("maxframes").value) p.set("max_frames", $("maxframes").value);
  const key = apiKey();
  if (key) { p.set("api_key", key); localStorage.setItem("vvtrt-api-key", key); }
  return `${location.origin.replace(/^http/, "ws")}/v1/audio/stream?${p}`;
}

function playChunk(buf) {
  const pcm = new Int16Array(buf);
  const f32 = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) f32[i] = pcm[i] / 32768;
  const ab = audioCtx.createBuffer(1, f32.length, SAMPLE_RATE);
  ab.copyToChannel(f32, 0);
  const src = audioCtx.createBufferSource();
  src.buffer = ab;
  src.connect(audioCtx.destination);
  src.onended = () => { window.vvtrt.chunksEnded++; };
  nextTime = Math.max(nextTime, audioCtx.currentTime + 0.08);  // a small jitter buffer on the first chunk
  src.start(nextTime);
  nextTime += ab.duration;
  sources.push(src);
  window.vvtrt.chunksScheduled++;
  pcmParts.push(pcm);
  $("chunks").textContent = window.vvtrt.chunksScheduled;
  $("seconds").textContent = `${(window.vvtrt.chunksScheduled * pcm.length / SAMPLE_RATE).toFixed(2)} s`;
}

function onEvent(ev) {
  if (ev.type !== "log") return;
  if (ev.event !== "model_progress") log(`${ev.event} ${JSON.stringify(ev.data)}`);
  if (ev.event === "backend_stream_complete") {
    const d = ev.data || {};
    window.vvtrt.stopReason = d.stop_reason || "";
    $("stop-reason").textContent = d.stop_reason || "–";
    if (d.rtf !== undefined) $("rtf").textContent = d.rtf.toFixed(3);
  } else if (ev.event === "backend_busy" || ev.event === "generation_error") {
    window.vvtrt.error = (ev.data && ev.data.message) || ev.event;
    setStatus(window.vvtrt.error, true);
  }
}

function wavBlob(parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const str = (o, s) => { for (let i = 0; i < s.length; i++) view.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); str(8, "WAVEfmt "); view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); view.setUint16(22, 1, true); view.setUint32(24, SAMPLE_RATE, true);
  view.setUint32(28, SAMPLE_RATE * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  str(36, "data"); view.setUint32(40, 2 * n, true);
  let o = 44;
  for (const p of parts) for (let i = 0; i < p.length; i++, o += 2) view.setInt16(o, p[i], true);
  return new Blob([view], { type: "audio/wav" });
}

function finish(code, reason) {
  const v = window.vvtrt;
  if (!v.error && code !== 1000) v.error = `the connection closed with ${code}${reason ? `: ${reason}` : ""}`;
  if (!v.error && v.chunksReceived === 0) v.error = `no audio was produced (stop: ${v.stopReason || "unknown"})`;
  v.failed = Boolean(v.error);
  v.done = true;
  $("speak").disabled = false; $("stop").disabled = true;
  setStatus(v.failed ? `failed: ${v.error}` : "done", v.failed);
  if (pcmParts.length) {
    const a = $("download");
    if (a.href) URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(wavBlob(pcmParts)); a.hidden = false;
  }
}

async function speak() {
  if (!audioCtx) audioCtx = new AudioContext({ sampleRate: SAMPLE_RATE });
  await audioCtx.resume();
  for (const s of sources) { try { s.stop(); } catch (e) { /* already ended */ } }
  Object.assign(window.vvtrt, { chunksReceived: 0, chunksScheduled: 0, chunksEnded: 0, ttfaMs: null, stopReason: null, done: false, error: null, failed: false });
  sources = []; pcmParts = []; nextTime = 0;
  for (const id of ["ttfa", "rtf", "stop-reason"]) $(id).textContent = "–";  // every run starts from zero
  $("chunks").textContent = "0"; $("seconds").textContent = "0.00 s";
  $("download").hidden = true; $("speak").disabled = true; $("stop").disabled = false;
  setStatus("connecting…", false);
  t0 = performance.now();
  socket = new WebSocket(streamUrl());
  socket.binaryType = "arraybuffer";
  socket.onmessage = (m) => {
    if (typeof m.data === "string") { try { onEvent(JSON.parse(m.data)); } catch (e) { log(m.data); } return; }
    if (window.vvtrt.chunksReceived++ === 0) {
      window.vvtrt.ttfaMs = performance.now() - t0;
      $("ttfa").textContent = `${window.vvtrt.ttfaMs.toFixed(0)} ms`;
      setStatus("playing", false);
    }
    playChunk(m.data);
  };
  socket.onclose = (e) => { log(`closed ${e.code} ${e.reason}`); finish(e.code, e.reason); };
  socket.onerror = () => log("websocket error");
}

$("speak").addEventListener("click", speak);
$("apikey").addEventListener("change", () => { localStorage.setItem("vvtrt-api-key", apiKey()); loadConfig(); });
$("stop").addEventListener("click", () => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "stop" })); });
loadConfig();
