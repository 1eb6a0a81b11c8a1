"""Shared fixtures: one tiny work directory exported once per test session (every component, every dtype)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Inductor imports setuptools, whose distutils shim asserts when the standard library's distutils was
# imported first in the same process (pip's modules do, in the install tests): keep the stdlib one.
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model():
    from vvtrt.model.presets import build_model

    return build_model("tiny")


@pytest.fixture(scope="session")
def tiny_info(tiny_model):
    from vvtrt.components.info import ModelInfo

    return ModelInfo.from_model(tiny_model)


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """A work dir with every tiny component exported in fp32, fp16 and bf16 (the CLI's own export path).
    `VVTRT_TINY_WORKDIR=DIR` keeps it in DIR across pytest processes (the export skips what is current)."""
    import os

    from vvtrt.pipeline import run_export
    from vvtrt.workdir import Workdir

    root = os.environ.get("VVTRT_TINY_WORKDIR") or tmp_path_factory.mktemp("wd_tiny")
    run_export("tiny", root, "fp32,fp16,bf16", 10, "", 0, False, None)
    return Workdir.open(root)


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


def pytest_sessionfinish(session, exitstatus):
    """After ONNX Runtime CUDA sessions, leave without static destructors (microsoft/onnxruntime#15174:
    the CUDA provider can abort in cudaFreeHost at teardown and turn a green run into exit code 134)."""
    import sys

    ort = sys.modules.get("vvtrt.runtime.ort_runner")
    if ort is not None and ort.cuda_sessions_used():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.summary_stats()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(exitstatus))
