"""Latency vs load for a `bench-serving` report: TTFA and inter-chunk gap (p50, p99) per load level, with
the real-time limits (133 ms a chunk, 1 s to first audio). Same Agg canvas as `vvtrt.reports.plots`."""
from __future__ import annotations

from pathlib import Path


def plot_serving(report: dict, path: Path) -> Path | None:
    from vvtrt.reports.plots import _figure, _save

    levels = report["levels"]
    if not levels:
        return None
    x = [lv["level"] for lv in levels]
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, key, limit, title in ((axes[0], "ttfa_ms", 1000.0, "time to first audio (queueing included)"),
                                  (axes[1], "gap_ms", 3200 / 24.0, "inter-chunk gap at the reader")):
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(x, [lv[key][pct] if lv[key][pct] is not None else float("nan") for lv in levels], style,
                    label=pct)
        ax.axhline(limit, color="crimson", lw=1, ls=":", label=f"real-time limit ({limit:.0f} ms)")
        for lv in levels:
            if not lv["realtime"]:
                ax.axvspan(lv["level"] * 0.97, lv["level"] * 1.03, color="0.85", lw=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("requests / s (Poisson)" if report["config"]["load"]["mode"] == "rate"
                      else "concurrent streams")
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    cfg = report["config"]
    fig.suptitle(f"serving {cfg['preset']} {cfg['dtype']} on {cfg['device']} ({cfg['backend']}): "
                 f"largest real-time load {report['max_realtime_concurrency']}", fontsize=10)
    return _save(fig, path)
