"""Where the serving engine's batched frame step spends its time, batch size by batch size.

The synthesizer loads once (`Engine.from_workdir`); per B, an `Engine` of `max_streams=B` is built as its engine
thread builds one (`_prepare`: the KV pool; `_build`: the `FrameLoop`, its CUDA graphs, the `SlotStepper`), and
every slot gets a forced-frame run of a random `--prompt-tokens` prompt (its own prefill, as `Engine._join`).
Per B (p50/p90 of `--repeats`):

- `step_ms` / `deliver_ms`: wall time of `SlotStepper.step()` (host + device, as the engine runs it) and of the
  engine's `_deliver` of the chunks to the requests' handles (no reader attached);
- `split` (instrumented steps): host before the launch (`_feed`: the bucket, host noise and teacher copies), the
  launch, the device step (CUDA events around `FrameLoop.step`; CPU: its wall time), the wait, and the host after
  (status read-back, audio copy, events of the slots that made a frame or ended);
- `components`: device time of each runner of the frame on the loop's own buffers (`FrameLoop.component_calls`
  at the selected (batch, KV) bucket): eager with CUDA events (launch gaps included) and, on CUDA, each alone
  in a CUDA graph (`graph_ms`: kernels only, comparable with the graphed step);
- `host_pieces_ms`: host calls that `step()` / `_feed` make, timed alone; `memory`: the allocator's peak.

    python benchmarks/serving_step_profile.py WORKDIR OUT_DIR [--device cuda] [--batches 1,16,64,128,256]
        [--backend torch|torch-compile] [--max-context 1024] [--repeats 20] [--full-pool-only] [--noise device|host]

Writes OUT_DIR/serving_step_profile_<model>_<dtype>_<backend>.{json,md,png} atomically (the JSON with the command,
commit and device: `vvtrt.reports.environment`, which honours VVTRT_GIT_COMMIT). With torch-compile, pass
`--full-pool-only`: each captured bucket compiles its own code.
"""
from __future__ import annotations

import argparse
import gc
import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from serving_step_report import BUDGET_MS, SPLIT, _ms, markdown, plot  # noqa: E402 - beside this script

