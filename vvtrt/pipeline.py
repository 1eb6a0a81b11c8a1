"""The stages behind the CLI verbs, as a Python API: each takes plain arguments, validates them into
typed errors, and leaves its files in the work directory. Each verb also takes the Realtime model: export
dispatches on the model (a Realtime preset or original checkpoint, `vvtrt.realtime.verbs`), the others on
the work dir's kind (`Workdir.kind`)."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from vvtrt.errors import InputError
from vvtrt.fsio import WorkdirLock, atomic_write_json, lock_wait_s
from vvtrt.option_checks import (check_cfg, check_frames, check_output_dir, check_output_file,
                                 check_precisions_exported, check_seed, resolve_device)
from vvtrt.precision import Precision, parse_precisions
from vvtrt.workdir import Workdir

log = logging.getLogger(__name__)


def is_realtime_workdir(workdir) -> bool:
    """Whether `workdir`'s workdir.json names the Realtime kind (a quick look; verbs still `Workdir.open`)."""
    from vvtrt.model.kinds import REALTIME as KIND, meta_kind

    try:
        return meta_kind(json.loads((Path(workdir).expanduser() / "workdir.json").read_text(encoding="utf-8"))) == KIND
    except (OSError, ValueError):
        return False


def run_export(model_spec: str, workdir, dtypes="fp32,fp16,bf16", steps: int | None = None, components="",
               seed: int = 0, force: bool = False, progress_factory=None, tokenizer=None, max_prompt: int | None = None,
               kv_buckets: tuple[int, ...] | None = None, quant=None) -> list[dict]:
    """Resolve the model (one pass through `vvtrt.model.resolve`: source, tokenizer, validated weights,
    `ModelInfo`), write the work dir's metadata and export every (component, dtype), holding the work-dir
    lock; graphs already there that the new settings make stale are re-exported too. `model_spec`: a
    preset, a checkpoint directory or a Hugging Face Hub id. `steps`: the sampler's K (default 10;
    Realtime models 5). `quant`: "int8" / "fp8" quantizes the GEMMs the component specs name (recorded in
    workdir.json and each quantized graph's export record; calibration: `vvtrt.quant.calibrate`)."""
    from vvtrt.components.specs import ExportOptions, build_specs, check_components
    from vvtrt.quant.config import QuantMode
    from vvtrt.export.onnx_export import clear_strays, export_all, sweep_export_temporaries
    from vvtrt.model.hub import local_source
    from vvtrt.export_checks import check_prompt_room, check_workdir_kind, source_context
    from vvtrt.model.resolve import model_kind, parse_source, resolve
    from vvtrt.model.text_tokenizer import load_text_tokenizer

    model_spec = local_source(model_spec)  # a Hub id: its snapshot in the Hub cache (downloaded when online)
    quant = QuantMode.parse(quant)
    if model_kind(model_spec) == "realtime":
        if quant is not None:
            raise InputError("--quant is not supported for VibeVoice-Realtime models yet: export without --quant")
        from vvtrt.realtime.verbs import run_realtime_export

        return run_realtime_export(model_spec, workdir, dtypes, steps, components, seed, force, progress_factory,
                                   tokenizer, max_prompt, kv_buckets)
    steps = 10 if steps is None else steps
    precisions = parse_precisions(dtypes)
    names = check_components(components)
    source = parse_source(model_spec, check_seed(seed), tokenizer)  # quick checks, before the work dir
    # what can be refused before the model loads or the work dir is touched (context from the config alone)
    options = ExportOptions.for_preset(source.preset, steps, source_context(source), max_prompt, kv_buckets)
    text_tokenizer = load_text_tokenizer(source)
    check_prompt_room(options, text_tokenizer)
    check_workdir_kind(workdir, "longform")
    wd = Workdir.create(workdir)
    with WorkdirLock(wd.root, "export", wait_s=lock_wait_s()):
        sweep_export_temporaries(wd)
        clear_strays(wd, force)  # before the model loads: a refusal is immediate
        resolved = resolve(source)
        # long-context sizes follow the model's context (ExportOptions.for_preset); --max-prompt/--kv-buckets
        options = ExportOptions.for_preset(source.preset, steps, resolved.info.context, max_prompt, kv_buckets)
        wd.write_meta(resolved.source, options, resolved.info, quant)
        from vvtrt.quant.gate import GATE_FILE

        (wd.root / GATE_FILE).unlink(missing_ok=True)  # graphs may change: the gate must run again
        catalog = build_specs(resolved.info, options)
        specs = {n: s for n, s in catalog.items() if n in names}
        tick = progress_factory(len(precisions) * len(specs), "export") if progress_factory else None
        calibrate = _calibrator(catalog, options, resolved.info, text_tokenizer) if quant else None
        try:
            return export_all(wd, _models_by_precision(resolved), specs, precisions, options.steps, force, tick,
                              calibrate)
        finally:
            if tick:
                tick.close()


