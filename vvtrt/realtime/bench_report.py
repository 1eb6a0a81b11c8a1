"""Markdown and a plot of a Realtime bench report (`vvtrt.realtime.bench`), and writing them with its JSON.

The plot (`<stem>.png`, matplotlib's Agg canvas as `vvtrt.reports.plots`): tick / inter-chunk gap against
streams with the one-frame limit, x real time against streams, and the step's component breakdown.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _gb(x):
    return "not measured" if x is None else f"{x / 2**30:.2f} GiB"


def _or(x, none="not measured"):
    return none if x is None else x


def _head(r: dict) -> list[str]:
    t, s, m = r["ttfa"], r["one_stream_step"], r["memory_one_stream"]
    env = r.get("environment") or {}
    backend = f"{r.get('backend', 'torch')}{' (compiled)' if r.get('compile') else ''}"
    cap = r["realtime_capacity_streams"]
    return [f"# Realtime runtime: {r['preset']} {r['dtype']} on {env.get('gpu_name') or r['device']}", "",
            f"Backend {backend}; K = {r['steps']}, CFG {r['cfg_scale']}, {r['solver']}, CUDA graphs: "
            f"{r['cuda_graphs']}; voice {r['voice_lengths']}; frame = {r['frame_ms']} ms of audio.", "",
            f"- TTFA (warm, {len(t['samples_ms'])} requests; p99 of so few samples is about the max): "
            f"p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, mean {t['mean_ms']} ms",
            f"- One stream: speech step {s['speech_step_ms']} ms, text-window step {s['text_window_step_ms']} ms "
            f"(per frame with windows {s['per_frame_ms_with_windows']} ms); whole tick p50 {t['tick_ms_p50']} ms",
            f"- Memory, one stream (capacity {m.get('capacity')}): NVML process "
            f"{_gb(m.get('nvml_process_peak_bytes'))} ({m.get('nvml_process_status')}); "
            f"torch peak {_gb(m.get('torch_peak_allocated_bytes'))}",
            f"- Real-time capacity of one stepper (largest measured batch with mean tick <= {r['frame_ms']} ms): "
            f"{_or(cap, 'none measured')}",
            f"- Real-time capacity through the engine: {_engine_capacity(r)}"]


def _engine_capacity(r: dict) -> str:
    e = r.get("engine") or {}
    if not e.get("passes"):
        return "not measured (no engine streams asked for)"
    return str(_or(e["realtime_capacity_streams"], "none of the measured stream counts"))


def _batches(r: dict) -> list[str]:
    lines = ["", "## Streams through one stepper", "",
             "| streams | tick mean ms | p50 | max | speech tick | text tick | x real time | KV | torch peak |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in r["batches"]:
        if "error" in b:
            lines.append(f"| {b['streams']} | failed: {b['error']} |" + " |" * 7)
            continue
        lines.append(f"| {b['streams']} | {b['tick_ms_mean']} | {b['tick_ms_p50']} | {b['tick_ms_max']} | "
                     f"{b['speech_tick_ms_mean']} | {b['text_tick_ms_mean']} | {b['realtime_factor']} | "
                     f"{_gb(b['kv_bytes'])} | {_gb(b['torch_peak_allocated_bytes'])} |")
    return lines


def _breakdown(r: dict) -> list[str]:
    lines = ["", "## Component breakdown", "",
             "Each component timed alone on the loop's own buffers (method per row); glue = the whole step "
             "(as the loop runs it) minus the components.", ""]
    for bd in r.get("component_breakdown") or []:
        lines += [f"### {bd['streams']} stream(s), KV bucket {bd['kv_bucket']} (text LM {bd['lm_kv_bucket']}), "
                  f"{bd['replays']} replays; whole step: {bd['whole_step']}", "",
                  "| step | component | rows | ms | share | method |", "|---|---|---:|---:|---:|---|"]
        for key, label in (("speech", "speech"), ("text_window", f"text window ({bd['text_tokens']} tokens)")):
            part = bd[key]
            for c in part["components"]:
                share = "" if c["share"] is None else f"{100 * c['share']:.1f}%"
                lines.append(f"| {label} | {c['name']} | {_or(c['rows'], '')} | {c['ms']} | {share} | {c['method']} |")
            lines.append(f"| {label} | **whole step** | | **{part['step_ms']}** | 100% | |")
        lines.append("")
    return lines


def _engine(r: dict) -> list[str]:
    e = r.get("engine") or {}
    if not e.get("passes"):
        return []
    lines = ["", "## Streams through the engine", "", f"Real time: {e['realtime_definition']}. Reader: "
             f"{e['reader']} (one host thread).", "",
             "| streams | ok | TTFA p50 / p99 / max ms | gap p50 / p99 / max ms | chunks/s | stream rate min "
             "| RTF p50 / max | reader lag p50 / p99 ms | start s | real time |",
             "|---:|---:|---|---|---:|---:|---|---|---:|---|"]
    for p in e["passes"]:
        if "error" in p:
            lines.append(f"| {p['streams']} | failed: {p['error']} |" + " |" * 8)
            continue
        t, g, rt, lag = p["ttfa_ms"], p["gap_ms"], p["rtf"], p["reader_lag_ms"]
        lines.append(f"| {p['streams']} | {p['ok']} | {t['p50']} / {t['p99']} / {t['max']} | {g['p50']} / "
                     f"{g['p99']} / {g['max']} | {p['chunks_per_s']} | {p['stream_rate_per_s']['min']} | "
                     f"{rt['p50']} / {rt['max']} | {lag['p50']} / {lag['p99']} | {p['start_seconds']} | "
                     f"{'yes' if p['realtime'] else 'no'} |")
    notes = [f"- {p['streams']} streams: {_played(p)}" for p in e["passes"] if "error" not in p and "playback" in p]
    if notes:
        lines += ["", "Informational, not the rule above: a client that starts playing one frame after the first "
                  "chunk.", ""] + notes
    return lines


def _played(p: dict) -> str:
    pb, gc = p["playback"], p.get("gc_pauses") or {}
    gc_text = f"; GC pauses in the timed pass: {gc['count']} (generation 2: {gc['generation2']}), max " \
              f"{gc['max_ms']} ms" if gc else ""
    return f"{pb['streams_running_dry']} would run dry (worst lateness {pb['worst_lateness_ms']} ms){gc_text}"


def markdown(r: dict, image: str | None = None) -> str:
    lines = _head(r) + _batches(r) + _breakdown(r) + _engine(r)
    if image:
        lines += ["", f"![streams and components]({image})"]
    return "\n".join(lines) + "\n"


def _plot_streams(ax_tick, ax_x, r: dict) -> None:
    frame = r["frame_ms"]
    b = [v for v in r["batches"] if "error" not in v]
    passes = [p for p in (r.get("engine") or {}).get("passes") or [] if "error" not in p]
    if b:
        x = [v["streams"] for v in b]
        ax_tick.plot(x, [v["tick_ms_mean"] for v in b], "o-", label="stepper: tick mean")
        ax_x.plot(x, [v["realtime_factor"] for v in b], "o-", label="stepper")
    if passes:
        x = [p["streams"] for p in passes]
        for key, style in (("p50", "s--"), ("p99", "^:")):
            ax_tick.plot(x, [p["gap_ms"][key] for p in passes], style, label=f"engine: chunk gap {key}")
        ax_x.plot(x, [frame / p["gap_ms"]["mean"] if p["gap_ms"]["mean"] else float("nan") for p in passes],
                  "s--", label="engine (mean gap)")
    ax_tick.axhline(frame, color="crimson", lw=1, ls=":", label=f"one frame ({frame:.1f} ms)")
    ax_x.axhline(1.0, color="crimson", lw=1, ls=":", label="real time")
    for ax, ylabel in ((ax_tick, "ms"), (ax_x, "x real time")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("streams")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_tick.set_title("tick / inter-chunk gap", fontsize=9)
    ax_x.set_title("speed against real time", fontsize=9)


def _plot_components(ax, r: dict) -> None:
    from vvtrt.reports.plots import _colors

    rows = [(f"{bd['streams']} stream(s)\n{key.replace('_', ' ')}", bd[key]) for bd in r.get("component_breakdown")
            or [] for key in ("speech", "text_window")]
    names = list(dict.fromkeys(c["name"] for _, part in rows for c in part["components"]))
    colors = dict(zip(names, _colors(len(names))))
    for i, (_, part) in enumerate(rows):
        left = 0.0
        for c in part["components"]:
            w = max(c["ms"], 0.0)
            ax.barh(i, w, left=left, color=colors[c["name"]], label=c["name"])
            left += w
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.set_title("step components (each alone) and glue", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    by = dict(zip(labels, handles))
    ax.legend(by.values(), by.keys(), fontsize=7)


def plot(r: dict, path: Path) -> Path:
    from vvtrt.reports.plots import _figure, _save

    fig = _figure(15, 4.2)
    axes = fig.subplots(1, 3)
    _plot_streams(axes[0], axes[1], r)
    _plot_components(axes[2], r)
    fig.suptitle(f"Realtime {r['preset']} {r['dtype']} on {r['device']} ({r.get('backend', 'torch')})", fontsize=10)
    return _save(fig, path)


def write_outputs(report: dict, out_dir, stem: str = "realtime_bench") -> dict:
    """`<stem>.json` (first, so a plotting problem never loses the run), `<stem>.png`, `<stem>.md` in `out_dir`."""
    from vvtrt.fsio import atomic_path, atomic_write_json, atomic_write_text
    from vvtrt.reports import to_jsonable

    out = Path(out_dir)
    report = to_jsonable(report)
    paths = {"json": atomic_write_json(out / f"{stem}.json", report), "plot": None}
    try:
        with atomic_path(out / f"{stem}.png") as tmp:
            plot(report, tmp)
        paths["plot"] = out / f"{stem}.png"
    except Exception as exc:  # noqa: BLE001 - the JSON and the Markdown still tell the numbers
        log.error("realtime bench plot not written: %s: %s", type(exc).__name__, exc)
    paths["md"] = atomic_write_text(out / f"{stem}.md", markdown(report, paths["plot"] and paths["plot"].name))
    return paths
