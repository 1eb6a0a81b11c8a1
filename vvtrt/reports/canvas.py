"""The canvas every PNG plot draws on: matplotlib's object API on the Agg canvas (imported lazily, no pyplot
global state, safe from threads and headless machines), the file it saves and its colour cycle."""
from __future__ import annotations

from pathlib import Path


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]