def _calibrator(catalog, options, info, tokenizer):
    """`calibrate(model, precision)`: the quantized components' calibration feeds from the model's own run on
    the packaged prompt (`vvtrt.quant.calibrate`), plus what the export record says about them."""
    from vvtrt.quant.calibrate import CALIBRATION_TEXT, calibration_feeds, prompt_ids

    ids = prompt_ids(tokenizer, info.vocab, min(options.prefill_chunk, options.max_prompt))

    def calibrate(model, precision):
        feeds = calibration_feeds(model, catalog, options.steps, precision, ids)
        return {**feeds, "_about": {"text": "/".join(CALIBRATION_TEXT), "tokens": len(ids),
                                    "decode_rows": len(feeds["lm_decode"][1][0]), "seed": 0}}

    return calibrate


def _models_by_precision(resolved):
    """`factory(precision) -> model` for the export: the resolved fp32 model first, then cast in place,
    so one copy of the weights is in memory at a time (reloaded from the resolved source if needed)."""
    base = resolved.model

    def factory(p: Precision):
        nonlocal base
        if base is not None and p is Precision.FP32:
            return base
        model = base if base is not None else resolved.load()
        base = None
        return model.to(p.torch_dtype)

    return factory


def run_build(workdir, flavor="auto", components="", dtypes="", target_sm=None, force=False,
              progress_factory=None) -> list[dict]:
    """Build engines for the current exports, holding the work-dir lock for the whole stage."""
    from vvtrt.engines import build_engines
    from vvtrt.engines.builder import check_workdir_components
    from vvtrt.engines.trt_api import parse_sm

    wd = Workdir.open(workdir)
    comps = check_workdir_components(wd, components) if components else None
    precs = parse_precisions(dtypes) if dtypes else None
    if target_sm is not None and str(target_sm).lower() != "current":
        parse_sm(target_sm)
    with WorkdirLock(wd.root, "build", wait_s=lock_wait_s()):
        wd = Workdir.open(workdir)  # again: an export may have finished while this one waited
        n = len(wd.verify(comps, precs))
        tick = progress_factory(n, "build") if progress_factory else None
        try:
            return build_engines(wd, flavor, components=comps, precisions=precs, force=force,
                                 target_sm=target_sm, progress=tick)
        finally:
            if tick:
                tick.close()


def run_parity_cli(workdir, backend="onnxruntime", device="cpu", dtypes="", frames=16, e2e=True, json_path=None,
                   progress_factory=None) -> tuple[dict, dict]:
    from vvtrt.parity.harness import ParityOptions, run_parity
    from vvtrt.reports import to_jsonable, write_report
    from vvtrt.reports.environment import collect_environment
    from vvtrt.runtime.prompt import PORT_DEPARTURES

    json_out = check_output_file(json_path, "--json file") if json_path else None
    wd = Workdir.open(workdir)
    dev = str(resolve_device(device))
    realtime = wd.kind == "realtime"
    if realtime:
        from vvtrt.parity.realtime import check_parity_frames

        check_parity_frames(wd, frames)
    else:
        check_frames(wd.options(), frames, lowest=16, where=str(wd.root))
    precs = parse_precisions(dtypes) if dtypes else None
    check_precisions_exported(wd, precs or ())
    wd.verify(precisions=precs)
    opts = ParityOptions(backend=backend, device=dev, precisions=precs, stream_frames=frames,
                         e2e_frames=frames, e2e=e2e, cfg_scale=1.5 if realtime else 1.3)
    n = len(wd.exported()) * (1 if realtime else 2) + 3
    tick = progress_factory(n, "parity") if progress_factory else None
    try:
        body = run_parity(wd, opts, tick)
    finally:
        if tick:
            tick.close()
    meta = wd.meta()
    report = {"kind": "parity", "version": 1, "created": datetime.now(timezone.utc).isoformat(),
              "config": {"preset": meta["model"]["preset"] or meta["model"]["path"], "model": meta["model"],
                         "model_kind": wd.kind,
                         "dtypes": sorted({r["precision"] for r in body["rows"]}), "steps": meta["options"]["steps"],
                         "cfg_scale": opts.cfg_scale, "backends": [backend], "device": dev,
                         "frames": frames, "environment": collect_environment()},
              # where vvtrt follows Microsoft's original rather than transformers' port, and why
              "departures": [] if realtime else list(PORT_DEPARTURES), **body}
    if wd.quant() is not None:
        from vvtrt.quant.gate import write_gate

        report["quant_gate"] = write_gate(wd, report)
    paths = write_report(report, wd.reports_dir, f"parity_{backend}_{dev.replace(':', '')}")
    if json_out:
        atomic_write_json(json_out, to_jsonable(report))
    return report, paths


