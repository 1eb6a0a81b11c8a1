"""Where the long-context decode time goes (64k frame p50 was 6.75x the 1k figure, target <= 2x).

Times one `lm_decode` step (2 rows: CFG's positive and negative, T = 1) of a work dir's model, alone, as the
frame loop runs it (a CUDA graph of the runner's call), for KV buckets S and valid lengths L (L = S - 1 and a
short L = 1000 in the big bucket: does the cost follow L or S?), with the compiled fast path (FlexAttention
split-KV over listed blocks) and eagerly (SDPA over the whole bucket). Then the attention kernel alone, one
layer's shapes: FlexAttention with vvtrt's block mask vs SDPA over exactly the valid slice (the bandwidth
floor a decode kernel can reach) vs SDPA over the bucket with a mask.

    python benchmarks/decode_cost.py WORKDIR OUT.json [--buckets 1024,65536] [--iters 50] [--no-lm]
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def graph_ms(fn, iters: int) -> float:
    """Median-free mean device time of `fn` replayed as a CUDA graph (after 3 eager warm-ups)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def lm_step_rows(wd, buckets, iters):
    from vvtrt.precision import Precision
    from vvtrt.runtime.backends import ModelCache, load_runners

    prec, dev = Precision.BF16, torch.device("cuda")
    models = ModelCache(wd, init_on_device=True)
    rows = []
    for compiled in (True, False):
        runner = load_runners(wd, "torch", prec, dev, components=("lm_decode",), models=models,
                              compile=compiled)["lm_decode"]
        spec = runner.spec
        for s in buckets:
            for length in sorted({s - 1, min(1000, s - 1)}):
                feed = spec.sample({"batch": 2, "kv_len": s, "seq": 1}, prec, torch.Generator().manual_seed(0))
                feed = {k: v.to(dev) for k, v in feed.items()}
                feed["cache_len"] = torch.full((2,), length, dtype=torch.int64, device=dev)
                out = runner.alloc_outputs({"batch": 2, "kv_len": s, "seq": 1})
                ms = graph_ms(lambda: runner.infer(feed, out), iters)
                rows.append({"path": "compiled (flex split-KV)" if compiled else "eager (SDPA over bucket)",
                             "fast": bool(getattr(runner.module, "fast", False)), "kv_bucket": s,
                             "valid_len": length, "step_ms": round(ms, 4)})
                print(rows[-1], flush=True)
        runner.deactivate()
        runner = None
        torch.cuda.empty_cache()
    return rows


def attention_rows(info, buckets, iters):
    from torch.nn.attention import flex_attention as fa

    from vvtrt.components.lm import LMDecode, gqa_decode_attention

    hq, hkv, d = info.q_heads, info.kv_heads, info.head_dim
    flex = torch.compile(fa.flex_attention, dynamic=False)
    gemm = torch.compile(gqa_decode_attention, dynamic=False)
    rows = []
    for s in buckets:
        for length in sorted({s - 1, min(1000, s - 1)}):
            q = torch.randn(2, hq, 1, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(2, hkv, s, d, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            cache_len = torch.full((2,), length, dtype=torch.int64, device="cuda")
            blocks = LMDecode._block_mask(s, cache_len)
            mask = (torch.arange(s, device="cuda") < length).view(1, 1, 1, s).expand(2, 1, 1, s)
            kr, vr = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
            valid = torch.arange(s, device="cuda").view(1, 1, 1, s) < cache_len.view(2, 1, 1, 1)
            k1, v1 = k[:, :, :1].clone(), v[:, :, :1].clone()
            cases = {
                "gemm fold (compiled)": lambda: gemm(q, k, v, k1, v1, valid, d ** -0.5, hq // hkv),
                "flex block-sparse": lambda: flex(q, k, v, block_mask=blocks, enable_gqa=True),
                "sdpa valid slice": lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, kr[:, :, :length], vr[:, :, :length]),
                "sdpa bucket + mask": lambda: torch.nn.functional.scaled_dot_product_attention(q, kr, vr, mask),
            }
            for name, fn in cases.items():
                rows.append({"kernel": name, "kv_bucket": s, "valid_len": length,
                             "ms": round(graph_ms(fn, iters), 5)})
                print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir")
    ap.add_argument("out")
    ap.add_argument("--buckets", type=_ints, default=[1024, 65536])
    ap.add_argument("--attn-buckets", type=_ints, default=[1024, 8192, 32768, 65536])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-lm", action="store_true", help="attention kernels only (skip the lm_decode steps)")
    args = ap.parse_args(argv)
    from vvtrt.fsio import atomic_write_json
    from vvtrt.reports.environment import collect_environment
    from vvtrt.workdir import Workdir

    wd = Workdir.open(args.workdir)
    info = wd.info()
    result = {"command": shlex.join([sys.executable, *sys.argv]), "environment": collect_environment(),
              "model": {"hidden": info.hidden, "layers": info.layers, "q_heads": info.q_heads,
                        "kv_heads": info.kv_heads, "head_dim": info.head_dim},
              "attention": attention_rows(info, args.attn_buckets, args.iters),
              "lm_decode": [] if args.no_lm else lm_step_rows(wd, args.buckets, args.iters)}
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result["lm_decode"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
