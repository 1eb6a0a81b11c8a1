"""The CLI's shared option types: finite floats in a range, counts, seeds, CFG scales and the work-dir
option (used by every command module)."""
from __future__ import annotations

import click

from vvtrt.option_checks import CFG_MAX, SEED_MAX


class FiniteFloat(click.ParamType):
    """A finite float within [lo, hi] (click's FloatRange lets NaN through)."""

    name = "float"

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        import math

        try:
            f = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(f) and self.lo <= f <= self.hi):
            self.fail(f"{value} is not a finite number from {self.lo:g} to {self.hi:g}", param, ctx)
        return f


SEED = click.IntRange(0, SEED_MAX)
CFG = FiniteFloat(0.0, CFG_MAX)
COUNT = click.IntRange(min=1)  # upper bounds depend on the work dir: checked in vvtrt.option_checks


def non_empty(ctx, param, value):
    if value is not None and not str(value).strip():
        raise click.BadParameter("an empty path; name the work directory", ctx, param)
    return value


WORKDIR = click.Path(file_okay=False)
workdir_opt = click.option("-w", "--workdir", "workdir", required=True, type=WORKDIR, callback=non_empty,
                           help="Work directory holding every stage's files.")


def serving_backend_opts(fn):
    """--backend and --compile-shapes of the serving engine (`vvtrt serve`, `vvtrt bench-serving`)."""
    fn = click.option("--compile-shapes", default="dynamic-batch", show_default=True,
                      type=click.Choice(["dynamic-batch", "dynamic", "static"]),
                      help="torch-compile: graphs compiled with the batch axis dynamic (one graph for every batch "
                           "bucket of 2+ streams, one for 1), also the KV length (dynamic), or one per bucket "
                           "(static).")(fn)
    return click.option("--backend", default="torch", show_default=True,
                        type=click.Choice(["torch", "torch-compile", "onnxruntime", "tensorrt"]),
                        help="Runtime of the serving engine (torch-compile: torch.compile'd frame step, its "
                             "compiled code cached in the work dir's compile-cache for the next start).")(fn)


def serving_step_opts(fn):
    """--kv-groups and --pipeline of the long-form serving step (`vvtrt serve`, `vvtrt bench-serving`)."""
    fn = click.option("--pipeline", is_flag=True,
                      help="Long-form models: launch each frame step before reading the last one, so the host's "
                           "per-step work overlaps the GPU's (chunks arrive one step later; audio unchanged; needs "
                           "--noise device).")(fn)
    return click.option("--kv-groups", default=1, show_default=True, type=click.IntRange(1, 2),
                        help="Long-form models: KV groups a step may run as. 2: short streams attend over their own "
                             "KV bucket beside long ones when that costs less (more CUDA graphs); 1: every step reads "
                             "the longest stream's bucket (the default until 2 is measured on a GPU). "
                             "--deterministic runs one.")(fn)
