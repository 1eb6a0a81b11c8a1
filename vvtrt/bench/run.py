"""`vvtrt bench`: each variant and each baseline measured in its own process (`vvtrt.bench.worker`), on a
real script with voice clips (`vvtrt.bench.inputs`), merged into one report with whole-device telemetry
sampled here and the bandwidth floor (its own process too).

A variant that fails is listed under ``failed`` with its error; the others keep their results. One
variant alone (no baselines) that fails is the command's error.
"""
from __future__ import annotations

import dataclasses

import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vvtrt.bench.measure import VARIANTS
from vvtrt.bench.worker import BenchJob, run_in_subprocess
from vvtrt.errors import InputError, VvtrtError
from vvtrt.workdir import Workdir

log = logging.getLogger(__name__)

BASELINES = ("pytorch-eager", "transformers")
TELEMETRY_INTERVAL_S = 0.05


@dataclass(frozen=True)
class BenchSettings:
    """The validated options of one bench run."""

    backends: tuple[str, ...]
    baselines: tuple[str, ...]
    device: str
    precision: str
    frames: int
    prompt_tokens: int  # synthetic long prompt for `ttfa_synthetic`; 0: none
    repeats: int
    cfg_scale: float
    streams: int


def validate_settings(backends, baselines, device, dtype, frames, prompt_tokens, repeats, cfg_scale,
                      streams) -> BenchSettings:
    """Bench-only checks, before any work starts (every failure is an InputError saying what to change);
    the device and the guidance scale go through the checks every verb shares (`vvtrt.option_checks`)."""
    from vvtrt.option_checks import REPEATS_MAX, check_cfg, resolve_device
    from vvtrt.precision import Precision

    names = [b.strip() for b in str(backends).split(",") if b.strip()]
    if not names:
        raise InputError("--backend is empty: name at least one of " + ", ".join(VARIANTS))
    for b in names:
        if b not in VARIANTS:
            raise InputError(f"unknown backend {b!r}: choose from {', '.join(VARIANTS)}")
    if len(set(names)) < len(names) or len(set(baselines)) < len(tuple(baselines)):
        raise InputError("a --backend or --baseline is named twice: name each once")
    for b in baselines:
        if b not in BASELINES:
            raise InputError(f"unknown baseline {b!r}: choose from {', '.join(BASELINES)}")
    if frames < 1 or repeats < 1 or streams < 1:
        raise InputError("--frames, --repeats and --streams must be >= 1")
    if repeats > REPEATS_MAX:
        raise InputError(f"--repeats {repeats} is more than {REPEATS_MAX}: a few repeats give stable percentiles")
    if prompt_tokens is None or prompt_tokens == 0:
        prompt_tokens = 0
    elif prompt_tokens < 2:
        raise InputError(f"--prompt-tokens must be 0 (no synthetic prompt) or >= 2, got {prompt_tokens}")
    if streams > 1 and baselines:
        raise InputError("--baseline runs one stream: measure baselines with --streams 1")
    dev = str(resolve_device(device))
    precision = Precision.parse(dtype or ("bf16" if dev.startswith("cuda") else "fp32"))
    return BenchSettings(tuple(names), tuple(baselines), dev, precision.value, int(frames), int(prompt_tokens),
                         int(repeats), check_cfg(cfg_scale), int(streams))


def _check_sizes(wd: Workdir, s: BenchSettings, prompt_tokens: int) -> None:
    """The script's prompt and the synthetic one, each with `frames` frames, must fit the work dir."""
    opts = wd.options()
    for what, n in (("the script's prompt", prompt_tokens), ("--prompt-tokens", s.prompt_tokens)):
        if not n:
            continue
        if n > opts.max_prompt:
            raise InputError(f"{what} has {n} tokens, more than the work dir's max_prompt {opts.max_prompt}")
        if n + s.frames + 1 > opts.kv_buckets[-1]:
            raise InputError(f"{what} ({n} tokens) with --frames {s.frames} needs {n + s.frames + 1} KV slots; the "
                             f"work dir's largest KV bucket is {opts.kv_buckets[-1]}: lower --frames")


