// vvtrt dashboard: polls /dashboard/data every second and draws small canvas line charts.
"use strict";
const $ = (id) => document.getElementById(id);
window.vvtrtDash = { updates: 0, last: null, ticks: {} };
const COLORS = ["#2f6feb", "#e5534b", "#1a7f37", "#bf8700", "#8250df"];
const gpu0 = (p, k) => (p.gpus && p.gpus.length ? p.gpus[0][k] : null);
const CHARTS = [
  { id: "streams", title: "Streams", unit: "", integer: true, lines: [["active", (p) => p.active], ["queued", (p) => p.queued]] },
  { id: "fps", title: "Frames / s (all streams)", unit: "", lines: [["frames/s", (p) => p.fps]] },
  { id: "rtf", title: "RTF of finished requests (10 s window)", unit: "", lines: [["p50", (p) => p.rtf_p50], ["p99", (p) => p.rtf_p99]] },
  { id: "ttfa", title: "Time to first audio (ms)", unit: " ms", lines: [["p50", (p) => ms(p.ttfa_p50)], ["p99", (p) => ms(p.ttfa_p99)]] },
  { id: "gap", title: "Inter-chunk latency (ms)", unit: " ms", lines: [["p50", (p) => ms(p.gap_p50)], ["p99", (p) => ms(p.gap_p99)]] },
  { id: "gpu-util", title: "GPU utilisation (%)", unit: " %", lines: [["util", (p) => gpu0(p, "util")]], max: 100 },
  { id: "gpu-mem", title: "GPU memory (GiB)", unit: " GiB", lines: [["used", (p) => gib(gpu0(p, "mem_used"))], ["total", (p) => gib(gpu0(p, "mem_total"))]] },
  { id: "gpu-temp", title: "GPU temperature (°C)", unit: " °C", lines: [["temp", (p) => gpu0(p, "temp")]] },
  { id: "gpu-power", title: "GPU power (W)", unit: " W", lines: [["power", (p) => gpu0(p, "power")]] },
  { id: "gpu-clock", title: "GPU SM clock (MHz)", unit: " MHz", lines: [["SM clock", (p) => gpu0(p, "sm_clock")]] },
];
function ms(v) { return v === null || v === undefined ? null : v * 1000; }
function gib(v) { return v === null || v === undefined ? null : v / 2 ** 30; }
function fmt(v, d = 1) { return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d); }

function buildCharts() {
  for (const c of CHARTS) {
    const div = document.createElement("div");
    div.className = "card chart";
    div.innerHTML = `<h3>${c.title}</h3><canvas id="c-${c.id}"></canvas><div class="legend">` +
      c.lines.map((l, i) => `<span style="color:${COLORS[i]}">■ ${l[0]} <b id="l-${c.id}-${i}">–</b></span>`).join("") + "</div>";
    $("charts").appendChild(div);
  }
}

// The top of a chart's axis: whole numbers for counts (4 ticks of a whole step), else 15 % headroom.
function axisTop(peak, yMax, integer) {
  if (yMax) return yMax;
  if (integer) return 4 * Math.max(1, Math.ceil(peak / 4));
  return peak > 0 ? peak * 1.15 : 1;
}

function draw(canvas, series, times, yMax, integer) {
  const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr); g.clearRect(0, 0, w, h);
  const vals = series.flat().filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
  const peak = Math.max(0, ...vals), top = axisTop(peak, yMax, integer), left = 44, bottom = h - 18;
  const ticks = [];
  g.strokeStyle = "#e4e8ef"; g.fillStyle = "#667085"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (bottom - 6) * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
    const label = fmt(top * i / 4, integer || top >= 10 ? 0 : 2);
    ticks.push(label);
    g.fillText(label, 2, y + 4);
  }
  if (times.length < 2) return ticks;
  const t0 = times[0], span = Math.max(1, times[times.length - 1] - t0);
  g.fillText(`-${Math.round(span)} s`, left, h - 4); g.fillText("now", w - 26, h - 4);
  series.forEach((vs, k) => {
    g.strokeStyle = COLORS[k]; g.lineWidth = 1.6; g.beginPath();
    let pen = false;
    vs.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      const x = left + (w - left - 4) * (times[i] - t0) / span, y = bottom - (bottom - 6) * Math.min(v, top) / top;
      pen ? g.lineTo(x, y) : g.moveTo(x, y); pen = true;
    });
    g.stroke();
  });
  return ticks;
}

