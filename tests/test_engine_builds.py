"""Engines: real CPU-only TensorRT-RTX builds of every tiny component in fp32, fp16 and bf16, their manifests and
the refusals of bad engine files (marked `trt`, skipped without TensorRT-RTX)."""
from __future__ import annotations

import json
import time

import onnx
import pytest

from vvtrt.components.specs import COMPONENTS
from vvtrt.engines import manifest as mf
from vvtrt.engines import trt_api
from vvtrt.engines.trt_api import available_flavors
from vvtrt.errors import BuildError, EngineMismatchError, InputError, WorkdirError
from vvtrt.precision import Precision
from vvtrt.workdir import Workdir
from workdir_copy import copy_workdir


HAS_RTX = "tensorrt-rtx" in available_flavors()
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not installed")
ENTRY_KEYS = {"component", "dtype", "engine", "engine_bytes", "engine_sha256", "onnx_sha256", "flavor",
              "trt_version", "target", "compute_capabilities", "gpu_name", "build_seconds", "built_at", "profiles",
              "profile_shapes", "inputs", "outputs", "layers", "timing_cache"}
TORCH_NAME = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# -- TensorRT-RTX CPU-only builds of the tiny model -------------------------------------------------
@pytest.fixture(scope="session")
def built(tiny_workdir):
    """Every tiny component x dtype built once with the TensorRT-RTX CPU builder (portable engines)."""
    if not HAS_RTX:
        pytest.skip("TensorRT-RTX is not installed")
    from vvtrt.engines import build_engines

    t0 = time.perf_counter()
    try:
        results, error = build_engines(tiny_workdir, "tensorrt-rtx"), None
    except BuildError as exc:
        results, error = [], exc
    return {"wd": tiny_workdir, "results": results, "error": error, "seconds": time.perf_counter() - t0}


def _manifest(wd: Workdir) -> dict:
    folders = [p.parent for p in wd.engines_dir.glob(f"*-portable/{mf.MANIFEST_NAME}")]
    assert len(folders) == 1, folders
    return mf.read_manifest(folders[0], strict=True) | {"folder": folders[0]}


@pytest.mark.trt
@needs_rtx
def test_every_tiny_component_builds_in_every_dtype(built):
    assert built["error"] is None, f"TensorRT-RTX build failures:\n{built['error']}"
    got = {(r["component"], r["dtype"]) for r in built["results"]}
    assert got == {(c, p.value) for c in COMPONENTS for p in Precision}


@pytest.mark.trt
@needs_rtx
def test_manifest_describes_every_engine(built):
    from vvtrt.components.specs import build_specs

    wd = built["wd"]
    m = _manifest(wd)
    tm = trt_api.load_trt("tensorrt-rtx")
    assert m["folder"].name == f"tensorrt-rtx-{tm.version}-portable" == m["key"]
    specs = build_specs(wd.info(), wd.options())
    for key, e in m["engines"].items():
        assert ENTRY_KEYS <= set(e), key
        spec, path = specs[e["component"]], m["folder"] / e["engine"]
        assert path.is_file() and path.stat().st_size == e["engine_bytes"] > 0
        mf.check_engine_file(path, e)
        assert e["onnx_sha256"] == wd.export_record(spec.name, Precision(e["dtype"]))["onnx_sha256"]
        assert (e["flavor"], e["trt_version"], e["target"]) == ("tensorrt-rtx", tm.version, "portable")
        assert "8.6" in e["compute_capabilities"] and "9.0" not in e["compute_capabilities"]
        assert [i["name"] for i in e["inputs"]] == [t.name for t in spec.inputs]
        assert [o["name"] for o in e["outputs"]] == [t.name for t in spec.outputs]
        for t, rec in zip((*spec.inputs, *spec.outputs), (*e["inputs"], *e["outputs"])):
            want = TORCH_NAME[e["dtype"]] if t.dtype == "model" else t.dtype
            assert rec["dtype"] == want, (key, t.name)
            assert len(rec["shape"]) == len(t.shape), (key, t.name)
            for d, got in zip(t.shape, rec["shape"]):  # inputs exactly; outputs may be unresolved (-1) pre-build
                assert got == (d if isinstance(d, int) else -1) or (t in spec.outputs and got == -1), (key, t.name)
        assert len(e["profiles"]) == len(spec.profiles) == len(e["profile_shapes"])
        layers = e["layers"]
        assert layers["count"] > 0 and "inspector" in layers  # no GPU here: says so instead of faking
        assert e["tf32"] is False and e["decomposable_attention"] == (2 if e["component"].startswith("lm_") else 0)
        assert e["user_allocation"] is True  # REQUIRE_USER_ALLOCATION: capturable (TensorRT-RTX)
        assert e["dtype"] in layers["by_precision"], (key, layers)  # strongly typed: the ONNX dtype rules