BACKENDS = {"torch": False, "torch-compile": True}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _refuse(message: str):
    """Bad input (argparse's own errors too): one line saying what to fix, exit 2."""
    sys.exit(print(f"error: {message}", file=sys.stderr) or 2)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.error = _refuse
    ap.add_argument("workdir")
    ap.add_argument("out_dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on the CPU")
    ap.add_argument("--batches", type=_ints, default=[1, 16, 64, 128, 256], help="streams (busy slots) per run")
    ap.add_argument("--backend", default="torch", choices=sorted(BACKENDS))
    ap.add_argument("--max-context", type=int, default=1024, help="the engine's KV slots per stream")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="tokens of each slot's random prompt")
    ap.add_argument("--repeats", type=int, default=20, help="timed steps / calls per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before measuring")
    ap.add_argument("--full-pool-only", action="store_true",
                    help="capture only the (B, KV) graphs, not the engine's smaller batch buckets too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", default="device", choices=("device", "host"),
                    help="the engine's noise source (EngineConfig.noise)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not args.batches or min(args.batches) < 1 or args.repeats < 1 or args.warmup < 0 or args.prompt_tokens < 2:
        ap.error("--batches and --repeats must be >= 1, --warmup >= 0, --prompt-tokens >= 2")
    if args.prompt_tokens + args.warmup + 2 * args.repeats + 3 > args.max_context:
        ap.error(f"--prompt-tokens {args.prompt_tokens} + {args.warmup + 2 * args.repeats + 3} steps do not fit "
                 f"--max-context {args.max_context}: lower --repeats or --prompt-tokens")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    return args


class Clock:
    """Host wall time (perf_counter) and device time (CUDA events; on the CPU the host's)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def device_ms(self, fn) -> float:
        """One call of `fn` from an idle device to its end (CUDA events; the CPU's wall time)."""
        if not self.cuda:
            return self.host_ms(fn)
        self.sync()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1)

    def host_ms(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def graph_ms(self, fn, repeats: int) -> list[float]:
        """`fn` captured alone as a CUDA graph (after two warm-up calls on a side stream), replayed."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            fn()
            fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return [self.device_ms(graph.replay) for _ in range(repeats)]


def build_engine(synth, args, batch: int):
    """The serving engine for `batch` streams, built as `Engine.start` does (without its thread)."""
    from vvtrt.serving.config import EngineConfig
    from vvtrt.serving.engine import Engine

    buckets = {"batch_buckets": ()} if args.full_pool_only else {}
    cfg = EngineConfig(max_streams=batch, max_context=args.max_context, noise=args.noise,
                       buffer_chunks=args.warmup + 2 * args.repeats + 8, **buckets)
    engine = Engine(synth, cfg)
    t0 = time.perf_counter()
    engine.stepper.build()  # what the engine thread builds at start (KV pool, frame loop, graphs)
    return engine, time.perf_counter() - t0


def fill(engine, args) -> float:
    """Every slot gets a forced-frame run of a random `--prompt-tokens` prompt (its own prefill), as
    the long-form stepper arms one; a StreamHandle is each run's tag, so `_deliver` works as in serving."""
    from vvtrt.bench.measure import synthetic_prompt
    from vvtrt.runtime.kv_cache import pick_bucket
    from vvtrt.runtime.slots import SlotRun
    from vvtrt.serving.api import SpeechRequest
    from vvtrt.serving.handle import StreamHandle

    s, stepper = engine.synth, engine.stepper.slot_stepper
    frames = args.warmup + 2 * args.repeats + 2  # no run ends while it is measured
    n = args.prompt_tokens
    kv_len, buckets = engine.plan.kv_len, s.options.kv_buckets
    need = n + frames + 1
    bucket = pick_bucket(buckets, need) if need <= buckets[-1] else kv_len
    t0 = time.perf_counter()
    for slot in range(engine.plan.slots):
        seed = args.seed + slot
        ids = synthetic_prompt(n, s.info.audio_bos_token_id, seed)
        tok = torch.tensor(ids, device=s.device)
        emb = s.runners["token_embed"].infer({"token": tok})["embeds"][:, 0].unsqueeze(0).clone()
        req = SpeechRequest("Speaker 1: profile.", seed=seed, frames=frames)
        handle = StreamHandle(f"profile-{slot}", req, engine.config.buffer_chunks, engine._cancel)
        handle.slot = slot
        run = SlotRun(n, frames, min(bucket, kv_len) - n - 1, seed, 1.3, forced=True, tag=handle)
        stepper.join(slot, run, emb)
    return time.perf_counter() - t0


def time_steps(engine, clock: Clock, repeats: int) -> dict:
    """Plain `step()` + `_deliver` wall times, as the engine thread runs them."""
    step, deliver = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        events = engine.stepper.step()  # the long-form stepper's step, as the engine thread calls it
        t1 = time.perf_counter()
        engine._deliver(events)
        deliver.append((time.perf_counter() - t1) * 1e3)
        step.append((t1 - t0) * 1e3)
    return {"step_ms": step, "deliver_ms": deliver}


def time_split(stepper, clock: Clock, repeats: int) -> dict:
    """`step()` with `_plan`, `_feed` and `FrameLoop.step` wrapped (instance attributes, removed afterwards): host
    before the launch (the bucket or KV groups, host inputs), the launch, the device step (events), the wait for
    it (one extra sync) and the host after. A step split in KV groups launches twice: its figures are the last
    group's launch and wait."""
    loop, plan0, feed0, step0, t = stepper.loop, stepper._plan, stepper._feed, stepper.loop.step, {}
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if clock.cuda else None

    def plan():
        t["feed0"] = time.perf_counter()
        return plan0()

    def feed(top):
        feed0(top)
        t["feed1"] = time.perf_counter()

    def step():
        if events:
            events[0].record()
        step0()
        if events:
            events[1].record()
        t["launched"] = time.perf_counter()
        clock.sync()
        t["done"] = time.perf_counter()

    out = {k: [] for k in SPLIT + ("total_ms",)}
    stepper._plan, stepper._feed, loop.step = plan, feed, step
    try:
        for _ in range(repeats):
            clock.sync()
            t0 = time.perf_counter()
            stepper.step()
            t1 = time.perf_counter()
            ms = {"feed_ms": t["feed1"] - t["feed0"], "launch_ms": t["launched"] - t["feed1"],
                  "wait_ms": t["done"] - t["launched"], "post_ms": t1 - t["done"], "total_ms": t1 - t0}
            ms = {k: v * 1e3 for k, v in ms.items()}
            ms["device_ms"] = events[0].elapsed_time(events[1]) if events else ms["launch_ms"]  # CPU: synchronous
            for k, v in ms.items():
                out[k].append(v)
    finally:
        del stepper._plan, stepper._feed, loop.step
    return out


def time_components(loop, clock: Clock, repeats: int) -> dict:
    """Each runner of the frame on the loop's buffers of the selected bucket: eager (events) and, on CUDA, alone
    in a CUDA graph. The calls only write the runners' output buffers, which the next step overwrites."""
    rows = {}
    for name, feed, out in loop.component_calls():
        runner = loop.r[name]
        call = (lambda r=runner, f=feed, o=out: r.infer(f, o))
        call()  # warm-up
        row = {"eager_ms": [clock.device_ms(call) for _ in range(repeats)], "graph_ms": None, "graph_error": None}
        if clock.cuda:
            try:
                row["graph_ms"] = clock.graph_ms(call, repeats)
            except Exception as exc:  # noqa: BLE001 - recorded; the eager figure stands
                row["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows[name] = row
    return rows


def host_pieces(stepper, clock: Clock, repeats: int) -> dict:
    """The per-step host calls of `SlotStepper.step()` and `_feed`, timed alone (ms per step, all slots):
    the status read-back (the one sync), the audio read-back and per-slot copies, the noise (host draws
    per slot and their copy with `--noise host`; the device draw, host time of its launch, with "device")."""
    from vvtrt.runtime.noise import frame_normals
    from vvtrt.runtime.slot_state import FRAME, SEED

    loop, runs = stepper.loop, list(stepper.runs.items())
    z = loop.info.latent_dim
    audio = loop.audio[:, 0].float().cpu().numpy()

    def host_noise():
        for slot, run in runs:
            run.draw_noise(z)
            stepper._noise[slot] = run.noise
        loop.noise.copy_(stepper._noise[:loop.n])

    pieces = {"status_readback": lambda: loop.status.cpu().numpy(),
              "audio_readback": lambda: loop.audio[:, 0].float().cpu().numpy(),
              "audio_copies_per_slot": lambda: [audio[s].copy() for s, _ in runs],
              "noise": host_noise if stepper.host_noise else
              lambda: loop.noise.copy_(frame_normals(loop.state[:, SEED], loop.state[:, FRAME], z))}
    return {name: [clock.host_ms(fn) for _ in range(repeats)] for name, fn in pieces.items()}


def _summ(values) -> dict | None:
    from vvtrt.reports.stats import summary

    return summary(values, (50, 90)) if values else None


def measure(engine, args, clock: Clock) -> dict:
    """Fill the built engine's slots, warm up, then every measurement of the module doc for one batch size."""
    plan, stepper = engine.plan, engine.stepper.slot_stepper
    loop = stepper.loop
    fill_s = fill(engine, args)
    for _ in range(args.warmup):
        engine._deliver(engine.stepper.step())
    plain = time_steps(engine, clock, args.repeats)
    split = time_split(stepper, clock, args.repeats)
    memory = {"peak_allocated_bytes": torch.cuda.max_memory_allocated(clock.device) if clock.cuda else None,
              "allocated_bytes": torch.cuda.memory_allocated(clock.device) if clock.cuda else None,
              "kv_pool_bytes": plan.pool_bytes}
    comps = time_components(loop, clock, args.repeats)
    pieces = host_pieces(stepper, clock, args.repeats)
    return {"slots": plan.slots, "busy_slots": len(stepper.runs), "kv_len": plan.kv_len, "bucket": list(loop.key),
            "batch_buckets": list(plan.batch_buckets), "kv_buckets": list(plan.kv_buckets),
            "graphs": len(loop.graphs), "capture_error": loop.capture_error, "fill_s": fill_s,
            "step_ms": _summ(plain["step_ms"]), "step_samples_ms": plain["step_ms"],
            "deliver_ms": _summ(plain["deliver_ms"]), "split": {k: _summ(v) for k, v in split.items()},
            "components": {n: {"eager_ms": _summ(r["eager_ms"]), "graph_ms": _summ(r["graph_ms"]),
                               "graph_error": r["graph_error"]} for n, r in comps.items()},
            "host_pieces_ms": {k: _summ(v) for k, v in pieces.items()}, "memory": memory}


def profile_batch(synth, args, clock: Clock, batch: int) -> dict:
    """Build the engine for `batch` streams, measure it, free it (its pool and graphs) before the next."""
    gc.collect()
    if clock.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(clock.device)
    engine, build_s = build_engine(synth, args, batch)
    try:
        row = {"batch": batch, "build_s": build_s, **measure(engine, args, clock)}
    finally:
        del engine
        gc.collect()
    comps = row["components"].values()
    row["component_sum_ms"] = {kind: sum(c[kind]["p50"] for c in comps) if all(c[kind] for c in comps) else None
                               for kind in ("eager_ms", "graph_ms")}
    row["iteration_p50_ms"] = row["step_ms"]["p50"] + row["deliver_ms"]["p50"]
    row["realtime"] = row["iteration_p50_ms"] < BUDGET_MS and row["slots"] == batch
    return row


def run(args) -> dict:
    from tqdm import tqdm

    from vvtrt.reports.environment import collect_environment
    from vvtrt.runtime.backends import ModelCache
    from vvtrt.serving.engine import Engine
    from vvtrt.workdir import Workdir

    wd = Workdir.open(args.workdir)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the events record on the current device
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    t0 = time.perf_counter()
    synth = Engine.from_workdir(wd.root, backend="torch", device=device, precision=dtype,
                                compile=BACKENDS[args.backend], models=ModelCache(wd, init_on_device=True),
                                max_streams=1, max_context=args.max_context).synth
    rep = {"benchmark": "serving_step_profile", "version": 1, "created": datetime.now(timezone.utc).isoformat(),
           "command": shlex.join([Path(sys.executable).name, *sys.argv]), "workdir": str(wd.root),
           "model": wd.source().label, "dtype": synth.precision.value, "backend": args.backend,
           "device": str(synth.device), "cuda_graph": synth.cuda_graph, "load_s": time.perf_counter() - t0,
           "noise": args.noise, "prompt_tokens": args.prompt_tokens, "max_context": args.max_context, "repeats": args.repeats,
           "warmup": args.warmup, "steps": synth.options.steps, "budget_ms": BUDGET_MS, "rows": []}
    clock = Clock(synth.device)
    with torch.inference_mode():
        for batch in tqdm(args.batches, desc="batch", unit="B", file=sys.stderr, dynamic_ncols=True):
            rep["rows"].append(r := profile_batch(synth, args, clock, batch))
            tqdm.write(f"B={batch}: step p50 {_ms(r['step_ms']['p50'])} ms, " + ", ".join(
                f"{k[:-3]} {_ms(r['split'][k]['p50'])}" for k in SPLIT), file=sys.stderr)
    env = collect_environment()
    rep["environment"], rep["device_name"] = env, (env.get("gpu_name") if device.type == "cuda" else None) or "CPU"
    return rep


def write(rep: dict, out_dir: Path) -> list[Path]:
    from vvtrt.fsio import atomic_write_json, atomic_write_text

    stem = f"serving_step_profile_{rep['model']}_{rep['dtype']}_{rep['backend']}".replace("/", "_")
    return [atomic_write_json(out_dir / f"{stem}.json", rep), atomic_write_text(out_dir / f"{stem}.md", markdown(rep)),
            plot(rep, out_dir / f"{stem}.png")]


def main(argv=None) -> int:
    from vvtrt.errors import VvtrtError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        paths = write(run(args), Path(args.out_dir))
    except VvtrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
