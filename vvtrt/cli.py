"""The `vvtrt` command line: export -> build -> parity -> synth -> bench -> report, around one work dir.

Heavy backends are imported lazily, so `--help` and the CPU-only verbs work without TensorRT or CUDA.
Every expected failure is a `VvtrtError`: one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from vvtrt.cli_errors import one_line_errors
from vvtrt.cli_types import (CFG, COUNT, SEED, WORKDIR, non_empty as _non_empty, serving_backend_opts,
                             serving_step_opts, workdir_opt)
from vvtrt.option_checks import REPEATS_MAX


_friendly = one_line_errors


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2 (8.1 prints the help itself)


class _OneLineErrors(click.Group):
    """click's usage errors (a bad option value, a missing option) as one line on stderr and exit 2, like
    every other error, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # a bare `vvtrt`: the help, as with -h
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.ClickException as exc:
            hint = f" (see `{exc.ctx.command_path} -h`)" if getattr(exc, "ctx", None) else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    # delay: nothing is drawn for a stage refused in its first half second; leave=False: the bar is erased
    # when the stage ends, so an error (or the verb's summary) is one clean line
    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, delay=0.5, leave=False)

    # the stages call tick(label) as an item starts: it counts as done when the next one starts (the bar
    # never shows an item done while it runs; the bar is erased at the end, done or failed, without a redraw)
    def tick(label: str):
        if bar.postfix:  # an item was running
            bar.update(1)
        bar.set_postfix_str(label)
    tick.close, tick.bar = bar.close, bar
    return tick


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int):
    """vvtrt: compile and serve VibeVoice TTS with ONNX Runtime and TensorRT."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--model", "model_spec", required=True, help="Preset (tiny, 1.5b, 7b, tiny-realtime, realtime-0.5b), a checkpoint dir (Microsoft's or transformers' "
              "layout, or Microsoft's Realtime one) or a Hugging Face Hub id such as microsoft/VibeVoice-1.5B (read "
              "from the Hub cache; downloaded unless HF_HUB_OFFLINE=1).")
@workdir_opt
@click.option("--dtype", "dtypes", default="fp32,fp16,bf16", show_default=True, help="Comma-separated precisions.")
@click.option("--steps", default=None, type=int, help="Diffusion steps K of the sampler (1-50; default 10, Realtime 5).")
@click.option("--components", default="", help="Comma-separated subset (default: all).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Init seed of random presets.")
@click.option("--tokenizer", default=None, type=click.Path(file_okay=False),
              help="Tokenizer directory or Hub id (e.g. Qwen/Qwen2.5-1.5B), for checkpoints that ship none.")
@click.option("--max-prompt", default=None, type=click.IntRange(min=1),
              help="Longest prompt in tokens (default: the model's context less 1024; tiny: 512).")
@click.option("--kv-buckets", default=None, help="KV cache lengths, ascending, e.g. 1024,8192,65536 (default: "
              "powers of two from 1024 up to the model's context; each is one TensorRT profile).")
@click.option("--quant", default=None, type=click.Choice(["none", "int8", "fp8"]),
              help="Quantize the LLM's and the diffusion head's GEMMs (W8A8, Q/DQ graphs; README: Quantization).")
@click.option("--force", is_flag=True, help="Re-export even when up to date; remove stray files from onnx/.")
@_friendly
def export(model_spec, workdir, dtypes, steps, components, seed, tokenizer, max_prompt, kv_buckets, quant, force):
    """Export every component to ONNX with explicit state (graphs the new settings make stale, too)."""
    from vvtrt.components.specs import parse_kv_buckets
    from vvtrt.pipeline import run_export

    recs = run_export(model_spec, workdir, dtypes, steps, components, seed, force, _progress, tokenizer,
                      max_prompt, parse_kv_buckets(kv_buckets), quant)
    done = sum(not r.get("skipped") for r in recs)
    click.echo(f"exported {done} graph(s), {len(recs) - done} up to date, in {workdir}/onnx")


@cli.command("convert")
@click.argument("src", metavar="DIR", type=click.Path(file_okay=False))
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--tokenizer", default=None, type=click.Path(file_okay=False),
              help="Tokenizer directory to copy into OUT (Microsoft's original checkpoints ship none).")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT, replacing the checkpoint files there.")
@_friendly
def convert_cmd(src, out, tokenizer, force):
    """Write a checkpoint directory (Microsoft's original layout) in transformers' layout."""
    from vvtrt.model.convert import convert

    done = convert(src, out, tokenizer, force)
    tok = "with" if done.tokenizer else "without (pass --tokenizer DIR to export it)"
    click.echo(f"converted {src} ({done.layout} layout) to {done.out}: {done.tensors} tensors in {done.files} "
               f"file(s), {tok} a tokenizer")


@cli.command()
@workdir_opt
@click.option("--flavor", default="auto", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), show_default=True,
              help="TensorRT or TensorRT-RTX (auto: whichever is installed, TensorRT first).")
@click.option("--components", default="", help="Comma-separated subset (default: all exported).")
@click.option("--dtype", "dtypes", default="", help="Comma-separated precisions (default: all exported).")
@click.option("--target-sm", default=None, help="Target compute capability for CPU-only TensorRT-RTX builds, e.g. 86.")
@click.option("--force", is_flag=True, help="Rebuild even when up to date.")
@_friendly
def build(workdir, flavor, components, dtypes, target_sm, force):
    """Build TensorRT engines (one per exported component and dtype)."""
    from vvtrt.pipeline import run_build

    recs = run_build(workdir, flavor, components, dtypes, target_sm, force, _progress)
    built = sum(not r.get("skipped") for r in recs)
    click.echo(f"built {built} engine(s), {len(recs) - built} up to date")


@cli.command()
@workdir_opt
@click.option("--backend", default="onnxruntime", type=click.Choice(["onnxruntime", "torch", "tensorrt"]),
              show_default=True, help="Runtime whose outputs are checked against the PyTorch reference.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--dtype", "dtypes", default="", help="Comma-separated precisions (default: all exported).")
@click.option("--frames", default=16, show_default=True, type=click.IntRange(min=16),
              help="Frames for streaming and end-to-end checks (16 to the KV bucket's limit).")
@click.option("--no-e2e", is_flag=True, help="Skip the end-to-end check against transformers generate.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Also write the JSON here.")
@_friendly
def parity(workdir, backend, device, dtypes, frames, no_e2e, json_path):
    """Compare every exported component, the streaming steps and the whole loop with PyTorch."""
    from vvtrt.pipeline import run_parity_cli

    report, paths = run_parity_cli(workdir, backend, device, dtypes, frames, not no_e2e, json_path, _progress)
    t = report["counts"]["total"]
    click.echo(f"parity {'PASSED' if report['passed'] else 'FAILED'}: {t['passed']} passed, {t['failed']} failed, "
               f"{t['skipped']} not run, {t['informational']} informational; report {paths['md']}")
    if not report["passed"]:
        shown = report["failures"][:20]
        for f in shown:
            click.echo(f"  FAIL {f}", err=True)
        if len(report["failures"]) > len(shown):
            click.echo(f"  ... and {len(report['failures']) - len(shown)} more: see {paths['md']}", err=True)
        sys.exit(1)


@cli.command()
@workdir_opt
@click.option("--backend", default="torch", type=click.Choice(["torch", "onnxruntime", "tensorrt"]), show_default=True,
              help="Runtime of every component (see --fallback).")
@click.option("--fallback", multiple=True, help="COMPONENT=torch to run one component on PyTorch (repeatable).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--dtype", "dtype", default=None, help="Precision (default: bf16 on cuda, fp32 on cpu).")
@click.option("--text", default=None, help="Text to speak (Speaker 1).")
@click.option("--script", "script_file", default=None, type=click.Path(dir_okay=False), help="Script file.")
@click.option("--voice", "voices", multiple=True, type=click.Path(dir_okay=False),
              help="Voice wav per speaker (Realtime work dirs: one voice preset .safetensors).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .wav (24 kHz mono).")
@click.option("--frames", default=None, type=COUNT,
              help="Force N speech frames (random-weight models never speak); at most the largest exported KV "
                   "bucket minus 2 (with the default buckets: 1022 for tiny, 65534 for 1.5b, 32766 for 7b).")
@click.option("--max-frames", default=None, type=COUNT, help="Stop after this many frames (same limit).")
@click.option("--cfg", "cfg_scale", default=None, type=CFG, help="Diffusion CFG scale (0-20; default 1.3, Realtime 1.5).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the diffusion noise.")
@click.option("--stream", is_flag=True, help="Write audio chunk by chunk as frames are produced.")
@click.option("--no-cuda-graph", is_flag=True, help="Run the frame step eagerly.")
@click.option("--allow-failed-quant", is_flag=True,
              help="Use a quantized work dir whose quality gate (vvtrt parity) failed or never ran.")
@_friendly
def synth(workdir, backend, fallback, device, dtype, text, script_file, voices, output, frames, max_frames,
          cfg_scale, seed, stream, no_cuda_graph, allow_failed_quant):
    """Synthesize speech to a wav file."""
    from vvtrt.pipeline import run_synth

    res = run_synth(workdir, backend, fallback, device, dtype, text, script_file, voices, output, frames,
                    max_frames, cfg_scale, seed, stream, False if no_cuda_graph else "auto",
                    allow_failed_quant=allow_failed_quant)
    forced = " (speech_diffusion forced by --frames)" if res.forced else ""
    click.echo(f"wrote {output}: {res.frames} frames, {res.audio_seconds:.2f} s of audio{forced}; "
               f"stop: {res.stop_reason}; RTF {res.rtf:.3f}; time to first audio {res.ttfa_s * 1000:.1f} ms")


@cli.command()
@workdir_opt
@click.option("--backend", "backends", default="torch", show_default=True,
              help="Comma-separated: torch, torch-compile, torch-max-autotune, onnxruntime, onnxruntime-graph, "
                   "tensorrt.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--dtype", "dtype", default=None, help="Precision (default: bf16 on cuda, fp32 on cpu).")
@click.option("--frames", default=60, show_default=True, type=COUNT,
              help="Frames per run (Realtime: per stream); with --prompt-tokens at most the largest exported KV "
                   "bucket minus 2.")
@click.option("--prompt-tokens", default=None, type=click.IntRange(min=2),
              help="Prompt length for TTFA (default 512; long-form only).")
@click.option("--repeats", default=None, type=click.IntRange(1, REPEATS_MAX),
              help="Repeats (default 3); Realtime: timed TTFA requests (default 20).")
@click.option("--cfg", "cfg_scale", default=None, type=CFG, help="Guidance scale (default 1.3; Realtime 1.5).")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["pytorch-eager", "transformers"]),
              help="Baselines to measure in the same run (repeatable; long-form only).")
@click.option("--streams", default=1, show_default=True, type=COUNT,
              help="Concurrent streams batched into each frame step (throughput); baselines need 1. Realtime: "
                   "1, 2, 4 ... up to N streams, through one stepper and through the engine.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--compare-workdir", "compare", multiple=True, type=click.Path(file_okay=False),
              help="Another work dir of the same model (e.g. exported with --quant int8 / fp8) whose variants run "
                   "side by side in this bench, with their quantization gates (repeatable; long-form only).")
@_friendly
def bench(workdir, backends, device, dtype, frames, prompt_tokens, repeats, cfg_scale, baselines, streams, out_dir,
          compare):
    """Measure latency, RTF, time to first audio, memory and GPU telemetry. On a Realtime work dir (one
    --backend: torch, torch-compile, torch-max-autotune, onnxruntime or tensorrt): warm TTFA, the step and
    its components, memory, and streams through one stepper and through the engine, with a synthetic voice."""
    from vvtrt.pipeline import run_bench_verb

    paths = run_bench_verb(workdir, backends, device, dtype, frames, prompt_tokens, repeats, cfg_scale, baselines,
                           streams, out_dir, compare)
    click.echo(f"bench report: {paths['md']}")


@cli.command("bench-serving")
@workdir_opt
@serving_backend_opts
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--dtype", "dtype", default=None, help="Precision (default: bf16 on cuda, fp32 on cpu).")
@click.option("--mode", default="concurrency", show_default=True, type=click.Choice(["concurrency", "rate"]),
              help="Hold LEVEL requests in flight, or Poisson arrivals at LEVEL requests/s.")
@click.option("--levels", default="1,4,16,64", show_default=True, help="Comma-separated load levels.")
@click.option("--requests", default=32, show_default=True, type=COUNT, help="Requests per level.")
@click.option("--frames", default=64, show_default=True, type=COUNT, help="Frames per request (forced).")
@click.option("--prompt-words", default="8,64,256", show_default=True, help="Script lengths, cycled.")
@click.option("--max-streams", default=64, show_default=True, type=COUNT, help="Engine slots at most.")
@click.option("--max-context", default=None, type=click.IntRange(min=8),
              help="KV slots per stream (prompt + generated steps); default: the largest exported KV bucket. "
                   "Smaller contexts fit more streams in the KV pool.")
@click.option("--cfg", "cfg_scale", default=1.3, show_default=True, type=CFG, help="Diffusion CFG scale (0-20).")
@serving_step_opts
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Report directory.")
@_friendly
def bench_serving(workdir, backend, compile_shapes, device, dtype, mode, levels, requests, frames, prompt_words,
                  max_streams, max_context, cfg_scale, kv_groups, pipeline, out_dir):
    """Open-loop load on the serving engine: TTFA, inter-chunk gaps and RTF vs load."""
    from vvtrt.bench.serving import ServingLoad, run_serving_bench
    from vvtrt.errors import InputError

    try:
        lv = tuple(float(x) for x in levels.split(",") if x.strip())
        words = tuple(int(x) for x in prompt_words.split(",") if x.strip())
    except ValueError:
        raise InputError("--levels and --prompt-words are comma-separated numbers") from None
    load = ServingLoad(mode, lv, requests, frames, words, cfg_scale)
    from vvtrt.option_checks import check_max_context

    check_max_context(workdir, max_context, frames)  # every request would fail: refused before the engine loads
    paths = run_serving_bench(workdir, backend.replace("-compile", ""), device, dtype, load, out_dir,
                              compile=backend.endswith("-compile"), compile_shapes=compile_shapes,
                              max_streams=max_streams, max_context=max_context, kv_groups=kv_groups,
                              pipeline=pipeline)
    click.echo(f"serving bench report: {paths['json']}")


@cli.command()
@click.argument("json_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Directory for the Markdown and plots (default: next to the JSON).")
@_friendly
def report(json_file, out_dir):
    """Re-render Markdown and plots from a parity or bench JSON."""
    from vvtrt.option_checks import check_output_dir
    from vvtrt.bench.report_kinds import render_any

    if out_dir is not None:
        check_output_dir(out_dir, "--out directory")
    paths = render_any(json_file, out_dir)
    click.echo(f"json: {paths['json']}" + (f"\nmarkdown: {paths['md']}" if paths.get("md") else ""))
    for p in paths["plots"]:
        click.echo(f"plot: {p}")


@cli.command()
@click.option("-w", "--workdir", "workdir", default="demo-out", show_default=True, type=WORKDIR, callback=_non_empty,
              help="Work directory for the demo's files.")
@click.option("--frames", default=16, show_default=True, type=click.IntRange(min=16),
              help="Frames for parity, the wav and the bench (at least 16).")
@_friendly
def demo(workdir, frames):
    """Offline end to end on the built-in tiny model: export, build, parity, a wav, reports."""
    from vvtrt.pipeline import run_demo

    outputs = run_demo(workdir, frames, _progress)
    click.echo("demo outputs:")
    for k, v in outputs.items():
        click.echo(f"  {k}: {v}")


from vvtrt.realtime.cli_voices import voices as _voices  # noqa: E402 - Realtime voice presets (light import)

from vvtrt.cli_serve import loadtest, serve  # noqa: E402 - the serving commands

cli.add_command(_voices)
cli.add_command(serve)
cli.add_command(loadtest)


def main():
    try:
        cli(prog_name="vvtrt")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    _exit(code)


def _exit(code: int) -> None:
    """Exit; after ONNX Runtime CUDA use, skip static destructors (microsoft/onnxruntime#15174: the CUDA
    provider can abort in `cudaFreeHost` at teardown, turning a finished run into exit code 134)."""
    ort = sys.modules.get("vvtrt.runtime.ort_runner")
    if ort is not None and ort.cuda_sessions_used():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
