"""Packaging rules: ONNX Runtime comes as exactly one flavour, the Dockerfile fails on a failed install,
and transformers has a tested upper bound."""
from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_onnxruntime_is_an_extra_never_a_base_dependency():
    assert not _names(PYPROJECT["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    extras = PYPROJECT["optional-dependencies"]
    assert _names(extras["cpu"]) == {"onnxruntime"} and _names(extras["gpu"]) == {"onnxruntime-gpu"}
    for name, reqs in extras.items():  # no extra may bring both flavours
        assert not {"onnxruntime", "onnxruntime-gpu"} <= _names(reqs), name


def test_make_installs_the_cpu_flavour_and_docker_the_gpu_one():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r'-e "\.\[[^]]*\bcpu\b', make) and not re.search(r'-e "\.\[[^]]*\bgpu\b', make)
    docker = (ROOT / "Dockerfile").read_text()
    assert "|| true" not in docker
    installs = re.findall(r'-e "\.\[([^]]*)\]"', docker)
    assert installs and all("gpu" in i.split(",") and "cpu" not in i.split(",") for i in installs)


def test_make_test_installs_the_ray_extra():
    """CI (`make test`) runs the `serve --ray` tests: its install must bring Ray."""
    assert _names(PYPROJECT["optional-dependencies"]["ray"]) == {"ray"}
    installs = re.findall(r'-e "\.\[([^]]*)\]"', (ROOT / "Makefile").read_text())
    assert installs and all("ray" in i.split(",") for i in installs)


def test_installed_environment_has_one_onnxruntime_flavour():
    installed = {d.metadata["Name"].lower() for d in md.distributions()}
    assert not {"onnxruntime", "onnxruntime-gpu"} <= installed


def test_transformers_has_a_tested_upper_bound():
    (req,) = [r for r in PYPROJECT["dependencies"] if r.startswith("transformers")]
    upper = re.search(r"<\s*([\d.]+)", req)
    assert upper, f"transformers needs an upper bound: {req}"
    version = tuple(int(x) for x in md.version("transformers").split(".")[:2])
    assert version < tuple(int(x) for x in upper.group(1).split(".")[:2])
