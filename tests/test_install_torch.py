"""tools/install_torch.py, the torch step of `make install`: a CPU build on a Linux machine without a GPU,
the default index with a GPU or when PyTorch's CPU index is unreachable, and nothing when torch is there."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "install_torch.py"


def _tool():
    spec = importlib.util.spec_from_file_location("install_torch", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_fits_the_machine():
    tool = _tool()
    asked = []

    def probe(ok):
        return lambda: asked.append(ok) or ok

    assert tool.plan(gpu=False, platform="linux", cpu_index_reachable=probe(True)) == "cpu-index"
    assert tool.plan(gpu=False, platform="linux", cpu_index_reachable=probe(False)) == "default"
    assert tool.plan(gpu=True, platform="linux", cpu_index_reachable=probe(True)) == "default"
    assert tool.plan(gpu=False, platform="darwin", cpu_index_reachable=probe(True)) == "default"
    assert asked == [True, False]  # the index is probed only where it would be used


def test_unreachable_index_is_given_up_in_seconds():
    tool = _tool()
    t0 = time.monotonic()
    assert not tool.reachable("http://127.0.0.1:9/whl/cpu", timeout=2)  # nothing listens on the discard port
    assert not tool.reachable("not a url", timeout=2)
    assert time.monotonic() - t0 < 5


def test_installed_torch_is_kept(monkeypatch):
    tool = _tool()
    import torch

    version = torch.__version__
    assert tool.satisfied("torch>=2.4") == version
    assert tool.satisfied("torch<1") is None
    calls = []
    monkeypatch.setattr(tool, "pip_install", lambda *a: calls.append(a) or 0)
    assert tool.main(["torch>=2.4"]) == 0 and calls == []
