"""`convert(src, out)`: a validated checkpoint written in transformers' layout (what `vibevoice/VibeVoice-1.5B-hf`
holds), one output shard per input shard so that at most one shard's tensors are in memory; tensors keep
their stored dtype. Every file is written atomically; the result is validated before returning.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vvtrt.errors import InputError
from vvtrt.fsio import atomic_path, atomic_write_json, atomic_write_text
from vvtrt.model.safetensors_io import INDEX_NAME, SINGLE_NAME, TensorReader

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json")


def convert(src_dir, out_dir, tokenizer_dir=None) -> Path:
    """Write `src_dir` (any layout vvtrt loads, validated first) to `out_dir` in transformers' layout,
    with the tokenizer files of `tokenizer_dir` (or of `src_dir`) beside it. Returns `out_dir`."""
    from vvtrt.model.checkpoint import plan_checkpoint

    plan = plan_checkpoint(Path(src_dir))
    out = Path(out_dir)
    if out.resolve() == plan.root.resolve():
        raise InputError(f"convert would overwrite {out}: choose another output directory")
    shards = sorted({e.file for e in plan.entries.values()})
    names = [SINGLE_NAME] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    with TensorReader() as reader:
        for shard, name in zip(shards, names):
            tensors = {k: reader.read(e) for k, e in plan.entries.items() if e.file == shard}
            _write_shard(out / name, tensors)
            weight_map.update(dict.fromkeys(tensors, name))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            del tensors
    if len(names) > 1:
        atomic_write_json(out / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    config = plan.config
    config.architectures = ["VibeVoiceForConditionalGeneration"]
    atomic_write_text(out / "config.json", config.to_json_string())
    _copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir else plan.root, out)
    plan_checkpoint(out)  # what we wrote must load
    log.info("converted %s (%s layout) to %s: %d tensors in %d file(s)", plan.root, plan.layout.name, out,
             len(weight_map), len(names))
    return out


def _write_shard(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp), metadata={"format": "pt"})


def _copy_tokenizer(src: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src / name, tmp)
