"""Long-form figures: decode cost against the context length, time to first audio of a long
prompt, and one forced long synthesis, on one loaded `Synthesizer` (the `vvtrt bench` variants; default
`torch-compile`, i.e. `torch.compile` + whole-frame CUDA graphs on CUDA).

    python benchmarks/longform.py WORKDIR OUT_DIR [--device cuda] [--dtype bf16] [--variant torch-compile]
        [--phases contexts,ttfa] [--contexts 1024,8192,32768,65536] [--frames 48] [--ttfa-tokens 32768]
        [--repeats 3]
    python benchmarks/longform.py WORKDIR OUT_DIR --phases long --long-frames 40500 --long-prompt 20000

Phases (each in the process that runs the script; run `long` in its own invocation so its memory figures are
its own):

- `contexts`: for each context N, a synthetic prompt of about N tokens (capped by the work dir's max_prompt and
  largest KV bucket less the frames), a warm-up run at that prompt (compiles / captures that KV bucket), then
  `--frames` forced frames timed per frame (host wall time of each step, with its one host sync). Reports the
  frame p50/p90 per context and the ratio of the largest context's p50 to the smallest's (issue target: 64k
  <= 2 x 1k).
- `ttfa`: a synthetic prompt of `--ttfa-tokens`: the first request at that length (cold: its prefill shapes
  and bucket are new) and `--repeats` warm ones, prefill-to-first-chunk (the prompt's embeddings ready).
- `long`: `--long-frames` forced frames after a `--long-prompt`-token prompt: wall time, RTF, frame
  percentiles, TTFA, and peak memory (NVML's figure for this process's pid, torch's allocator peaks, host RSS).

Synthetic prompts are random text bytes (`vvtrt.bench.measure.synthetic_prompt`): the content does not change
the cost. Writes OUT_DIR/longform_<model>_<dtype>_<phases>.json (with the exact command, the commit and the
device: `vvtrt.reports.environment`) and a short Markdown next to it.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("longform")
PHASES = ("contexts", "ttfa", "long")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir")
    ap.add_argument("out_dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on the CPU")
    ap.add_argument("--variant", default="torch-compile", help="a `vvtrt bench` variant (vvtrt.bench.measure)")
    ap.add_argument("--phases", default="contexts,ttfa", help=f"comma list of {', '.join(PHASES)}")
    ap.add_argument("--contexts", type=_ints, default=[1024, 8192, 32768, 65536])
    ap.add_argument("--frames", type=int, default=48, help="timed frames per context")
    ap.add_argument("--ttfa-tokens", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-frames", type=int, default=40500, help="frames of the long run (40500 = 90 min)")
    ap.add_argument("--long-prompt", type=int, default=20000, help="prompt tokens of the long run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in args.phases if p not in PHASES]
    if bad or not args.phases:
        ap.error(f"--phases: choose from {', '.join(PHASES)}, got {bad or 'nothing'}")
    if min([args.frames, args.repeats, args.ttfa_tokens, args.long_frames, args.long_prompt, *args.contexts]) < 1:
        ap.error("counts and token numbers must be >= 1")
    return args


class Bench:
    """One loaded synthesizer and the timed requests of the phases."""

    def __init__(self, args):
        from vvtrt.bench.measure import VARIANTS
        from vvtrt.runtime.backends import ModelCache
        from vvtrt.runtime.synthesizer import Synthesizer
        from vvtrt.workdir import Workdir

        if args.variant not in VARIANTS:
            raise SystemExit(f"--variant: choose from {', '.join(VARIANTS)}")
        backend, extra = VARIANTS[args.variant]
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")
        self.dtype = args.dtype or ("bf16" if self.device.type == "cuda" else "fp32")
        self.wd = Workdir.open(args.workdir)
        t0 = time.perf_counter()
        self.synth = Synthesizer.from_workdir(self.wd.root, backend=backend, device=self.device,
                                              precision=self.dtype,
                                              models=ModelCache(self.wd, init_on_device=True), **extra)
        self.load_s = time.perf_counter() - t0
        self.opts = self.synth.options
        self.args = args

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prompt(self, tokens: int, seed: int = 0):
        """Synthetic prompt ids (ending with speech_start) and their embeddings `[1, T, H]`."""
        from vvtrt.bench.measure import synthetic_prompt

        ids = synthetic_prompt(tokens, self.synth.info.audio_bos_token_id, seed)
        tok = torch.tensor(ids, device=self.device)
        emb = self.synth.runners["token_embed"].infer({"token": tok})["embeds"][:, 0].unsqueeze(0).clone()
        return ids, emb

    def run(self, ids, emb, frames: int, seed: int, first_only: bool = False):
        """One forced request from the embeddings; returns its `SynthesisResult` (chunks are dropped)."""
        from vvtrt.runtime.synthesizer import SynthesisResult

        res = SynthesisResult(np.zeros(0, np.float32), 0, [], False, "", 0, 0.0, 0.0)
        self._sync()
        chunks = self.synth.generate(ids, emb, frames=frames, seed=seed, result=res, t_start=time.perf_counter())
        n = 0
        for _ in chunks:
            n += 1
            if first_only:
                break
        chunks.close()
        res.frames = res.frames or n
        return res

    def prompt_tokens_for(self, context: int, frames: int) -> int:
        """The prompt length that puts a run of `frames` frames at about `context` tokens, within the export."""
        return max(2, min(context, self.opts.max_prompt, self.opts.kv_buckets[-1] - frames - 1))


def phase_contexts(b: Bench) -> dict:
    from vvtrt.reports.stats import summary

    rows = []
    for n in b.args.contexts:
        p = b.prompt_tokens_for(n, b.args.frames)
        ids, emb = b.prompt(p, seed=n)
        warm = b.run(ids, emb, min(4, b.args.frames), b.args.seed)  # compile / capture this bucket
        res = b.run(ids, emb, b.args.frames, b.args.seed + 1)
        ms = [t * 1000 for t in res.frame_s]
        rows.append({"context_requested": n, "prompt_tokens": p, "frames": len(ms),
                     "context_mid": p + len(ms) // 2, "frame_ms": ms, "frame": summary(ms),
                     "ttfa_ms": res.ttfa_s * 1000, "warmup_ttfa_ms": warm.ttfa_s * 1000})
        log.info("context %d (prompt %d): frame p50 %.3f ms", n, p, rows[-1]["frame"]["p50"])
    small, large = rows[0]["frame"]["p50"], rows[-1]["frame"]["p50"]
    ratio = large / small if small else None
    return {"rows": rows, "p50_ratio_largest_to_smallest": ratio,
            "target": "p50 at the largest context <= 2 x p50 at the smallest",
            "target_met": None if ratio is None else bool(ratio <= 2.0)}


def phase_ttfa(b: Bench) -> dict:
    from vvtrt.reports.stats import summary

    p = b.prompt_tokens_for(b.args.ttfa_tokens, 1)
    ids, emb = b.prompt(p, seed=1)
    cold = b.run(ids, emb, 1, b.args.seed, first_only=True).ttfa_s * 1000
    warm = [b.run(ids, emb, 1, b.args.seed + r + 1, first_only=True).ttfa_s * 1000 for r in range(b.args.repeats)]
    chunks = -(-(p - 1) // b.opts.prefill_chunk)
    return {"prompt_tokens": p, "prefill_chunks": chunks, "prefill_chunk": b.opts.prefill_chunk,
            "cold_ms": cold, "warm_ms": warm, "warm": summary(warm),
            "what": "prefill-to-first-chunk (the prompt's embeddings ready); cold = first request at this length"}


def phase_long(b: Bench) -> dict:
    from vvtrt.reports.stats import summary

    frames = b.args.long_frames
    p = b.args.long_prompt
    if p > b.opts.max_prompt or p + frames + 1 > b.opts.kv_buckets[-1]:
        raise SystemExit(f"--long-prompt {p} + --long-frames {frames} do not fit the export (max_prompt "
                         f"{b.opts.max_prompt}, largest KV bucket {b.opts.kv_buckets[-1]})")
    ids, emb = b.prompt(p, seed=2)
    res = b.run(ids, emb, frames, b.args.seed)
    audio_s = res.frames * b.synth.info.hop / 24000
    ms = [t * 1000 for t in res.frame_s]
    return {"prompt_tokens": p, "frames": res.frames, "stop_reason": res.stop_reason, "wall_s": res.total_s,
            "audio_s": audio_s, "rtf": res.total_s / audio_s if audio_s else None, "ttfa_ms": res.ttfa_s * 1000,
            "frame": summary(ms), "frame_p50_first_1000_ms": summary(ms[:1000])["p50"],
            "frame_p50_last_1000_ms": summary(ms[-1000:])["p50"]}


def memory(b: Bench, sampler) -> dict:
    from vvtrt.bench.measure import allocator_peaks

    return {**allocator_peaks(b.device), **(sampler.snapshot() if sampler else {})}


def markdown(rep: dict) -> str:
    lines = [f"# Long-form: {rep['model']} {rep['dtype']} ({rep['variant']}, {rep['device_name']})", "",
             f"commit `{rep['environment'].get('git_commit')}`; command: `{rep['command']}`", ""]
    if "contexts" in rep:
        lines += ["| context (prompt tokens) | frame p50 ms | frame p90 ms |", "|---|---|---|"]
        for r in rep["contexts"]["rows"]:
            lines.append(f"| {r['prompt_tokens']} | {r['frame']['p50']:.3f} | {r['frame']['p90']:.3f} |")
        ratio = rep["contexts"]["p50_ratio_largest_to_smallest"]
        lines += ["", f"p50 largest / smallest context: {ratio:.2f} (target <= 2)" if ratio else "", ""]
    if "ttfa" in rep:
        t = rep["ttfa"]
        lines += [f"TTFA, {t['prompt_tokens']}-token prompt ({t['prefill_chunks']} chunks of {t['prefill_chunk']}): "
                  f"cold {t['cold_ms']:.1f} ms, warm p50 {t['warm']['p50']:.1f} ms", ""]
    if "long" in rep:
        g, m = rep["long"], rep["memory"]
        peak = m.get("nvml_process_peak_bytes")
        lines += [f"Long run: {g['frames']} frames ({g['audio_s'] / 60:.1f} min of audio) after a "
                  f"{g['prompt_tokens']}-token prompt: wall {g['wall_s']:.1f} s, RTF {g['rtf']:.3f}, frame p50 "
                  f"{g['frame']['p50']:.3f} ms; peak memory NVML (this process) "
                  f"{'not measured' if peak is None else f'{peak / 2**30:.2f} GiB'}, allocator "
                  f"{(m.get('peak_allocated_bytes') or 0) / 2**30:.2f} GiB", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from vvtrt.fsio import atomic_write_json, atomic_write_text
    from vvtrt.reports.environment import collect_environment
    from vvtrt.reports.telemetry import ProcessMemorySampler

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sampler = ProcessMemorySampler().start() if args.device.startswith("cuda") else None  # before CUDA init
    try:
        b = Bench(args)
        rep = {"benchmark": "longform", "command": shlex.join([Path(sys.executable).name, *sys.argv]),
               "workdir": str(b.wd.root), "model": b.wd.source().label, "dtype": b.dtype, "variant": args.variant,
               "device": str(b.device), "options": b.opts.to_json(), "load_s": b.load_s}
        for name, fn in (("contexts", phase_contexts), ("ttfa", phase_ttfa), ("long", phase_long)):
            if name in args.phases:
                rep[name] = fn(b)
        rep["memory"] = memory(b, sampler)
    finally:
        if sampler:
            sampler.stop()
    env = collect_environment()
    rep["environment"], rep["device_name"] = env, env.get("gpu_name") or "CPU"
    stem = f"longform_{rep['model']}_{b.dtype}_{'-'.join(args.phases)}".replace("/", "_")
    out = Path(args.out_dir)
    atomic_write_json(out / f"{stem}.json", rep)
    atomic_write_text(out / f"{stem}.md", markdown(rep))
    print(out / f"{stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
