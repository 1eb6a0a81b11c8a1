"""A checkpoint directory validated before anything is allocated, then loaded at its target precision.

`plan_checkpoint` reads config.json and the safetensors headers only, builds the model on the meta
device (shapes, no memory) and compares the stored key/shape set with it: a missing, unexpected or
mis-shaped tensor is a `ModelError` naming the first offenders, in about a second for any model size.
`load_checkpoint` then builds the model on the meta device again and puts every stored tensor straight
into place (`load_state_dict(assign=True)`), each read into its own buffer and cast on its own, so the
host never holds much more than the weights at the target dtype. Tied weights are re-tied, and the
buffers no checkpoint stores (RoPE and timestep frequencies) are computed as a fresh model would.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vvtrt.errors import ModelError
from vvtrt.model.layouts import Layout, detect_layout, read_config
from vvtrt.model.safetensors_io import (FLOAT_DTYPES, TensorEntry, TensorReader, require_finite, scan_checkpoint,
                                        weight_files)

log = logging.getLogger(__name__)
SHOWN = 5  # offending keys named per kind in an error


@dataclass(frozen=True)
class CheckpointPlan:
    """A checkpoint directory whose every tensor is accounted for: ready to load."""

    root: Path
    layout: Layout
    raw_config: dict
    config: object                          # transformers config the model is built from
    expected: dict[str, tuple[int, ...]]    # model state-dict name -> shape, in the model's order
    entries: dict[str, TensorEntry]         # model state-dict name -> stored tensor (tied copies absent)

    @property
    def tied(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))


def meta_model(layout: Layout, config):
    """The model of `config` on the meta device: every shape, no memory."""
    import torch

    with torch.device("meta"):
        return layout.new_model(config)


def _expected(model) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Shapes of every state-dict entry, and the names that are another entry's tied copy."""
    shapes, seen, tied = {}, {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        shapes[name] = tuple(tensor.shape)
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return shapes, tied


def plan_checkpoint(root) -> CheckpointPlan:
    """Validate a checkpoint directory from its config and safetensors headers alone (see module doc)."""
    t0 = time.perf_counter()
    root = Path(root)
    raw = read_config(root)
    weight_files(root)  # no weights at all is said before anything about the layout
    layout = detect_layout(raw, root)
    config = layout.config(raw, root)
    stored = scan_checkpoint(root)
    model = meta_model(layout, config)
    expected, tied = _expected(model)
    skipped = {name for name, _ in model.named_buffers()} - set(expected)  # non-persistent: never stored
    entries = _match(root, layout, stored, expected, tied, skipped)
    log.info("validated %s (%s layout): %d tensors in %.2f s", root, layout.name, len(entries),
             time.perf_counter() - t0)
    return CheckpointPlan(root, layout, raw, config, expected, entries)


def _match(root: Path, layout: Layout, stored: dict[str, TensorEntry], expected: dict, tied: set[str],
           skipped: set[str]) -> dict[str, TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    unexpected, misshaped, not_float = [], [], []
    for name, entry in stored.items():
        key = layout.map_key(name)
        if key in entries:
            raise ModelError(f"{root}: tensors {entries[key].name!r} and {name!r} both map to {key!r}")
        if key not in expected:
            if key not in skipped:
                unexpected.append(entry)
            continue
        if entry.shape != expected[key]:
            misshaped.append((key, entry))
        elif entry.dtype not in FLOAT_DTYPES:
            not_float.append(entry)
        if key not in tied:
            entries[key] = entry
    missing = [k for k in expected if k not in entries and k not in tied]
    if missing or unexpected or misshaped or not_float:
        raise ModelError(_mismatch_message(root, layout, missing, unexpected, misshaped, not_float, expected))
    return entries


def _stored_as(key: str, entry: TensorEntry) -> str:
    renamed = f"stored as {entry.name}, " if entry.name != key else ""
    return f"{renamed}in {entry.file.name}"


def _mismatch_message(root, layout, missing, unexpected, misshaped, not_float, expected) -> str:
    def some(items, fmt) -> str:
        more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
        return "; ".join(fmt(i) for i in items[:SHOWN]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: " + some(missing, lambda k: f"{k} {expected[k]}"))
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped: " + some(
            misshaped, lambda ke: f"{ke[0]} expected {expected[ke[0]]}, found {ke[1].shape} "
                                  f"({_stored_as(ke[0], ke[1])})"))
    if unexpected:
        def read_as(e) -> str:
            return "" if layout.map_key(e.name) == e.name else f", read as {layout.map_key(e.name)}"

        parts.append(f"{len(unexpected)} unexpected: " + some(
            unexpected, lambda e: f"{e.name} {e.shape} (in {e.file.name}{read_as(e)})"))
    if not_float:
        parts.append(f"{len(not_float)} not floating point: " + some(not_float, lambda e: f"{e.name} {e.dtype}"))
    return (f"{root}: the weights do not match config.json ({layout.name} layout) - " + " | ".join(parts)
            + ". Nothing was loaded: re-download the checkpoint, or fix config.json to match it")


def load_checkpoint(plan: CheckpointPlan, dtype=None, device=None):
    """The model of a validated checkpoint, every floating tensor at `dtype` (default float32) on
    `device` (default CPU), in eval mode without gradients."""
    import torch

    t0 = time.perf_counter()
    dtype = dtype or torch.float32
    model = meta_model(plan.layout, plan.config)
    state = {}
    with TensorReader() as reader:
        for key, entry in plan.entries.items():
            state[key] = reader.read(entry, dtype if entry.dtype in FLOAT_DTYPES else None, device)
            require_finite(entry, state[key])
    model.load_state_dict(state, strict=False, assign=True)
    del state
    if plan.tied:
        model.tie_weights()
    _compute_unstored_buffers(model, dtype, device)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # never hand out a model with tensors that hold no values
        raise ModelError(f"{plan.root}: {len(left)} tensor(s) were left without values after loading "
                         f"({', '.join(left[:SHOWN])}): this is a vvtrt bug, please report it")
    log.info("loaded %s at %s on %s in %.2f s", plan.root, dtype, device or "cpu", time.perf_counter() - t0)
    return model.eval().requires_grad_(False)


def _compute_unstored_buffers(model, dtype, device) -> None:
    """Give every buffer still on the meta device (the non-persistent ones no checkpoint stores) the
    value a freshly built module computes: its owner is built again from its config, as `build_model`
    would build it (default dtype `dtype`, on `device`)."""
    import torch

    for module in model.modules():
        names = [n for n, b in module.named_buffers(recurse=False) if b.is_meta]
        if not names:
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise ModelError(f"cannot compute the buffers {names} of {type(module).__name__} (no config): "
                             "this is a vvtrt bug, please report it")
        prev = torch.get_default_dtype()
        try:
            torch.set_default_dtype(dtype)
            with torch.device(device or "cpu"):
                fresh = type(module)(config)
        finally:
            torch.set_default_dtype(prev)
        for n in names:
            module._buffers[n] = fresh._buffers[n]
