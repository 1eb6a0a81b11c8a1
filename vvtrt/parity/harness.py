"""`vvtrt parity`: every exported component and dtype against the fp32 PyTorch reference on a grid of
shapes different from the export shapes; the state-carrying steps against transformers' own streaming
caches over many frames; and the whole loop against transformers `generate` (`vvtrt.parity.e2e`). A Realtime
work dir has the component rows and its own end-to-end rows (`vvtrt.parity.realtime`: the windowed loop on
the backend's runners against our PyTorch reference loop).

Every requested check either runs or is a failure: a component, streaming step or end-to-end run that
cannot run here (backend or device unavailable, a missing or broken ONNX / engine file) is recorded as
skipped, with why, and fails the report."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from vvtrt.parity.compare import error_stats
from vvtrt.parity.runners import ParityOptions, _method, make_runner, run_each  # noqa: F401 - re-exported
from vvtrt.parity.streaming import streaming_rows
from vvtrt.precision import Precision
from vvtrt.runtime.runner import TorchRunner
from vvtrt.workdir import Workdir


def _check_component(wd: Workdir, spec, precision: Precision, opts: ParityOptions, ref_model, models) -> list[dict]:
    """Rows of one exported (component, precision) on its parity grid; raises VvtrtError if it cannot run."""
    device = torch.device(opts.device)
    method = _method(opts.backend, device, precision)
    model = models.get(precision, device) if opts.backend == "torch" else None
    runner = make_runner(wd, spec, precision, opts.backend, device, model)
    runner.activate()
    ref = TorchRunner(spec, Precision.FP32, device, ref_model, wd.options().steps)
    quant = wd.quant() if spec.quant else None
    bf16 = TorchRunner(spec, Precision.BF16, device, _bf16_model(wd, device), wd.options().steps) if quant else None
    rows = []
    try:
        for i, dims in enumerate(spec.parity_grid):
            gen = torch.Generator().manual_seed(opts.seed * 1000 + i)
            feed = {k: v.to(device) for k, v in spec.sample(dims, precision, gen).items()}
            feed32 = {k: (v.float() if v.is_floating_point() else v) for k, v in feed.items()}
            want = ref.infer(feed32)
            got = runner.infer(feed)
            own = bf16.infer({k: (v.bfloat16() if v.is_floating_point() and spec.input(k).dtype == "model" else v)
                              for k, v in feed32.items()}) if bf16 else None
            for t in spec.outputs:
                st = error_stats(got[t.name], want[t.name])
                tol = spec.tol(t.name, precision)
                extra = {}
                if own is not None:
                    from vvtrt.quant.gate import bound

                    b16 = error_stats(own[t.name].float(), want[t.name]).rel_l2
                    tol, extra = bound(quant, b16), {"quant": quant.value, "bf16_rel_l2": b16}
                rows.append({"component": spec.name, "precision": precision.value, "backend": opts.backend,
                             "method": method, "dims": dict(dims), "output": t.name, **st.to_json(),
                             "tolerance": tol, "passed": st.passed(tol), **extra})
    finally:
        runner.deactivate()
    return rows


_BF16_MODELS: dict = {}


def _bf16_model(wd: Workdir, device):
    """The model in bf16 (PyTorch's own bf16 error sets a quantized component's bound), one per work dir."""
    key = (str(wd.root), str(device))
    if key not in _BF16_MODELS:
        from vvtrt.model.resolve import load_model

        _BF16_MODELS.clear()
        _BF16_MODELS[key] = load_model(wd.source()).to(device=device, dtype=torch.bfloat16)
    return _BF16_MODELS[key]


def component_rows(wd: Workdir, model32, opts: ParityOptions, models, progress=None) -> list[dict]:
    """Each exported (component, precision) vs the fp32 torch wrapper on the spec's parity grid. One that
    cannot run here (backend, device, missing or broken file) is a skipped row naming why: a failure."""
    specs = wd.specs()
    device = torch.device(opts.device)
    ref_model = model32.to(device)

    def skip(comp, precision, why):
        return {"component": comp, "precision": precision.value, "backend": opts.backend,
                "method": _method(opts.backend, device, precision), "dims": {}, "output": "*", "max_abs": None,
                "max_rel": None, "rel_l2": None, "cosine": None, "tolerance": None, "passed": None, "skipped": why}

    return run_each(wd, opts, progress, "", lambda c, p: _check_component(wd, specs[c], p, opts, ref_model, models),
                    skip)


def _num(x) -> str:
    return "nan" if x is None else f"{x:.3g}"


@contextmanager
def _strict_fp32():
    """fp32 means fp32: PyTorch runs cuDNN convolutions in TF32 by default (`cudnn.allow_tf32`), which
    put ~5e-4 of error into the fp32 reference of every convolutional component on the GPU (seen on the
    H100, where ONNX Runtime, with `use_tf32=0`, was the exact one)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _failures(rows, stream, e2e) -> list[str]:
    """One line per failed check and per check that did not run (why)."""
    out = []
    for r in rows:
        where = f"{r['component']}.{r['precision']} ({r['method']})"
        if r["passed"] is None:
            out.append(f"{where}: not run: {r.get('skipped') or 'no reason recorded'}")
        elif not r["passed"]:
            out.append(f"{r['component']}.{r['precision']} output {r['output']} at {r['dims']}: rel_l2 "
                       f"{_num(r['rel_l2'])} > {_num(r['tolerance'])} ({r['method']})")
    for r in stream:
        where = f"streaming {r['component']}.{r['precision']}"
        if r["passed"] is None:
            out.append(f"{where} ({r['method']}): not run: {r.get('skipped') or 'no reason recorded'}")
        elif not r["passed"]:
            out.append(f"{where} frame {r['frame']} {r['output']}: rel_l2 {_num(r['rel_l2'])}")
    out += [f"e2e {r['name']} ({r['backend']}): {r['notes']}" for r in e2e
            if r["passed"] is False or (r["passed"] is None and r.get("gated") is not False)]
    return out


