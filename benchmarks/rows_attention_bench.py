"""Decode attention of one serving step, one layer, by kernel: does its cost follow each row's own context or
the bucket's? The serving step's rows (2 per stream: CFG's positive and negative) attend one token each to a
view of the engine's KV cache (the 1.5B's 12 query / 2 KV heads of 128), in a bucket that holds the longest row.

Kernels (`vvtrt.components.lm.decode_kernel`): "gemm" (GQA-folded matmuls over the whole bucket, the compiled
default), "rows" (FlashAttention's variable-length kernel at each row's own length) and, for reference, "gemm"
over a bucket just big enough for the short rows (what a step of short rows alone would cost). Row mixes:
`short` (every row 100-300 slots), `mixed` (one stream in three at 3000-4000 slots, the rest short), `long`
(every row 3000-4000) and `full` (every row within 64 slots of the bucket: one or a few streams at a long
context, where few sequences give a variable-length kernel little parallel work; `--mixes full --streams
1,4,16 --bucket 65536`). Each is timed as a CUDA graph replay of the attention plus the merge with the new token.

    python benchmarks/rows_attention_bench.py OUT.json [--streams 64,128,256] [--bucket 8192] [--iters 50]
        [--mixes short,mixed,long]
    python benchmarks/rows_attention_bench.py OUT.json --device cpu --streams 2 --bucket 256 --iters 1  # smoke
    python benchmarks/rows_attention_bench.py --report OUT.json   # OUT.md (table) and OUT.png (plot) from it

CPU figures are a smoke test of the script, never performance figures.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HQ, HKV, D = 12, 2, 128
MIXES = ("short", "mixed", "long", "full")


def row_lengths(streams: int, mix: str, bucket: int, g: torch.Generator) -> torch.Tensor:
    """Cache lengths of the 2 rows of each stream (both rows of a stream are one length)."""
    short = torch.randint(100, 301, (streams,), generator=g)
    long = torch.randint(min(3000, bucket // 2), min(4001, bucket), (streams,), generator=g)
    full = bucket - torch.randint(0, min(64, bucket), (streams,), generator=g)  # a context filling the bucket
    lens = {"short": short, "long": long, "full": full,
            "mixed": torch.where(torch.arange(streams) % 3 == 0, long, short)}[mix]
    return lens.repeat_interleave(2)


def timed_ms(fn, device, iters: int) -> float:
    """Mean time of `fn`: a CUDA graph replayed `iters` times on CUDA, plain calls elsewhere."""
    if device.type == "cuda":
        from benchmarks.decode_cost import graph_ms

        return graph_ms(fn, iters)
    fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1000 / iters


def kernels(q, k, v, cache_k, cache_v, lens, short_bucket):
    """name -> a call of that kernel on these rows (the cache views as the engine passes them)."""
    from vvtrt.components.lm import gqa_decode_attention
    from vvtrt.components.rows_attention import cache_rows_attention, merge_new_token

    scale, groups = D ** -0.5, HQ // HKV
    s = cache_k.shape[2]
    valid = torch.arange(s, device=q.device) < lens.view(-1, 1, 1, 1)
    short_valid = valid[..., :short_bucket]

    def rows():
        out, lse = cache_rows_attention(q, cache_k, cache_v, lens, scale)
        return merge_new_token(out, lse, q, k, v, scale, groups)

    return {"gemm": lambda: gqa_decode_attention(q, cache_k, cache_v, k, v, valid, scale, groups),
            "rows": rows,
            "gemm_short_bucket": lambda: gqa_decode_attention(q, cache_k[:, :, :short_bucket],
                                                              cache_v[:, :, :short_bucket], k, v, short_valid,
                                                              scale, groups)}


def bench(streams: int, mix: str, args, device) -> list[dict]:
    g = torch.Generator().manual_seed(streams)
    rows = 2 * streams
    lens = row_lengths(streams, mix, args.bucket, g)
    buf = (rows, HKV, args.bucket * 2, D)  # the engine's buffer holds more slots than the bucket it runs at
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    gd = torch.Generator(device=device).manual_seed(streams)  # drawn where they live: a 64k cache is GBs
    cache_k = torch.randn(buf, generator=gd, device=device, dtype=dt)[:, :, :args.bucket]
    cache_v = torch.randn(buf, generator=gd, device=device, dtype=dt)[:, :, :args.bucket]
    q = torch.randn(rows, HQ, 1, D, generator=g).to(device, dt)
    k, v = (torch.randn(rows, HKV, 1, D, generator=g).to(device, dt) for _ in range(2))
    lens = lens.to(device)
    short_bucket = min(512, args.bucket)
    out = []
    with torch.inference_mode():
        for name, fn in kernels(q, k, v, cache_k, cache_v, lens, short_bucket).items():
            if name == "gemm_short_bucket" and mix != "short":
                continue  # only valid where every row fits the short bucket
            ms = timed_ms(fn, device, args.iters)
            out.append({"streams": streams, "rows": rows, "mix": mix, "kernel": name,
                        "bucket": short_bucket if name == "gemm_short_bucket" else args.bucket,
                        "mean_len": round(float(lens.float().mean()), 1), "max_len": int(lens.max()),
                        "ms": round(ms, 4)})
            print(out[-1], flush=True)
    return out


def write_report(path: Path) -> tuple[Path, Path]:
    """A result file's table (Markdown) and plot (PNG, ms by streams, one panel per row mix), beside it."""
    from vvtrt.reports.canvas import _colors, _figure, _save

    result = json.loads(path.read_text())
    rows = result["rows"]
    lines = ["# Decode attention by kernel, one layer of 1.5B shapes", "",
             f"{result['device']}, commit `{result['commit']}`; command: `{result['command']}`", "",
             "| streams | rows | row mix | mean / max length | kernel | bucket | ms | vs gemm over the bucket |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["streams"], r["mix"]): r["ms"] for r in rows if r["kernel"] == "gemm"}
    for r in rows:
        ref = base.get((r["streams"], r["mix"]))
        lines.append(f"| {r['streams']} | {r['rows']} | {r['mix']} | {r['mean_len']:.0f} / {r['max_len']} | "
                     f"{r['kernel']} | {r['bucket']} | {r['ms']:.3f} | {ref / r['ms']:.1f}x |")
    md = path.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    fig = _figure(3.4 * len({r["mix"] for r in rows}), 3.4)
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    mixes = [m for m in MIXES if any(r["mix"] == m for r in rows)]
    for i, mix in enumerate(mixes):
        ax = fig.add_subplot(1, len(mixes), i + 1)
        for kernel, color in zip(kernels, _colors(len(kernels))):
            pts = sorted((r["streams"], r["ms"]) for r in rows if r["mix"] == mix and r["kernel"] == kernel)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color, label=kernel)
        ax.set_title(f"{mix} rows")
        ax.set_xlabel("streams (2 rows each)")
        ax.set_ylabel("ms per layer" if i == 0 else "")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle(f"Decode attention, one layer (bucket {rows[0]['bucket']}), {result['device']}", fontsize=10)
    return md, _save(fig, path.with_suffix(".png"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--report", action="store_true", help="write OUT's table and plot (no run)")
    ap.add_argument("--streams", default="64,128,256")
    ap.add_argument("--bucket", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--mixes", default="short,mixed,long", help=f"row mixes, of {', '.join(MIXES)}")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    if args.report:
        print("\n".join(str(p) for p in write_report(Path(args.out))))
        return 0
    from vvtrt.fsio import atomic_write_json
    from vvtrt.reports.environment import collect_environment

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: use --device cpu for a smoke run")
    env = collect_environment()
    mixes = [m for m in args.mixes.split(",") if m]
    if not mixes or any(m not in MIXES for m in mixes):
        ap.error(f"--mixes: pick from {', '.join(MIXES)}")
    rows = [r for n in (int(x) for x in args.streams.split(",")) for mix in mixes for r in bench(n, mix, args, device)]
    result = {"kind": "decode attention by kernel", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, *sys.argv]), "commit": env.get("git_commit"),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({env.get('cpu')})",
              "note": None if device.type == "cuda" else "CPU smoke run: not a performance figure",
              "environment": env, "rows": rows}
    atomic_write_json(Path(args.out), result)
    write_report(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
