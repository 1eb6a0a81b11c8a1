"""The stages behind the CLI verbs, as a Python API: each takes plain arguments, validates them into
typed errors, and leaves its files in the work directory."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from vvtrt.errors import InputError
from vvtrt.precision import Precision, parse_precisions
from vvtrt.workdir import Workdir

log = logging.getLogger(__name__)


def run_export(model_spec: str, workdir, dtypes="fp32,fp16,bf16", steps: int = 10, components="", seed: int = 0,
               force: bool = False, progress_factory=None) -> list[dict]:
    """Resolve the model, write the work dir's metadata and export every (component, dtype)."""
    from vvtrt.components.info import ModelInfo
    from vvtrt.components.specs import ExportOptions, build_specs, check_components
    from vvtrt.export.onnx_export import export_all
    from vvtrt.model.presets import load_model, resolve_model

    precisions = parse_precisions(dtypes)
    names = check_components(components)
    source = resolve_model(model_spec, seed)
    options = ExportOptions.for_preset(source.preset, steps=steps)
    wd = Workdir.create(workdir)
    base = load_model(source)
    info = ModelInfo.from_model(base)
    wd.write_meta(source, options, info)
    specs = {n: s for n, s in build_specs(info, options).items() if n in names}

    def factory(p: Precision):
        nonlocal base
        if base is not None and p is Precision.FP32:
            return base
        model = base if base is not None else load_model(source)
        base = None  # cast in place: one copy of the weights in memory at a time
        return model.to(p.torch_dtype)

    order = sorted(precisions, key=lambda p: p is not Precision.FP32)  # fp32 first, from the fresh build
    tick = progress_factory(len(order) * len(specs), "export") if progress_factory else None
    try:
        return export_all(wd, factory, specs, order, options.steps, force, tick)
    finally:
        if tick:
            tick.close()


def run_build(workdir, flavor="auto", components="", dtypes="", target_sm=None, force=False,
              progress_factory=None) -> list[dict]:
    from vvtrt.components.specs import check_components
    from vvtrt.engines import build_engines

    wd = Workdir.open(workdir)
    comps = check_components(components) if components else None
    precs = parse_precisions(dtypes) if dtypes else None
    n = sum(1 for c, p in wd.exported() if (not comps or c in comps) and (not precs or p in precs))
    tick = progress_factory(n, "build") if progress_factory else None
    try:
        return build_engines(wd, flavor, components=comps, precisions=precs, force=force, target_sm=target_sm,
                             progress=tick)
    finally:
        if tick:
            tick.close()


def run_parity_cli(workdir, backend="onnxruntime", device="cpu", dtypes="", frames=16, e2e=True, json_path=None,
                   progress_factory=None) -> tuple[dict, dict]:
    from vvtrt.parity.harness import ParityOptions, run_parity
    from vvtrt.reports import write_report
    from vvtrt.reports.environment import collect_environment

    wd = Workdir.open(workdir)
    if frames < 16:
        raise InputError(f"--frames must be >= 16 for the streaming and end-to-end checks, got {frames}")
    precs = parse_precisions(dtypes) if dtypes else None
    opts = ParityOptions(backend=backend, device=device, precisions=precs, stream_frames=frames,
                         e2e_frames=frames, e2e=e2e)
    n = len(wd.exported()) * 2 + 3
    tick = progress_factory(n, "parity") if progress_factory else None
    try:
        body = run_parity(wd, opts, tick)
    finally:
        if tick:
            tick.close()
    meta = wd.meta()
    report = {"kind": "parity", "version": 1, "created": datetime.now(timezone.utc).isoformat(),
              "config": {"preset": meta["model"]["preset"] or meta["model"]["path"], "model": meta["model"],
                         "dtypes": sorted({r["precision"] for r in body["rows"]}), "steps": meta["options"]["steps"],
                         "cfg_scale": opts.cfg_scale, "backends": [backend], "device": device,
                         "frames": frames, "environment": collect_environment()},
              **body}
    paths = write_report(report, wd.reports_dir, f"parity_{backend}_{Path(device).name.replace(':', '')}")
    if json_path:
        import json

        from vvtrt.reports import to_jsonable

        Path(json_path).write_text(json.dumps(to_jsonable(report), indent=2))
    return report, paths


