"""The TensorRT API vvtrt's engine code uses, checked against the installed TensorRT-RTX bindings (CPU only).

1. An AST scan of vvtrt/engines/*.py and vvtrt/runtime/trt_runner.py collects every TensorRT name they use:
   module chains (`tm.trt.BuilderFlag.REQUIRE_USER_ALLOCATION`, `trt.ILogger.Severity.ERROR`, and aliases of
   them), and attributes/methods called on TensorRT objects, recognised by the variable they are bound to
   (`RECEIVERS`). Each must exist on the real module (`hasattr`), except names reached only through an explicit
   `getattr(..., default)` / `hasattr` guard (optional by construction) and `trt_api.FULL_TRT_ONLY`.
2. An engine built here deserializes-to-inspect only as far as the bindings allow without a GPU: TensorRT-RTX
   1.7 parses the header (`get_engine_validity` flags a damaged header MALFORMED_ENGINE) but reports an intact
   engine INVALID with no diagnostic after failing to read the GPU's properties, and `deserialize_cuda_engine`
   returns None. The test asserts that documented refusal; if a later release deserializes on the CPU, it fails
   and says so, so that the inspection can be added.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vvtrt.engines import trt_api
from vvtrt.engines.trt_api import available_flavors

HAS_RTX = "tensorrt-rtx" in available_flavors()
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not installed")
PKG = Path(trt_api.__file__).resolve().parents[1]  # the vvtrt package
SCANNED = sorted((PKG / "engines").glob("*.py")) + [PKG / "runtime" / "trt_runner.py"]
# variable (or `self.` attribute) name -> TensorRT class, for every file; per-file entries override
RECEIVERS = {
    "*": {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
          "opt_profile": "IOptimizationProfile", "runtime": "Runtime", "engine": "ICudaEngine",
          "ctx": "IExecutionContext", "inspector": "EngineInspector", "rt_config": "IRuntimeConfig",
          "layer": "IAttentionOutputLayer", "attention": "IAttention", "err": "ParserError", "tensor": "ITensor"},
    "builder.py": {"cache": "ITimingCache"},
    "runtime_cache.py": {"cache": "IRuntimeCache"},
    "manifest.py": {"runtime": None, "layer": None},  # a RuntimeInfo and inspector-JSON dicts there
}
TRT_ROOTS = {"trt"}  # `<...>.trt` (TrtModule.trt) or a bare `trt` parameter is the module itself


def _chain(node) -> list[str] | None:
    """`a.b.c` -> ["a", "b", "c"] for a pure Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _module_path(chain: list[str], aliases: dict) -> list[str] | None:
    """The part of `chain` after the TensorRT module (`tm.trt.X.Y` -> [X, Y]), following local aliases."""
    if chain[0] in aliases:
        return aliases[chain[0]] + chain[1:]
    for i, part in enumerate(chain):
        if part in TRT_ROOTS:
            return chain[i + 1:]
    return None


class _Scan(ast.NodeVisitor):
    def __init__(self, receivers: dict):
        self.receivers, self.aliases = receivers, {}
        self.required: set[tuple] = set()  # (path on the module,) e.g. ("BuilderFlag", "TF32")
        self.optional: set[tuple] = set()
        self.stored: set[tuple] = set()  # attributes the code assigns: must be settable properties

    def visit_Assign(self, node):  # sev = trt.ILogger.Severity
        chain = _chain(node.value)
        path = _module_path(chain, self.aliases) if chain else None
        if path and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self.aliases[node.targets[0].id] = path
        self.generic_visit(node)

    def visit_Call(self, node):  # getattr(X, "NAME", default) / hasattr(X, "NAME"): optional by construction
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            base = self._resolve(node.args[0]) or self._receiver(node.args[0])
            if base is not None and (node.func.id == "hasattr" or len(node.args) == 3):
                self.optional.add((*base, node.args[1].value))
        self.generic_visit(node)

    def _receiver(self, node) -> tuple | None:
        chain = _chain(node)
        if chain and chain[0] == "self":
            chain = chain[1:]
        return (self.receivers[chain[0]],) if chain and len(chain) == 1 and chain[0] in self.receivers else None

    def _resolve(self, node) -> tuple | None:
        """The path on the module a name chain denotes: `tm.trt.A.B` -> (A, B); `self.engine.f` ->
        (ICudaEngine, f); a bare receiver (`engine`) -> None (its class is only known, not used)."""
        chain = _chain(node)
        if not chain:
            return None
        path = _module_path(chain, self.aliases)
        if path is not None:
            return tuple(path) or None
        if chain[0] == "self" and len(chain) > 1:
            chain = chain[1:]
        if chain[0] in self.receivers and len(chain) > 1:
            return (self.receivers[chain[0]], *chain[1:])
        return None

    def visit_Attribute(self, node):
        path = self._resolve(node)
        if path and not any(p.startswith("__") for p in path):
            self.required.add(path)
            if isinstance(node.ctx, ast.Store):
                self.stored.add(path)
        self.generic_visit(node)


def _scans() -> list[_Scan]:
    scans = []
    for f in SCANNED:
        scan = _Scan({k: v for k, v in {**RECEIVERS["*"], **RECEIVERS.get(f.name, {})}.items() if v})
        scan.visit(ast.parse(f.read_text()))
        scans.append(scan)
    return scans