@pytest.mark.trt
@needs_rtx
def test_llm_is_one_engine_with_decode_and_prefill_profiles(built):
    """One engine per dtype serves decode and prefill (one copy of the weights): it built with every profile."""
    wd = built["wd"]
    m, opts, h = _manifest(wd), wd.options(), wd.info().hidden
    assert not [k for k in m["engines"] if k.startswith("lm_") and not k.startswith("lm_decode.")]
    for p in Precision:
        e = m["engines"][f"lm_decode.{p.value}"]
        assert len(e["profiles"]) == len(e["profile_shapes"]) == len(opts.kv_buckets) + 1
        for s, shapes in zip(opts.kv_buckets, e["profile_shapes"]):
            assert shapes["embeds"] == [[1, 1, h], [2, 1, h], [opts.max_batch, 1, h]] and shapes["past_k"][2][3] == s
        assert e["profile_shapes"][-1]["embeds"] == [[1, 1, h], [1, opts.prefill_chunk, h], [1, opts.prefill_chunk, h]]


@pytest.mark.trt
@needs_rtx
def test_second_build_skips_and_force_rebuilds(built):
    from vvtrt.engines import build_engines

    wd = built["wd"]
    again = build_engines(wd, "tensorrt-rtx")
    assert again and all(r["status"] == "skipped" for r in again)
    before = _manifest(wd)["engines"]["connectors.fp16"]["built_at"]
    time.sleep(1.1)
    forced = build_engines(wd, "tensorrt-rtx", components="connectors,token_embed", precisions="fp16", force=True)
    assert {(r["component"], r["status"]) for r in forced} == {("connectors", "built"), ("token_embed", "built")}
    assert _manifest(wd)["engines"]["connectors.fp16"]["built_at"] != before


@pytest.mark.trt
@needs_rtx
def test_corrupt_onnx_lists_every_parser_error(built, tmp_path):
    from vvtrt.engines import build_engines
    from vvtrt.engines.builder import parse_network

    wd = copy_workdir(built["wd"], tmp_path / "wd")
    path = wd.onnx_path("connectors", Precision.FP32)
    model = onnx.load(str(path))
    for node in model.graph.node[:2]:
        node.op_type = "NoSuchOp"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    tm = trt_api.load_trt("tensorrt-rtx")
    with pytest.raises(BuildError) as e:
        parse_network(tm, tm.logger(), bad)
    msg = str(e.value)
    assert "ONNX parser rejected" in msg and "NoSuchOp" in msg and "2 error(s)" in msg
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(BuildError, match="ONNX parser rejected"):
        parse_network(tm, tm.logger(), bad)
    onnx.save(model, str(path))  # the work dir's own graph edited after export: refused before any build
    with pytest.raises(WorkdirError, match="re-export"):
        build_engines(wd, "tensorrt-rtx")
    assert not list(wd.engines_dir.glob("*/*.engine"))