def run_synth(workdir, backend="torch", fallback=(), device=None, dtype=None, text=None, script_file=None,
              voices=(), output="out.wav", frames=None, max_frames=None, cfg_scale=1.3, seed=0, stream=False,
              cuda_graph="auto"):
    from vvtrt.runtime.audio_io import write_wav
    from vvtrt.runtime.backends import parse_fallback
    from vvtrt.runtime.script import parse_script, read_script_file
    from vvtrt.runtime.synthesizer import Synthesizer, SynthesisResult

    if (text is None) == (script_file is None):
        raise InputError("give exactly one of --text TEXT or --script FILE")
    script = parse_script(text if text is not None else read_script_file(script_file))
    synth = Synthesizer.from_workdir(workdir, backend=backend, device=device, precision=dtype,
                                     fallback=parse_fallback(fallback), cuda_graph=cuda_graph)
    from tqdm import tqdm

    res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
    total = frames or max_frames
    with tqdm(total=total, desc="synth", unit="frame", disable=None) as bar:
        writer = _StreamWriter(output) if stream else None
        for chunk in synth.stream(script, list(voices), frames=frames, max_frames=max_frames,
                                  cfg_scale=cfg_scale, seed=seed, result=res):
            bar.update(1)
            if writer:
                writer.write(chunk)
        if writer:
            writer.close()
    if res.frames == 0:
        raise InputError(f"no audio was produced (stop: {res.stop_reason})")
    if not stream:
        write_wav(output, res.audio)
    return res


class _StreamWriter:
    """Append chunks to a wav as they arrive (the file is valid after every chunk)."""

    def __init__(self, path):
        import soundfile as sf

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.f = sf.SoundFile(str(path), "w", samplerate=24000, channels=1, subtype="FLOAT")
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot write {path}: {exc}") from None

    def write(self, chunk):
        self.f.write(chunk)
        self.f.flush()

    def close(self):
        self.f.close()


def run_demo(workdir="demo-out", frames=16, progress_factory=None) -> dict:
    """export -> build (CPU-only TensorRT-RTX, if installed) -> parity -> a wav -> reports, on `tiny`."""
    from vvtrt.engines.trt_api import available_flavors

    out: dict[str, str] = {}
    run_export("tiny", workdir, "fp32,fp16,bf16", 10, "", 0, False, progress_factory)
    out["onnx"] = str(Path(workdir) / "onnx")
    if available_flavors():
        run_build(workdir, "auto", "", "", None, False, progress_factory)
        out["engines"] = str(Path(workdir) / "engines")
    else:
        out["engines"] = "skipped (no TensorRT / TensorRT-RTX builder installed)"
    report, paths = run_parity_cli(workdir, "onnxruntime", "cpu", "", frames, True, None, progress_factory)
    out["parity"] = f"{paths['md']} ({'passed' if report['passed'] else 'FAILED'})"
    wav = Path(workdir) / "demo.wav"
    res = run_synth(workdir, "onnxruntime", (), "cpu", "fp32", "Speaker 0: Hello from the vvtrt demo.", None, (),
                    str(wav), frames, None, 1.3, 0, False, False)
    out["wav"] = f"{wav} ({res.frames} frames, {res.audio_seconds:.2f} s, RTF {res.rtf:.2f} on the CPU)"
    from vvtrt.bench.run import run_bench_cli

    bpaths = run_bench_cli(workdir, "torch,onnxruntime", "cpu", "fp32", frames, 64, 1, 1.3, ("pytorch-eager",),
                           None)
    out["bench"] = bpaths["md"]
    if not report["passed"]:
        from vvtrt.errors import ParityError

        raise ParityError(f"demo parity failed; see {paths['md']}")
    return out