def run_synth(workdir, backend="torch", fallback=(), device=None, dtype=None, text=None, script_file=None,
              voices=(), output="out.wav", frames=None, max_frames=None, cfg_scale=None, seed=0, stream=False,
              cuda_graph="auto", allow_failed_quant: bool = False):
    """Speech from a work dir into a wav. `cfg_scale`: default 1.3 (long-form), 1.5 (Realtime). On a
    Realtime work dir `voices` is at most one voice preset (.safetensors; none: a synthetic voice for
    random-weight presets) and `frames` forces the end of speech after that many frames."""
    from vvtrt.runtime.audio_io import prepare_voice, read_voice
    from vvtrt.runtime.backends import parse_fallback
    from vvtrt.runtime.script import parse_script, read_script_file
    from vvtrt.runtime.synthesizer import Synthesizer, SynthesisResult

    if is_realtime_workdir(workdir):
        from vvtrt.realtime.verbs import realtime_synth

        output = check_output_file(output, "output file", ".wav")
        chunks, res = realtime_synth(workdir, backend, fallback, device, dtype, text, script_file, voices, frames,
                                     max_frames, cfg_scale, seed, cuda_graph)
        _write_audio(chunks, res, output, stream, frames or max_frames, frames is not None)
        return res
    cfg_scale = 1.3 if cfg_scale is None else cfg_scale
    if (text is None) == (script_file is None):
        raise InputError("give exactly one of --text TEXT or --script FILE")
    script = parse_script(text if text is not None else read_script_file(script_file))
    if voices and len(voices) != len(script.speakers):
        raise InputError(f"the script has {len(script.speakers)} speaker(s) but {len(voices)} voice(s) were given: "
                         "pass one --voice per speaker, in order of first appearance")
    voices = [read_voice(v) for v in voices]  # read and checked (empty, silent, NaN) before any model loads
    for wav in voices:
        prepare_voice(wav)
    check_seed(seed)
    cfg_scale = check_cfg(cfg_scale)
    output = check_output_file(output, "output file", ".wav")
    wd = Workdir.open(workdir)
    from vvtrt.quant.gate import check_gate

    check_gate(wd, allow_failed_quant)
    dev = resolve_device(device)
    precision = Precision.parse(dtype or ("bf16" if dev.type == "cuda" else "fp32"))
    fallback = parse_fallback(fallback)
    if backend != "torch" or any(b != "torch" for b in fallback.values()):
        check_precisions_exported(wd, [precision])
        wd.verify(precisions=[precision])
    check_frames(wd.options(), frames, max_frames, where=str(wd.root))
    preset = wd.source().preset
    if frames is None and preset:  # refused now, not after a run of frames that never speak
        raise InputError(f"{wd.root} holds the random-weight preset {preset!r}, which never chooses to speak on its "
                         "own: pass --frames N to force N speech frames, e.g. --frames 30")
    synth = Synthesizer.from_workdir(wd.root, backend=backend, device=dev, precision=precision,
                                     fallback=fallback, cuda_graph=cuda_graph)
    res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
    _write_audio(synth.stream(script, voices, frames=frames, max_frames=max_frames, cfg_scale=cfg_scale, seed=seed,
                              result=res), res, output, stream, frames or max_frames,
                 frames is not None)
    return res