def _job(wd: Workdir, s: BenchSettings, inputs, kind: str, name: str) -> BenchJob:
    return BenchJob(kind, name, str(wd.root), s.device, s.precision, s.frames, s.repeats, s.cfg_scale,
                    s.prompt_tokens, s.streams, inputs.script, inputs.voices, logging.getLogger().getEffectiveLevel())


def _jobs(wd: Workdir, s: BenchSettings, inputs, compare=()) -> list[BenchJob]:
    """The variants and baselines on `wd`, then the variants on each compared work dir (`--compare-workdir`:
    e.g. the bf16, int8 and fp8 exports of one model side by side), labelled with their quantization."""
    tag = (lambda w: (w.quant().value if w.quant() else "none")) if compare else (lambda w: "")
    jobs = [dataclasses.replace(_job(wd, s, inputs, "variant", b), tag=tag(wd)) for b in s.backends]
    jobs += [_job(wd, s, inputs, "baseline", b) for b in s.baselines]
    for other in compare:
        jobs += [dataclasses.replace(_job(other, s, inputs, "variant", b), tag=tag(other)) for b in s.backends]
    return jobs


def quant_summary(workdirs) -> list[dict]:
    """Per work dir of a comparison: its quantization and the quality gate's verdict (`vvtrt.quant.gate`)."""
    from vvtrt.quant.gate import read_gate

    out = []
    for w in workdirs:
        gate = read_gate(w) if w.quant() else None
        out.append({"workdir": str(w.root), "quant": w.quant().value if w.quant() else "none",
                    "gate": None if gate is None else {k: gate.get(k) for k in ("passed", "k", "worst", "e2e")}})
    return out


def _run_jobs(jobs, scratch: Path, tel) -> tuple[list, list, list, list]:
    results, baselines, failed, spans = [], [], [], []
    for i, job in enumerate(jobs):
        log.info("bench: %s in its own process", job.label)
        t0 = tel.elapsed()
        reply = run_in_subprocess(job, scratch, i)
        spans.append({"label": job.label, "kind": job.kind, "pid": reply.get("pid"), "t_start_s": t0,
                      "t_end_s": tel.elapsed(), "ok": "result" in reply})
        if "result" in reply:
            res = {**reply["result"], "pid": reply["pid"]}
            if job.tag:
                res.update(label=job.label, quant=job.tag, workdir=job.workdir)
            (results if job.kind == "variant" else baselines).append(res)
        else:
            log.error("bench %s failed: %s", job.label, reply["error"])
            failed.append({"label": job.label, "error": reply["error"], "error_type": reply.get("error_type"),
                           "pid": reply.get("pid")})
    return results, baselines, failed, spans


def _floor(wd: Workdir, s: BenchSettings, inputs, scratch: Path, index: int):
    if not s.device.startswith("cuda"):
        return None
    reply = run_in_subprocess(_job(wd, s, inputs, "floor", "floor"), scratch, index)
    if "result" not in reply:
        log.error("bandwidth floor not measured: %s", reply["error"])
        return None
    return reply["result"]["floor"]


def _raise_failure(fail: dict) -> None:
    """One variant alone failed: its error is the command's (its own class when it is a vvtrt error)."""
    from vvtrt import errors

    cls = getattr(errors, fail.get("error_type") or "", None)
    if isinstance(cls, type) and issubclass(cls, VvtrtError):
        raise cls(fail["error"].split(": ", 1)[-1])
    raise VvtrtError(f"bench {fail['label']} failed: {fail['error']}")


