"""The Realtime side of the CLI verbs (`vvtrt.pipeline` dispatches here on the model's kind): export of a
Realtime preset or original checkpoint into a Realtime work dir, and synthesis from one. Build and
parity go through the long-form stages, which take the work dir's own specs (`Workdir.specs`)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vvtrt.errors import InputError
from vvtrt.precision import Precision

log = logging.getLogger(__name__)
DEFAULT_CFG = 1.5  # Microsoft's demos
MAX_BENCH_STREAMS = 1024  # Realtime bench: twice the 500 real-time streams the engine aims for


def parse_realtime_source(spec: str, seed: int = 0, tokenizer=None):
    """`(ModelSource, RealtimeConfig)` of a Realtime preset or an original Realtime checkpoint directory,
    the directory validated from its config and tensor headers (nothing is allocated)."""
    from vvtrt.model.resolve import ModelSource, check_tokenizer_dir
    from vvtrt.realtime.presets import is_realtime_preset, preset_config

    tok = check_tokenizer_dir(tokenizer)
    if is_realtime_preset(spec):
        key = spec.strip().lower()
        return ModelSource(preset=key, seed=seed, tokenizer=tok), preset_config(key)
    from vvtrt.realtime.checkpoint import plan_realtime_checkpoint

    path = Path(spec).expanduser().resolve()
    plan = plan_realtime_checkpoint(path)
    return ModelSource(path=str(path), seed=seed, tokenizer=tok), plan.config


def _models_by_precision(model, source):
    """`factory(precision)` for `export_all` (which asks for fp32 first): the loaded fp32 model, then that
    one cast in place, later ones reloaded from `source` (one copy of the weights in memory at a time,
    never cast from a reduced precision)."""
    from vvtrt.realtime.backends import load_realtime_model

    base = model

    def factory(p: Precision):
        nonlocal base
        if base is not None and p is Precision.FP32:
            return base
        m = base if base is not None else load_realtime_model(source)
        base = None
        return m.to(p.torch_dtype)
    return factory


def run_realtime_export(model_spec: str, workdir, dtypes="fp32,fp16,bf16", steps: int | None = None,
                        components="", seed: int = 0, force: bool = False, progress_factory=None,
                        tokenizer=None, max_prompt=None, kv_buckets=None) -> list[dict]:
    """`vvtrt export` of a Realtime model: workdir.json of kind "realtime" and every selected graph that is
    not current, under the work-dir lock (the long-form export's guarantees, `export_all`)."""
    from vvtrt.export.onnx_export import clear_strays, export_all, sweep_export_temporaries
    from vvtrt.export_checks import check_workdir_kind
    from vvtrt.fsio import WorkdirLock, lock_wait_s
    from vvtrt.option_checks import check_seed
    from vvtrt.precision import parse_precisions
    from vvtrt.realtime.backends import load_realtime_model, realtime_tokenizer
    from vvtrt.realtime.specs import RealtimeExportOptions
    from vvtrt.realtime.workdir_meta import check_realtime_components
    from vvtrt.workdir import Workdir

    precisions = parse_precisions(dtypes)
    names = check_realtime_components(components)
    if max_prompt is not None:
        raise InputError("--max-prompt is for long-form models: the Realtime model reads its text 5 tokens at a time")
    source, cfg = parse_realtime_source(model_spec, check_seed(seed), tokenizer)
    options = RealtimeExportOptions.for_config(cfg, 5 if steps is None else steps, kv_buckets)
    realtime_tokenizer(source)  # a missing tokenizer is said before any weights load
    check_workdir_kind(workdir, "realtime")  # before workdir.json could be rewritten
    wd = Workdir.create(workdir)
    with WorkdirLock(wd.root, "export", wait_s=lock_wait_s()):
        sweep_export_temporaries(wd)
        clear_strays(wd, force)
        model = load_realtime_model(source)
        wd.write_meta(source, options, model.rt_config)
        specs = {n: s for n, s in wd.specs().items() if n in names}
        tick = progress_factory(len(precisions) * len(specs), "export") if progress_factory else None
        try:
            return export_all(wd, _models_by_precision(model, source), specs, precisions, options.steps, force, tick)
        finally:
            if tick:
                tick.close()


@dataclass
class RealtimeSynthResult:
    """What `vvtrt synth` reports of a Realtime run (the attributes the CLI prints)."""

    audio: np.ndarray | None = None
    frames: int = 0
    stop_reason: str = ""
    ttfa_s: float = 0.0
    total_s: float = 0.0
    hop: int = 3200
    forced: bool = False  # never: --frames forces the EOS frame, which stop_reason "forced_eos" says
    chunks: list = field(default_factory=list, repr=False)

    @property
    def audio_seconds(self) -> float:
        return self.frames * self.hop / 24000

    @property
    def rtf(self) -> float:
        return self.total_s / self.audio_seconds if self.frames else 0.0


def check_realtime_frames(limit: int, frames, max_frames, where: str) -> None:
    """--frames / --max-frames within 1 .. `limit` (the frames the model's positions leave), frames <= max;
    no positions left at all is said as such."""
    if limit < 1:
        raise InputError(f"the voice and the text fill the model's context in {where} ({1 - limit} position(s) too "
                         "many, none left for audio): use a shorter --text or a voice with a shorter prompt")
    for name, value in (("--frames", frames), ("--max-frames", max_frames)):
        if value is not None and not 1 <= value <= limit:
            raise InputError(f"{name} must be from 1 to {limit} (the positions {where} leaves after the voice and "
                             f"the text), got {value}")
    if frames is not None and max_frames is not None and frames > max_frames:
        raise InputError(f"--frames {frames} contradicts --max-frames {max_frames}: give one of them")


def _voice_for(wd, voices, cfg):
    """The voice preset given (checked against the model), or for a random-weight preset a synthetic one
    made by the model's own prefill."""
    from vvtrt.realtime.voices import read_voice

    if len(voices) > 1:
        raise InputError(f"the Realtime model speaks with one voice, {len(voices)} were given: pass one --voice")
    if voices:
        return read_voice(voices[0], cfg)
    source = wd.source()
    if not source.preset:
        raise InputError(f"{wd.root} holds a real checkpoint: pass --voice PRESET.safetensors (import Microsoft's "
                         ".pt presets with `vvtrt voices import`)")
    from vvtrt.realtime.backends import load_realtime_model
    from vvtrt.realtime.synthetic import make_voice

    return make_voice(load_realtime_model(source), "synthetic")


def realtime_synth(workdir, backend="torch", fallback=(), device=None, dtype=None, text=None, script_file=None,
                   voices=(), frames=None, max_frames=None, cfg_scale=None, seed=0, cuda_graph="auto"):
    """`(chunks, result)` of `vvtrt synth` on a Realtime work dir: `chunks` yields float32 audio chunks,
    filling `result` as it goes. `frames` forces the EOS after that many frames (random weights)."""
    from vvtrt.option_checks import check_cfg, check_seed
    from vvtrt.realtime.backends import realtime_tokenizer, require_realtime
    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.realtime.text_feed import whole_text_ids
    from vvtrt.workdir import Workdir

    if fallback:
        raise InputError("--fallback is for long-form work dirs: a Realtime work dir runs every component on --backend")
    if script_file is not None or text is None:
        raise InputError("the Realtime model speaks plain text: give --text TEXT (no --script)")
    check_seed(seed)
    cfg_scale = check_cfg(DEFAULT_CFG if cfg_scale is None else cfg_scale)
    wd = Workdir.open(workdir)
    require_realtime(wd)
    cfg = wd.info()
    voice = _voice_for(wd, voices, cfg)
    n_ids = len(whole_text_ids(text, realtime_tokenizer(wd.source())))
    check_realtime_frames(cfg.context - 1 - voice["tts_lm"].length - n_ids, frames, max_frames, str(wd.root))
    kw = {} if cuda_graph == "auto" else {"graphs": bool(cuda_graph)}
    rt = RealtimeRunner.from_workdir(wd.root, backend, device, dtype, **kw)
    res = RealtimeSynthResult(hop=cfg.hop)
    steps = wd.options().steps

    def chunks():
        t0 = time.perf_counter()
        for chunk in rt.stream(text, voice, seed=seed, cfg_scale=cfg_scale, steps=steps, max_frames=max_frames,
                               force_eos_frame=None if frames is None else frames - 1):
            if not res.frames:
                res.ttfa_s = time.perf_counter() - t0
            res.chunks.append(chunk)
            res.frames += 1
            res.total_s = time.perf_counter() - t0
            yield chunk
        res.stop_reason = rt.last_stop_reason
        res.audio = np.concatenate(res.chunks) if res.chunks else np.zeros(0, np.float32)

    return chunks(), res


# -- vvtrt bench on a Realtime work dir -----------------------------------------------------------------
BENCH_VARIANTS = {"torch": ("torch", False), "torch-compile": ("torch", True),
                  "torch-max-autotune": ("torch", "max-autotune-no-cudagraphs"),
                  "onnxruntime": ("onnxruntime", False), "tensorrt": ("tensorrt", False)}


@dataclass(frozen=True)
class RealtimeBenchPlan:
    """The checked options of `vvtrt bench` on a Realtime work dir (`check_realtime_bench`)."""

    workdir: str
    variant: str
    device: str
    precision: str
    settings: object  # RealtimeBenchSettings
    out_dir: str | None


def _bench_variant(backends, baselines, prompt_tokens) -> str:
    if baselines:
        raise InputError("--baseline is for long-form work dirs: a Realtime work dir is measured on its --backend "
                         "alone; drop --baseline")
    if prompt_tokens is not None:
        raise InputError("--prompt-tokens is for long-form work dirs: the Realtime model reads its text 5 tokens at "
                         "a time; drop --prompt-tokens")
    names = [b.strip() for b in str(backends).split(",") if b.strip()]
    if len(names) != 1:
        raise InputError(f"a Realtime work dir is measured on one --backend a run, got {len(names)}: run once per "
                         "backend")
    if names[0] not in BENCH_VARIANTS:
        raise InputError(f"unknown Realtime bench backend {names[0]!r}: choose from {', '.join(BENCH_VARIANTS)}")
    return names[0]


def _bench_capacity(wd, frames: int) -> int:
    """The smallest exported KV bucket that holds a stream of `frames` frames (synthetic voice, the bench
    text); an InputError when even the largest does not."""
    import math

    from vvtrt.realtime.backends import realtime_tokenizer
    from vvtrt.realtime.bench import TEXT
    from vvtrt.realtime.synthetic import DEFAULT_TTS_LEN
    from vvtrt.realtime.text_feed import whole_text_ids

    text = len(whole_text_ids(TEXT, realtime_tokenizer(wd.source())))
    need = DEFAULT_TTS_LEN + min(text, 5 * math.ceil(frames / 6)) + frames + 1
    buckets = wd.options().kv_buckets
    fits = [b for b in buckets if b >= need]
    if not fits:
        raise InputError(f"--frames {frames} needs {need} cache positions a stream (a {DEFAULT_TTS_LEN}-position "
                         f"voice, the text, the frames); the largest exported KV bucket of {wd.root} is "
                         f"{buckets[-1]}: lower --frames")
    return fits[0]


def check_realtime_bench(workdir, backends="torch", device=None, dtype=None, frames=60, prompt_tokens=None,
                         repeats=None, cfg_scale=None, baselines=(), streams=1, out_dir=None) -> RealtimeBenchPlan:
    """`vvtrt bench` options on a Realtime work dir, checked before any model loads (module doc of
    `vvtrt.realtime.bench` for what they mean there)."""
    from vvtrt.option_checks import (REPEATS_MAX, check_cfg, check_output_dir, check_precisions_exported,
                                     resolve_device)
    from vvtrt.realtime.backends import require_realtime
    from vvtrt.realtime.bench import RealtimeBenchSettings, powers_of_two_to
    from vvtrt.workdir import Workdir

    variant = _bench_variant(backends, baselines, prompt_tokens)
    wd = Workdir.open(workdir)
    require_realtime(wd)
    dev = resolve_device(device)
    precision = Precision.parse(dtype or ("bf16" if dev.type == "cuda" else "fp32"))
    if BENCH_VARIANTS[variant][0] != "torch":
        check_precisions_exported(wd, [precision])
        wd.verify(precisions=[precision])
        most = wd.options().max_batch // 2
        if streams > most:
            raise InputError(f"--streams must be at most {most} on {variant} (the batch exported in {wd.root}), "
                             f"got {streams}")
    for name, value in (("--frames", frames), ("--streams", streams), ("--repeats", repeats or 1)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if streams > MAX_BENCH_STREAMS:
        raise InputError(f"--streams must be at most {MAX_BENCH_STREAMS} (the bench doubles 1, 2, 4 ... up to it, "
                         f"each batch held in memory at once), got {streams}")
    if repeats is not None and repeats > REPEATS_MAX:
        raise InputError(f"--repeats must be at most {REPEATS_MAX}, got {repeats}")
    if out_dir is not None:
        check_output_dir(out_dir, "--out directory")
    cuda = dev.type == "cuda"
    counts = powers_of_two_to(streams)
    settings = RealtimeBenchSettings(
        requests=repeats or 20, warmup=3 if cuda else 1, frames=frames, batches=counts, engine_streams=counts,
        capacity=_bench_capacity(wd, frames), replays=200 if cuda else 10, steps=wd.options().steps,
        cfg_scale=check_cfg(DEFAULT_CFG if cfg_scale is None else cfg_scale))
    return RealtimeBenchPlan(str(wd.root), variant, str(dev), precision.value, settings,
                             None if out_dir is None else str(out_dir))


def _bench_voice(rt, wd, precision, device):
    """A synthetic voice made by the work dir's model (its lengths like the released presets')."""
    from vvtrt.realtime.backends import load_realtime_model
    from vvtrt.realtime.synthetic import make_voice

    model = rt.model if rt.model is not None else load_realtime_model(wd.source(), precision, device)
    return make_voice(model, "synthetic")


def run_realtime_bench_cli(plan: RealtimeBenchPlan) -> dict:
    """Measure `plan` (`vvtrt.realtime.bench`) and write ``bench_<model>_<dtype>_k<K>_<backend>.{json,md,png}``
    into its out dir or the work dir's reports folder."""
    from vvtrt.realtime.bench import run_realtime_bench
    from vvtrt.realtime.bench_report import write_outputs
    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.workdir import Workdir

    wd = Workdir.open(plan.workdir)
    backend, compile_ = BENCH_VARIANTS[plan.variant]

    def load():
        rt = RealtimeRunner.from_workdir(wd.root, backend, plan.device, plan.precision, compile=compile_)
        return rt, _bench_voice(rt, wd, Precision.parse(plan.precision), rt.device)

    model = wd.meta()["model"]
    name = Path(model["preset"] or model["path"]).name
    meta = {"preset": name, "dtype": plan.precision, "backend": plan.variant, "workdir": str(wd.root),
            "voice": "synthetic (vvtrt.realtime.synthetic, the work dir's model)"}
    report = run_realtime_bench(load, plan.settings, meta, plan.device)
    stem = f"bench_{name}_{plan.precision}_k{plan.settings.steps}_{plan.variant}"
    return write_outputs(report, plan.out_dir or wd.reports_dir, stem)


def realtime_bench(workdir, backends="torch", device=None, dtype=None, frames=60, prompt_tokens=None, repeats=None,
                   cfg_scale=None, baselines=(), streams=1, out_dir=None) -> dict:
    """`vvtrt bench -w <Realtime work dir>`: check, measure, write; the written paths."""
    return run_realtime_bench_cli(check_realtime_bench(workdir, backends, device, dtype, frames, prompt_tokens,
                                                       repeats, cfg_scale, baselines, streams, out_dir))
