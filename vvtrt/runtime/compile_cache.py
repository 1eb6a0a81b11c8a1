"""torch.compile's on-disk caches kept in the work dir, and what a start-up took from them.

Inductor keeps what it compiles on disk: the FX graph cache (generated kernels and wrappers, keyed by
the graph, its input shapes and the compile settings) and the AOTAutograd cache, both under
`TORCHINDUCTOR_CACHE_DIR` (Triton's kernels below it). `use_work_dir_cache` points that directory at
`<work dir>/compile-cache` (unless the variable names another directory already: an explicit choice
wins) and switches both caches on, so a second start in the same work dir loads what the first one
compiled instead of compiling it again (dynamo still traces each graph: that part is never cached).

`CacheProbe` counts the caches' hits and misses around a start-up (torch's own counters), so a start can
say "hit" (everything came from the cache), "miss" (nothing did) or "partial".
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)
CACHE_DIR_NAME = "compile-cache"
ENV = "TORCHINDUCTOR_CACHE_DIR"
_set_here: list[str] = []  # the value this process put in ENV (a later engine of another work dir may move it)
_KEYS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
         ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"), ("stats", "unique_graphs"),
         ("aot_autograd", "autograd_cache_bypass"))


def use_work_dir_cache(root) -> Path:
    """Keep torch.compile's caches in `<root>/compile-cache` (or where `TORCHINDUCTOR_CACHE_DIR` already
    points) and switch the FX graph and AOTAutograd caches on. Returns the directory used."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(ENV)
    # torch writes its default into the variable the first time it looks: that is no one's choice
    if not current or current in _set_here or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ[ENV] = str(Path(root).resolve() / CACHE_DIR_NAME)
        _set_here.append(os.environ[ENV])
    path = Path(os.environ[ENV])
    path.mkdir(parents=True, exist_ok=True)
    inductor_config.fx_graph_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    log.info("torch.compile cache: %s", path)
    return path


def _counts() -> tuple[int, ...]:
    from torch._dynamo.utils import counters

    return tuple(int(counters[group][name]) for group, name in _KEYS)


@dataclass(frozen=True)
class CacheUse:
    """Hits and misses of the FX graph and AOTAutograd caches during one start-up, the graphs dynamo traced
    (a bounded number: one per distinct shape specialisation of each compiled component) and the graphs the
    AOTAutograd cache declined to store or load (`aot_bypasses`: their inductor code may still hit)."""

    dir: str
    fx_graph_hits: int
    fx_graph_misses: int
    aot_hits: int
    aot_misses: int
    graphs: int = 0
    aot_bypasses: int = 0

    @property
    def state(self) -> str:
        """"hit": every compiled graph came from the cache; "miss": none did; "partial"; "none": nothing
        was compiled."""
        hits, misses = self.fx_graph_hits + self.aot_hits, self.fx_graph_misses + self.aot_misses
        if not hits and not misses:
            return "none"
        return "hit" if not misses else ("miss" if not hits else "partial")

    def as_dict(self) -> dict:
        return {**asdict(self), "state": self.state}


class CacheProbe:
    """`probe = CacheProbe(dir)`, start up, then `probe.result()`: the caches' hits and misses since."""

    def __init__(self, path):
        self.path = str(path)
        self._before = _counts()

    def result(self) -> CacheUse:
        delta = [a - b for a, b in zip(_counts(), self._before)]
        return CacheUse(self.path, *delta)