def run_bench(wd: Workdir, s: BenchSettings, inputs, prompt: dict, scratch: Path, compare=()) -> dict:
    from vvtrt.reports.environment import collect_environment
    from vvtrt.reports.telemetry import TelemetrySampler

    jobs = _jobs(wd, s, inputs, compare)
    index = s.device.partition(":")[2]
    with TelemetrySampler(interval_s=TELEMETRY_INTERVAL_S, device_index=int(index or 0)) as tel:
        results, base, failed, spans = _run_jobs(jobs, scratch, tel)
    if failed and not results and not base:
        if len(jobs) == 1:
            _raise_failure(failed[0])
        raise VvtrtError("every bench variant failed: " + "; ".join(f"{f['label']}: {f['error']}" for f in failed))
    floor = _floor(wd, s, inputs, scratch, len(jobs))
    for r in results + base:
        if floor and floor.get("floor_ms") and r["frame"]["p50"]:
            r["floor_gap"] = r["frame"]["p50"] / floor["floor_ms"]
    meta = wd.meta()
    return {"kind": "bench", "version": 1, "created": datetime.now(timezone.utc).isoformat(),
            "config": {"preset": meta["model"]["preset"] or meta["model"]["path"], "model": meta["model"],
                       "dtype": s.precision, "dtypes": [s.precision], "steps": meta["options"]["steps"],
                       "cfg_scale": s.cfg_scale, "backends": list(s.backends), "baselines": list(s.baselines),
                       "batch": s.streams, "frames": s.frames, "prompt_tokens": s.prompt_tokens,
                       "repeats": s.repeats, "device": s.device, "prompt": prompt,
                       "isolation": "each variant, baseline and the floor measurement in its own process",
                       "environment": collect_environment()},
            "results": results, "baselines": base, "failed": failed,
            "telemetry": {"interval_s": TELEMETRY_INTERVAL_S, "samples": list(tel.samples)}, "jobs": spans,
            "floor": floor, **({"quant": quant_summary([wd, *compare])} if compare else {})}


def run_bench_cli(workdir, backends="torch", device=None, dtype=None, frames=60, prompt_tokens=512, repeats=3,
                  cfg_scale=1.3, baselines=(), out_dir=None, streams: int = 1, script=None, voices=(),
                  compare_workdirs=()) -> dict:
    """`vvtrt bench`: validate, measure, write ``bench_<preset>_<dtype>_k<steps>[_xN].{json,md,png}``.
    `script`: a script file (default: the packaged dialogue); `voices`: one wav per speaker (default: the
    packaged clips). `compare_workdirs`: more work dirs of the same model (e.g. exported with --quant int8 and
    fp8) whose variants run in the same bench, side by side, with their quality gates in the report."""
    from vvtrt.bench.inputs import prompt_size, resolve_inputs
    from vvtrt.reports import write_report

    wd = Workdir.open(workdir)
    compare = tuple(Workdir.open(w) for w in compare_workdirs or ())
    for other in compare:
        if other.source().identity() != wd.source().identity() or other.options() != wd.options():
            raise InputError(f"--compare-workdir {other.root} holds another model or other export settings than "
                             f"{wd.root}: compare exports of one model")
    s = validate_settings(backends, tuple(baselines or ()), device, dtype, frames, prompt_tokens, repeats,
                          cfg_scale, streams)
    with tempfile.TemporaryDirectory(prefix="vvtrt-bench-") as tmp:
        scratch = Path(tmp)
        inputs = resolve_inputs(script, voices, wd.options().max_voice_frames, wd.info().hop, scratch)
        n_prompt, n_voice = prompt_size(inputs, wd)
        _check_sizes(wd, s, n_prompt)
        report = run_bench(wd, s, inputs, inputs.to_config(n_prompt, n_voice), scratch, compare)
    out = Path(out_dir) if out_dir else wd.reports_dir
    stem = f"bench_{report['config']['preset']}_{s.precision}_k{report['config']['steps']}"
    if s.streams > 1:
        stem += f"_x{s.streams}"
    if compare:
        stem += "_quant"
    return write_report(report, out, stem)