def _write_audio(chunks, res, output, stream: bool, total, forced: bool = False) -> None:
    """Run the generation (`chunks`), writing the wav chunk by chunk (`stream`, the partial file removed on
    an error) or at once at the end (atomically)."""
    from tqdm import tqdm

    from vvtrt.runtime.audio_io import WavStreamWriter, write_wav

    with tqdm(total=total, desc="synth", unit="frame", disable=None, leave=False) as bar:
        writer = WavStreamWriter(output) if stream else None
        try:
            for chunk in chunks:
                bar.update(1)
                if writer:
                    writer.write(chunk)
        except BaseException:
            if writer:
                writer.abort()
            raise
        if writer:
            writer.close()
    if res.frames == 0:
        raise InputError(no_audio_message(res.stop_reason, forced))
    if not stream:
        write_wav(output, res.audio)


def no_audio_message(stop_reason: str, forced: bool) -> str:
    """Why a synthesis gave no audio, and what to do: a model that never chose to speak (random weights
    never do) needs `--frames N`, which forces N speech frames."""
    if forced:
        return f"no audio was produced (stop: {stop_reason})"
    return (f"no audio was produced (stop: {stop_reason}): the model never chose to speak, as random-weight "
            "presets never do; pass --frames N to force N speech frames, e.g. --frames 30")


def check_bench_options(workdir, backends, device, dtype, frames, prompt_tokens, streams, out_dir) -> str:
    """The bench's work-dir-dependent limits, before any model loads; returns the device to use. A Realtime
    work dir's are `vvtrt.realtime.verbs.check_realtime_bench`'s. `prompt_tokens` None: 512."""
    wd = Workdir.open(workdir)
    if wd.kind == "realtime":
        from vvtrt.realtime.verbs import check_realtime_bench

        return check_realtime_bench(workdir, backends, device, dtype, frames, prompt_tokens, streams=streams,
                                    out_dir=out_dir).device
    prompt_tokens = 512 if prompt_tokens is None else prompt_tokens
    dev = resolve_device(device)
    precision = Precision.parse(dtype or ("bf16" if dev.type == "cuda" else "fp32"))
    if any(not b.strip().startswith("torch") for b in str(backends).split(",") if b.strip()):
        check_precisions_exported(wd, [precision])
        wd.verify(precisions=[precision])
    opts = wd.options()
    if prompt_tokens > opts.max_prompt:
        raise InputError(f"--prompt-tokens must be at most {opts.max_prompt} (the prompt length exported in "
                         f"{wd.root}), got {prompt_tokens}")
    check_frames(opts, frames + prompt_tokens, option="--frames plus --prompt-tokens", lowest=2, where=str(wd.root))
    if streams > opts.max_batch // 2:
        raise InputError(f"--streams must be at most {opts.max_batch // 2} (the batch exported in {wd.root}), "
                         f"got {streams}")
    if out_dir is not None:
        check_output_dir(out_dir, "--out directory")
    return str(dev)


def run_bench_verb(workdir, backends="torch", device=None, dtype=None, frames=60, prompt_tokens=None, repeats=None,
                   cfg_scale=None, baselines=(), streams=1, out_dir=None, compare=()) -> dict:
    """`vvtrt bench`: a Realtime work dir's bench (`vvtrt.realtime.verbs.realtime_bench`) or the long-form one
    (defaults: 512 prompt tokens, 3 repeats, CFG 1.3); the written paths."""
    if is_realtime_workdir(workdir):
        from vvtrt.realtime.verbs import realtime_bench

        if compare:
            raise InputError("--compare-workdir is for long-form work dirs only")
        return realtime_bench(workdir, backends, device, dtype, frames, prompt_tokens, repeats, cfg_scale, baselines,
                              streams, out_dir)
    from vvtrt.bench.run import run_bench_cli

    device = check_bench_options(workdir, backends, device, dtype, frames, prompt_tokens, streams, out_dir)
    for other in compare:
        check_bench_options(other, backends, device, dtype, frames, prompt_tokens, streams, out_dir)
    return run_bench_cli(workdir, backends, device, dtype, frames, 512 if prompt_tokens is None else prompt_tokens,
                         repeats or 3, 1.3 if cfg_scale is None else cfg_scale, baselines, out_dir, streams,
                         compare_workdirs=compare)


def run_demo(workdir="demo-out", frames=16, progress_factory=None) -> dict:
    """export -> build (CPU-only TensorRT-RTX, if installed) -> parity -> a wav -> reports, on `tiny`."""
    from vvtrt.components.specs import ExportOptions
    from vvtrt.engines.trt_api import available_flavors

    check_frames(ExportOptions.for_preset("tiny"), frames, lowest=16, where="the tiny model")
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
