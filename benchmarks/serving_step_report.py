"""Markdown and the stacked-bar plot of a `benchmarks/serving_step_profile.py` report."""
from __future__ import annotations

from pathlib import Path

from vvtrt.serving.config import FRAME_COMPONENTS

BUDGET_MS = 3200 / 24.0  # one chunk of audio: every stream needs one frame step per 133 ms
SPLIT = ("feed_ms", "launch_ms", "device_ms", "wait_ms", "post_ms")


def _ms(x) -> str:
    return "n/a" if x is None else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |"
                                                                        for r in rows]


def _gib(x) -> str:
    return "not measured" if x is None else f"{x / 2**30:.2f}"


def _both(eager: float, graph) -> str:
    """Eager ms [graphed ms] (`graph`: a number, a summary or None)."""
    graph = graph["p50"] if isinstance(graph, dict) else graph
    return _ms(eager) + (f" [{_ms(graph)}]" if graph is not None else "")


def markdown(rep: dict) -> str:
    rows = rep["rows"]
    return "\n".join([
        f"# Serving step profile: {rep['model']} {rep['dtype']} ({rep['backend']}, {rep['device_name']})", "",
        f"commit `{rep['environment'].get('git_commit')}`; command: `{rep['command']}`", "",
        f"{rep['prompt_tokens']}-token random prompts, forced frames, max context {rep['max_context']}; p50 of "
        f"{rep['repeats']} steps. Real time: step + deliver under {BUDGET_MS:.1f} ms.", "", "## Whole step (ms, p50)",
        "", *_table(["B", "bucket", "step", "deliver", "feed (host before)", "launch", "device", "wait",
                     "post (host after)", "peak alloc GiB", "KV pool GiB", "real time"],
                    [[r["batch"], f"{r['bucket'][0]}x{r['bucket'][1]}", _ms(r["step_ms"]["p50"]),
                      _ms(r["deliver_ms"]["p50"]), *(_ms(r["split"][k]["p50"]) for k in SPLIT),
                      _gib(r["memory"]["peak_allocated_bytes"]), _gib(r["memory"]["kv_pool_bytes"]),
                      "yes" if r["realtime"] else "no"] for r in rows]),
        "", "## Device time by component (ms, p50: eager with events [alone in a CUDA graph])", "",
        *_table(["B", *FRAME_COMPONENTS, "sum", "device step"],
                [[r["batch"], *(_both(c["eager_ms"]["p50"], c["graph_ms"]) for c in r["components"].values()),
                  _both(r["component_sum_ms"]["eager_ms"], r["component_sum_ms"]["graph_ms"]),
                  _ms(r["split"]["device_ms"]["p50"])] for r in rows]),
        "", "## Host pieces of one step, timed alone (ms per step, all slots, p50)", "",
        *_table(["B", *rows[0]["host_pieces_ms"]],
                [[r["batch"], *(_ms(v["p50"]) for v in r["host_pieces_ms"].values())] for r in rows]), ""])


def _segments(r: dict) -> list[tuple[str, float]]:
    """One step as the host sees it (ms, p50): `_feed`, then the device step (launch + wait) split into the
    components (alone in a graph where measured, else eager) and the rest, then the host after and `_deliver`."""
    s = r["split"]
    comps = [(n, (c["graph_ms"] or c["eager_ms"])["p50"]) for n, c in r["components"].items()]
    device = s["launch_ms"]["p50"] + s["wait_ms"]["p50"]
    return ([("host before launch (_feed)", s["feed_ms"]["p50"])] + comps +
            [("rest of the device step (glue, launch gaps)", max(0.0, device - sum(v for _, v in comps))),
             ("host after (read-back, bookkeeping)", s["post_ms"]["p50"]), ("engine _deliver", r["deliver_ms"]["p50"])])


def plot(rep: dict, path: Path) -> Path:
    """Stacked bars of `_segments` per batch size (ms, and % of the stack), the measured step and the budget."""
    from vvtrt.fsio import atomic_path
    from vvtrt.reports.plots import _colors, _figure

    segs = [_segments(r) for r in rep["rows"]]
    names = [n for n, _ in segs[0]]
    fig = _figure(12, 5)
    x = list(range(len(segs)))
    for ax, rel in zip(fig.subplots(1, 2, width_ratios=(3, 2)), (False, True)):
        bottom = [0.0] * len(x)
        for i, (name, color) in enumerate(zip(names, _colors(len(names)))):
            vals = [row[i][1] * (100 / (sum(v for _, v in row) or 1) if rel else 1) for row in segs]
            ax.bar(x, vals, bottom=bottom, color=color, label=None if rel else name, edgecolor="white", lw=0.5)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(x, [str(r["batch"]) for r in rep["rows"]])
        ax.set_xlabel("streams (busy slots) B")
        ax.set_ylabel("% of the step" if rel else "ms per step (p50)")
        ax.grid(True, axis="y", alpha=0.3)
        if not rel:
            ax.plot(x, [r["iteration_p50_ms"] for r in rep["rows"]], "kD", ms=5, label="measured step + _deliver")
            ax.axhline(BUDGET_MS, color="crimson", lw=1, ls=":", label=f"real-time budget ({BUDGET_MS:.0f} ms)")
    fig.legend(loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"serving frame step by batch size: {rep['model']} {rep['dtype']} {rep['backend']} on "
                 f"{rep['device_name']}", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