def _scan() -> tuple[set, set]:
    required, optional = set(), set()
    for scan in _scans():
        required |= scan.required
        optional |= scan.optional
    # a prefix of a longer path is checked by the longer one; names reached only via a guard are optional
    return {p for p in required if not any(q[:len(p)] == p and q != p for q in required)} - optional, optional


def _missing(mod, path: tuple) -> str | None:
    obj = mod
    for i, part in enumerate(path):
        if not hasattr(obj, part):
            return ".".join(path[: i + 1])
        obj = getattr(obj, part)
    return None


def test_scan_sees_the_engine_code():
    """Guard against the scan silently going blind (a renamed variable would drop its calls)."""
    required, optional = _scan()
    classes = {p[0] for p in required}
    assert {"Builder", "IBuilderConfig", "ICudaEngine", "IExecutionContext", "IRuntimeConfig", "IRuntimeCache",
            "Runtime", "OnnxParser", "BuilderFlag", "DynamicShapesKernelSpecializationStrategy"} <= classes, classes
    for must in [("BuilderFlag", "REQUIRE_USER_ALLOCATION"), ("IExecutionContext", "execute_async_v3"),
                 ("DynamicShapesKernelSpecializationStrategy", "EAGER"), ("IRuntimeConfig", "set_runtime_cache"),
                 ("ICudaEngine", "create_runtime_config"), ("IExecutionContext", "set_optimization_profile_async")]:
        assert must in required, must
    assert ("IExecutionContext", "is_stream_capturable") in optional
    assert len(required) > 60, len(required)


@needs_rtx
def test_every_tensorrt_name_the_engine_code_uses_exists_in_tensorrt_rtx():
    tm = trt_api.load_trt("tensorrt-rtx")
    required, optional = _scan()
    missing = sorted(m for p in required if (m := _missing(tm.trt, p)) and m not in trt_api.FULL_TRT_ONLY)
    assert not missing, f"not in {tm.module_name} {tm.version}: {missing}"
    absent_optional = sorted(".".join(p) for p in optional if _missing(tm.trt, p))
    # guarded names are optional to the code, but those RTX capture and loading rely on must be there
    for name in ("IExecutionContext.is_stream_capturable", "Runtime.get_engine_validity"):
        assert name not in absent_optional, absent_optional


@needs_rtx
def test_what_the_engine_code_assigns_or_passes_by_keyword_is_settable_or_accepted():
    tm = trt_api.load_trt("tensorrt-rtx")
    stored = set().union(*(scan.stored for scan in _scans()))
    assert ("IRuntimeConfig", "dynamic_shapes_kernel_specialization_strategy") in stored
    for cls, attr in sorted(stored):
        prop = getattr(getattr(tm.trt, cls), attr)
        assert isinstance(prop, property) and prop.fset is not None, f"{cls}.{attr} is not a settable property"
    # TrtModule.create_context passes the runtime config by keyword (the overload of create_execution_context)
    assert "runtime_config: " in tm.trt.ICudaEngine.create_execution_context.__doc__


# -- an engine built here, inspected as far as the bindings allow without a GPU ----------------------
@pytest.fixture(scope="module")
def rtx_engine(tiny_workdir, tmp_path_factory):
    if not HAS_RTX:
        pytest.skip("TensorRT-RTX is not installed")
    from workdir_copy import copy_workdir

    from vvtrt.engines import build_engines, manifest as mf

    wd = copy_workdir(tiny_workdir, tmp_path_factory.mktemp("wd_surface") / "wd")
    res = build_engines(wd, "tensorrt-rtx", components="connectors", precisions="fp32")
    folder = wd.engines_dir / res[0]["key"]
    entry = mf.read_manifest(folder, strict=True)["engines"]["connectors.fp32"]
    return folder / entry["engine"], entry


@needs_rtx
def test_engine_is_built_capturable_and_its_header_parses_without_a_gpu(rtx_engine):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only behaviour")
    path, entry = rtx_engine
    assert entry["user_allocation"] is True  # REQUIRE_USER_ALLOCATION was set and read back from the config
    tm = trt_api.load_trt("tensorrt-rtx")
    lg = tm.logger()
    lg.clear()
    runtime = tm.trt.Runtime(lg)
    assert runtime is not None
    blob = path.read_bytes()
    malformed = int(tm.trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)
    validity, diagnostics = runtime.get_engine_validity(blob)
    assert validity == tm.trt.EngineValidity.INVALID and not int(diagnostics) & malformed, (validity, diagnostics)
    for bad in (blob[:32], b"\0" * len(blob[:4096]), bytes([blob[0] ^ 0xFF]) + blob[1:]):
        validity, diagnostics = runtime.get_engine_validity(bad)
        assert int(diagnostics) & malformed, "a damaged header must be reported MALFORMED_ENGINE"
    lg.clear()
    engine = runtime.deserialize_cuda_engine(blob)
    assert engine is None, ("TensorRT-RTX now deserializes engines without a GPU: extend this test (and "
                            "builder.layer_summary) to inspect the engine here")
    assert any("CUDA" in e or "cuda" in e for e in lg.errors), lg.errors