def _unmatched_requests(wd: Workdir, opts: ParityOptions) -> list[str]:
    """Requested precisions / components with nothing exported to check: each is a check that did not run."""
    exported = wd.exported()
    out = [f"precision {p.value} was requested but has no exported graph: nothing of it was checked"
           for p in opts.precisions or () if p not in {q for _, q in exported}]
    out += [f"component {c} was requested but has no exported graph: nothing of it was checked"
            for c in opts.components or () if c not in {n for n, _ in exported}]
    return out


def run_parity(wd: Workdir, opts: ParityOptions, progress=None) -> dict:
    """The full parity report body (see `vvtrt.reports.schema` for the format). It passes only if every
    requested check ran and passed; informational rows neither pass nor fail."""
    from vvtrt.model.resolve import load_model
    from vvtrt.parity.e2e import e2e_rows
    from vvtrt.reports.schema import parity_counts
    from vvtrt.runtime.backends import ModelCache

    with _strict_fp32():
        models = ModelCache(wd)
        if wd.kind == "realtime":
            from vvtrt.parity.realtime import realtime_e2e_rows
            from vvtrt.realtime.backends import load_realtime_model

            model32 = load_realtime_model(wd.source())
            rows, stream = component_rows(wd, model32, opts, models, progress), []
            e2e = realtime_e2e_rows(wd, model32, opts, models, progress) if opts.e2e else []
        else:
            model32 = load_model(wd.source())
            rows = component_rows(wd, model32, opts, models, progress)
            stream = streaming_rows(wd, model32, opts, models, progress)
            e2e = e2e_rows(wd, opts, models, progress) if opts.e2e else []
    body = {"rows": rows, "streaming": stream, "e2e": e2e}
    counts = parity_counts(body)
    failures = _unmatched_requests(wd, opts) + _failures(rows, stream, e2e)
    if counts["total"]["run"] == 0:
        failures.append("no check ran")
    return {**body, "failures": failures, "counts": counts, "passed": not failures}
