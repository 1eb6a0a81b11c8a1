"""Engines: the TensorRT facade, manifests and their checks (pure, always run; no TensorRT, no GPU). The real
TensorRT-RTX builds are in test_engine_builds.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from vvtrt.engines import manifest as mf
from vvtrt.engines import trt_api
from vvtrt.engines.builder import profile_shapes
from vvtrt.engines.trt_api import parse_sm
from vvtrt.errors import BackendUnavailableError, BuildError, EngineMismatchError, InputError, WorkdirError
from vvtrt.precision import Precision
from vvtrt.runtime.trt_runner import TrtRunner, select_profile
from vvtrt.spec import AxisRange, ComponentSpec, TensorSpec


def _spec(profiles) -> ComponentSpec:
    """A small stand-in for lm_decode: a batch axis and a KV length fixed per profile."""
    return ComponentSpec(
        "toy", "toy", (TensorSpec("x", ("batch", 1, 8)), TensorSpec("kv", (2, "batch", "kv_len", 4))),
        (TensorSpec("y", ("batch", 1, 8)),), None, None, profiles, {"batch": 2, "kv_len": 16}, ())


def _entry(**kw) -> dict:
    comp, dtype = kw.get("component", "lm_decode"), kw.get("dtype", "bf16")
    base = {"component": comp, "dtype": dtype, "engine": f"{comp}.{dtype}.engine", "engine_bytes": 4,
            "engine_sha256": "0" * 64, "onnx_sha256": "1" * 64, "flavor": "tensorrt-rtx", "trt_version": "1.7.1.116",
            "target": "portable", "compute_capabilities": ["8.0", "8.6", "8.9", "12.0"], "gpu_name": None}
    return {**base, **kw}


# -- pure: no TensorRT, no GPU ---------------------------------------------------------------------
def test_importing_vvtrt_never_imports_tensorrt():
    code = ("import sys, vvtrt.engines, vvtrt.runtime.trt_runner; "
            "print([m for m in sys.modules if m.split('.')[0].startswith('tensorrt')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_trt_missing_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(trt_api._MODULES, "tensorrt", ("no_such_tensorrt_module",))
    trt_api.load_trt.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match="pip install 'tensorrt>=10'"):
            trt_api.load_trt("tensorrt")
        with pytest.raises(InputError, match="unknown TensorRT flavor"):
            trt_api.load_trt("onnx")
    finally:
        trt_api.load_trt.cache_clear()


@pytest.mark.parametrize("raw", [86, "86", "sm86", "sm_86", "8.6", (8, 6)])
def test_parse_sm(raw):
    assert parse_sm(raw) == "8.6"
    assert parse_sm("120") == parse_sm("sm_120") == "12.0"
    with pytest.raises(InputError):
        parse_sm("ampere")


def test_profile_shapes_and_selection():
    spec = _spec(tuple({"batch": AxisRange(1, 2, 8), "kv_len": AxisRange(n, n, n)} for n in (256, 1024)))
    shapes = profile_shapes(spec, spec.profiles[1])
    assert shapes["x"] == ((1, 1, 8), (2, 1, 8), (8, 1, 8))
    assert shapes["kv"] == ((2, 1, 1024, 4), (2, 2, 1024, 4), (2, 8, 1024, 4))
    assert select_profile(spec, {"batch": 3, "kv_len": 256}) == 0
    assert select_profile(spec, {"batch": 8, "kv_len": 1024}) == 1
    with pytest.raises(InputError, match="fit no engine profile"):
        select_profile(spec, {"batch": 2, "kv_len": 512})
    with pytest.raises(BuildError, match="no range for axis 'kv_len'"):
        profile_shapes(spec, {"batch": AxisRange(1, 1, 2)})


def test_check_engine_names_the_rebuild_command():
    ok = mf.RuntimeInfo("tensorrt-rtx", "1.7.1.116", "8.6", "RTX 3090")
    mf.check_engine(_entry(), ok)
    cmd = "vvtrt build -w /w --flavor tensorrt-rtx --components lm_decode --force"
    with pytest.raises(EngineMismatchError, match="compute capability") as e:
        mf.check_engine(_entry(), mf.RuntimeInfo("tensorrt-rtx", "1.7.1.116", "9.0", "H100"), "/w")
    assert cmd in str(e.value)
    with pytest.raises(EngineMismatchError, match="1.8.0") as e:
        mf.check_engine(_entry(), mf.RuntimeInfo("tensorrt-rtx", "1.8.0", "8.6"), "/w")
    assert cmd in str(e.value)
    with pytest.raises(EngineMismatchError, match="--flavor tensorrt --components lm_decode --force"):
        mf.check_engine(_entry(), mf.RuntimeInfo("tensorrt", "10.13.0", "8.6"), "/w")
    with pytest.raises(BackendUnavailableError):
        mf.check_engine(_entry(), mf.RuntimeInfo("tensorrt-rtx", "1.7.1.116", None))


def test_check_engine_file_truncated_or_altered(tmp_path):
    p = tmp_path / "e.engine"
    p.write_bytes(b"abcd")
    entry = _entry(engine_bytes=4, engine_sha256=mf.sha256_file(p))
    mf.check_engine_file(p, entry)
    p.write_bytes(b"ab")
    with pytest.raises(EngineMismatchError, match="truncated"):
        mf.check_engine_file(p, entry)
    p.write_bytes(b"abcx")
    with pytest.raises(EngineMismatchError, match="checksum"):
        mf.check_engine_file(p, entry)
    with pytest.raises(EngineMismatchError, match="missing"):
        mf.check_engine_file(tmp_path / "none.engine", entry)


def test_manifest_merge_read_write_and_find(tmp_path):
    portable, sm86 = tmp_path / "rtx-portable", tmp_path / "rtx-sm86"
    mf.write_manifest(portable, mf.merge_entries(mf.read_manifest(portable), [_entry()], key="rtx-portable"))
    mf.write_manifest(portable, mf.merge_entries(mf.read_manifest(portable), [_entry(dtype="fp16")]))
    assert set(mf.read_manifest(portable)["engines"]) == {"lm_decode.bf16", "lm_decode.fp16"}
    rt = mf.RuntimeInfo("tensorrt-rtx", "1.7.1.116", "8.6")
    path, entry = mf.find_engine(tmp_path, rt, "lm_decode", "bf16")
    assert path == portable / "lm_decode.bf16.engine" and entry["target"] == "portable"
    mf.write_manifest(sm86, mf.merge_entries({}, [_entry(target="sm86", compute_capabilities=["8.6"])]))
    assert mf.find_engine(tmp_path, rt, "lm_decode", "bf16")[0].parent == sm86  # exact target preferred
    with pytest.raises(EngineMismatchError, match="--components lm_decode --force"):
        mf.find_engine(tmp_path, mf.RuntimeInfo("tensorrt-rtx", "1.7.1.116", "9.0"), "lm_decode", "bf16")
    with pytest.raises(WorkdirError, match="vvtrt build"):
        mf.find_engine(tmp_path, rt, "connectors", "bf16")
    (sm86 / mf.MANIFEST_NAME).write_text("{not json")
    assert mf.read_manifest(sm86)["engines"] == {}
    with pytest.raises(EngineMismatchError, match="unreadable"):
        mf.read_manifest(sm86, strict=True)


@pytest.mark.parametrize("edit, problem", [
    (lambda e: e.update(engine="../../etc/passwd"), "points at"),
    (lambda e: e.update(engine_sha256=None), "engine_sha256"),
    (lambda e: e.update(engine_bytes="4"), "engine_bytes"),
    (lambda e: e.update(component="connectors"), "names component"),
    (lambda e: e.update(compute_capabilities="8.6"), "compute_capabilities"),
    (lambda e: e.pop("flavor"), "flavor"),
])
def test_an_edited_manifest_entry_is_refused_at_load_and_dropped_by_the_builder(tmp_path, edit, problem):
    folder = tmp_path / "engines" / "tensorrt-rtx-1.7.1.116-portable"
    good, bad = _entry(dtype="fp16"), _entry()
    edit(bad)
    manifest = mf.merge_entries({}, [good])
    manifest["engines"]["lm_decode.bf16"] = bad
    mf.write_manifest(folder, manifest)
    with pytest.raises(EngineMismatchError, match=problem) as e:
        mf.read_manifest(folder, strict=True)
    assert f"vvtrt build -w {tmp_path} --flavor tensorrt-rtx --force" in str(e.value)
    with pytest.raises(EngineMismatchError, match=problem):  # the runtime's lookup reads strictly
        mf.find_engine(tmp_path / "engines", mf.RuntimeInfo("tensorrt-rtx", "1.7.1.116", "8.6"), "lm_decode", "fp16")
    assert set(mf.read_manifest(folder)["engines"]) == {"lm_decode.fp16"}  # the builder rebuilds the other


def test_bad_engine_files_and_places_are_one_line_errors(tmp_path):
    engines = tmp_path / "engines"
    folder = engines / "tensorrt-rtx-1.7.1.116-portable"
    p = folder / "lm_decode.bf16.engine"
    folder.mkdir(parents=True)
    p.write_bytes(b"abcd")
    entry = _entry(engine_sha256=mf.sha256_file(p))
    mf.write_manifest(folder, mf.merge_entries({}, [entry]))
    rt = mf.RuntimeInfo("tensorrt-rtx", "1.7.1.116", "8.6")
    path, found = mf.find_engine(engines, rt, "lm_decode", "bf16")
    assert mf.read_engine(path, found) == b"abcd"
    p.write_bytes(b"abcx")  # same size, other bytes: only the checksum sees it
    assert not mf.is_up_to_date(entry, p, entry["onnx_sha256"], "tensorrt-rtx", "1.7.1.116", "portable")
    with pytest.raises(EngineMismatchError, match="checksum.*rebuild it: `vvtrt build"):
        mf.read_engine(p, entry)
    p.unlink()
    p.mkdir()
    with pytest.raises(EngineMismatchError, match="is a directory where the engine file belongs"):
        mf.read_engine(p, entry)
    p.rmdir()
    (folder / mf.MANIFEST_NAME).unlink()
    (folder / mf.MANIFEST_NAME).mkdir()
    assert mf.read_manifest(folder)["engines"] == {}
    with pytest.raises(EngineMismatchError, match="directory where the manifest file belongs"):
        mf.find_engine(engines, rt, "lm_decode", "bf16")
    (folder / mf.MANIFEST_NAME).rmdir()
    (folder / "lm_decode.bf16.engine").write_bytes(b"abcd")  # an engine no manifest lists
    with pytest.raises(WorkdirError, match="not listed in its folder's manifest.*--force"):
        mf.find_engine(engines, rt, "lm_decode", "bf16")
    shutil.rmtree(engines)
    engines.write_text("not a folder")
    with pytest.raises(WorkdirError, match="a file where a directory belongs"):
        mf.find_engine(engines, rt, "lm_decode", "bf16")


def test_layer_summaries_trt10_trt11_and_builder_log():
    trt10 = {"Layers": [{"Name": "a", "LayerType": "gemm", "Outputs": [{"Format/Datatype": "Row major linear FP16"}]},
                        {"Name": "b", "LayerType": "kgen", "Outputs": [{"Format/Datatype": "BF16 format"}]}]}
    trt11 = {"Layers": [{"Name": "a", "LayerType": "gemm", "Outputs": [{"Datatype": "Half", "Format": "x"}]}],
             "I/O Tensors": []}
    s10, s11 = mf.summarize_inspector_json(json.dumps(trt10)), mf.summarize_inspector_json(json.dumps(trt11))
    assert s10["by_precision"] == {"fp16": 1, "bf16": 1} and s10["by_type"] == {"gemm": 1, "kgen": 1}
    assert s11["by_precision"] == {"fp16": 1} and s11["source"] == "engine_inspector"
    assert mf.summarize_inspector_json('{"Layers": ["a", "b"]}')["detailed"] is False
    dump = ("Layers:\nName: s, LayerType: shape_call, Inputs: [], Constants: [], Outputs: [], TacticName: , x\n"
            "Name: g, LayerType: gemm, Inputs: [ { Name: x, Datatype: Float }], Constants: [ { Name: w, Datatype: "
            "Float }], Outputs: [ { Name: y, Dimensions: [-1,8], Datatype: BFloat16, Format: lin }], TacticName: t\n")
    s = mf.summarize_layer_log(dump)
    assert s["by_precision"] == {"none": 1, "bf16": 1} and s["count"] == 2 and s["source"] == "builder_log"


def test_trt_runner_refuses_cpu_device():
    spec = _spec(({"batch": AxisRange(1, 1, 2), "kv_len": AxisRange(4, 4, 4)},))
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        TrtRunner(spec, Precision.FP32, "cpu", "x.engine", _entry())