function setTiles(p) {
  $("v-active").textContent = p.active === undefined ? "–" : `${p.active} / ${p.max_streams}`;
  $("v-queued").textContent = fmt(p.queued, 0);
  $("v-fps").textContent = fmt(p.fps, 1);
  $("v-rtf").textContent = fmt(p.rtf_p50, 3);
  $("v-ttfa").textContent = p.ttfa_p50 == null ? "–" : `${fmt(ms(p.ttfa_p50), 0)} ms`;
  $("v-gap").textContent = p.gap_p99 == null ? "–" : `${fmt(ms(p.gap_p99), 0)} ms`;
  const has = p.gpus && p.gpus.length;
  $("v-gpu-util").textContent = has ? `${fmt(gpu0(p, "util"), 0)} %` : "no GPU";
  $("v-gpu-mem").textContent = has ? `${fmt(gib(gpu0(p, "mem_used")), 1)} / ${fmt(gib(gpu0(p, "mem_total")), 0)} GiB` : "no GPU";
  $("v-gpu-temp").textContent = has ? `${fmt(gpu0(p, "temp"), 0)} °C` : "no GPU";
  $("v-gpu-power").textContent = has ? `${fmt(gpu0(p, "power"), 0)} W, ${fmt(gpu0(p, "sm_clock"), 0)} MHz` : "no GPU";
}

// `serve --ray`: one line per replica (its latest point's streams, and whether it takes requests)
function showReplicas(replicas) {
  const el = $("replicas");
  el.hidden = !replicas;
  if (!replicas) return;
  el.textContent = "Replicas: " + replicas.map((r) => {
    const p = r.series.length ? r.series[r.series.length - 1] : {};
    const state = r.ok ? (r.draining ? "draining" : "ready") : "not ready";
    return `${r.name} (${state}, pid ${r.pid} on ${r.node}): ${p.active ?? "–"} active / ${r.slots} slots, ` +
      `${p.queued ?? "–"} queued, ${r.routed} requests`;
  }).join(" · ");
}

async function tick() {
  try {
    const key = localStorage.getItem("vvtrt-api-key") || "";
    const r = await fetch(`/dashboard/data?seconds=${$("window").value}`,
      { cache: "no-store", headers: key ? { Authorization: `Bearer ${key}` } : {} });
    if (r.status === 401) throw new Error("API key needed: enter it on the Try it page");
    const d = await r.json();
    const pts = d.series;
    $("state").textContent = d.ready ? "ready" : "not ready";
    showReplicas(d.replicas);
    $("gpu-note").textContent = d.gpu_available ? "" : "No NVIDIA GPU visible to the server: GPU charts stay empty.";
    if (pts.length) {
      const last = pts[pts.length - 1];
      setTiles(last);
      const times = pts.map((p) => p.t);
      for (const c of CHARTS) {
        const series = c.lines.map((l) => pts.map(l[1]));
        window.vvtrtDash.ticks[c.id] = draw($(`c-${c.id}`), series, times, c.max, c.integer);
        series.forEach((s, i) => { $(`l-${c.id}-${i}`).textContent = fmt(s[s.length - 1], c.integer ? 0 : 1) + c.unit; });
      }
      window.vvtrtDash.last = last;
    }
    window.vvtrtDash.updates++;
  } catch (e) {
    $("state").textContent = `offline (${e})`;
  }
  setTimeout(tick, 1000);
}
buildCharts();
tick();