@pytest.mark.trt
@needs_rtx
def test_truncated_engine_is_a_mismatch_never_a_crash(built):
    from vvtrt.runtime.trt_runner import deserialize_engine

    m = _manifest(built["wd"])
    e = m["engines"]["diffusion_head.fp16"]
    blob = (m["folder"] / e["engine"]).read_bytes()
    tm = trt_api.load_trt("tensorrt-rtx")
    lg = tm.logger()
    runtime = tm.trt.Runtime(lg)
    for bad in (blob[: len(blob) // 2], b"\0" * 64):
        with pytest.raises(EngineMismatchError, match="rebuild it"):
            deserialize_engine(tm, runtime, lg, bad, "diffusion_head.fp16", "vvtrt build ... --force")


@pytest.mark.trt
@needs_rtx
def test_engine_for_another_gpu_or_release_names_the_rebuild_command(built):
    m = _manifest(built["wd"])
    e = m["engines"]["lm_decode.bf16"]
    cmd = f"vvtrt build -w {built['wd'].root} --flavor tensorrt-rtx --components lm_decode --force"
    for rt in (mf.RuntimeInfo("tensorrt-rtx", e["trt_version"], "9.0", "NVIDIA H100 80GB HBM3"),
               mf.RuntimeInfo("tensorrt-rtx", "1.6.0.0", "8.9", "RTX 4090")):
        with pytest.raises(EngineMismatchError) as exc:
            mf.check_engine(e, rt, built["wd"].root)
        assert cmd in str(exc.value)
    mf.check_engine(e, mf.RuntimeInfo("tensorrt-rtx", e["trt_version"], "8.9", "RTX 4090"))


@pytest.mark.trt
@needs_rtx
def test_target_sm86_build_goes_to_its_own_folder(built, tmp_path):
    from vvtrt.engines import build_engines

    wd = copy_workdir(built["wd"], tmp_path, ("connectors.fp32", "connectors.bf16"))
    res = build_engines(wd, "tensorrt-rtx", target_sm="86")
    assert {r["key"].rsplit("-", 1)[1] for r in res} == {"sm86"}
    entry = mf.read_manifest(wd.engines_dir / res[0]["key"])["engines"]["connectors.bf16"]
    assert entry["target"] == "sm86" and entry["compute_capabilities"] == ["8.6"]
    with pytest.raises(InputError, match="cannot target compute capability 9.0"):
        build_engines(wd, "tensorrt-rtx", target_sm="90")


@pytest.mark.trt
@needs_rtx
def test_bad_engine_or_manifest_is_refused_at_load_and_rebuilt_by_vvtrt_build(built, tmp_path):
    """Every bad-file class under engines/: loading (the lookup and read TrtRunner does before touching CUDA)
    refuses with a one-line error, and `vvtrt build` (no --force) rebuilds; a directory where a file belongs is
    exit 2 with one line."""
    from click.testing import CliRunner

    from vvtrt.cli import cli

    wd = copy_workdir(built["wd"], tmp_path)
    tm = trt_api.load_trt("tensorrt-rtx")
    rt = mf.RuntimeInfo("tensorrt-rtx", tm.version, "8.6", "NVIDIA GeForce RTX 3090")

    def build():
        return CliRunner().invoke(cli, ["build", "-w", str(wd.root), "--flavor", "tensorrt-rtx"],
                                  catch_exceptions=False)

    def load():
        path, entry = mf.find_engine(wd.engines_dir, rt, "connectors", "fp32", wd.root)
        return mf.read_engine(path, entry, workdir=wd.root)

    assert build().exit_code == 0
    folder = next(wd.engines_dir.glob("*-portable"))
    engine, manifest = folder / "connectors.fp32.engine", folder / mf.MANIFEST_NAME
    good = load()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    edited = json.loads(manifest.read_text())
    edited["engines"]["connectors.fp32"]["engine_sha256"] = "f" * 64
    breakages = {
        "truncated engine": lambda: engine.write_bytes(good[: len(good) // 2]),
        "one byte changed": lambda: engine.write_bytes(bytes(flipped)),
        "missing engine": engine.unlink,
        "corrupt manifest": lambda: manifest.write_text("{not json"),
        "truncated manifest": lambda: manifest.write_text(manifest.read_text()[:40]),
        "edited manifest": lambda: manifest.write_text(json.dumps(edited)),
        "missing manifest": manifest.unlink,
    }
    for what, breakage in breakages.items():
        breakage()
        with pytest.raises((EngineMismatchError, WorkdirError)) as e:
            load()
        assert "vvtrt build" in str(e.value) and "\n" not in str(e.value), (what, str(e.value))
        res = build()
        assert res.exit_code == 0 and "built 1 engine(s), 0 up to date" in res.output, (what, res.output)
        assert len(load()) > 0, what
    (folder / "notes.txt").write_text("stray")
    (wd.engines_dir / "stray.engine").write_bytes(b"stray")
    res = build()
    assert res.exit_code == 0 and "0 engine(s), 1 up to date" in res.output, res.output
    load()
    for place in (engine, manifest):
        place.unlink()
        place.mkdir()
        res = build()
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert f"{place} is a directory where a file belongs" in res.output.strip().splitlines()[-1]
        place.rmdir()
        assert build().exit_code == 0
