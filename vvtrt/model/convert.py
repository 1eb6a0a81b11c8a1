"""`convert(src, out)` (`vvtrt convert DIR OUT`): a validated checkpoint written in transformers' layout (what
`vibevoice/VibeVoice-1.5B-hf` holds), one output shard per input shard so that at most one shard's tensors
are in memory; tensors keep their stored dtype.

Every file is written atomically, weights first and config.json last, so an interrupted conversion leaves
a directory without config.json (refused as "not a checkpoint"), never a checkpoint with some tensors
missing. The result is validated before returning. A non-empty OUT is refused unless `force`; then its
config.json goes first and weight files the new checkpoint does not use are removed at the end.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from vvtrt.errors import InputError, WorkdirError
from vvtrt.fsio import atomic_path, atomic_write_json, atomic_write_text
from vvtrt.model.safetensors_io import INDEX_NAME, SINGLE_NAME, TensorReader, require_finite

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json")


@dataclass(frozen=True)
class Conversion:
    """What `convert` wrote."""

    out: Path
    layout: str          # the source's layout
    tensors: int
    files: int           # weight files written
    tokenizer: bool      # whether tokenizer files were copied


def convert(src_dir, out_dir, tokenizer_dir=None, force: bool = False) -> Conversion:
    """Write `src_dir` (any layout vvtrt loads, validated first) to `out_dir` in transformers' layout,
    with the tokenizer files of `tokenizer_dir` (or of `src_dir`) beside it."""
    from vvtrt.model.checkpoint import plan_checkpoint
    from vvtrt.model.layouts import detect_layout, read_config

    src = Path(src_dir).expanduser()
    if detect_layout(read_config(src), src).family == "realtime":
        raise InputError(f"{src} is a VibeVoice-Realtime checkpoint, and transformers has no layout for that model "
                         f"to convert to: use the directory as it is (`vvtrt export --model {src} --tokenizer DIR`)")
    plan = plan_checkpoint(src)
    out = Path(out_dir).expanduser()
    tok_src = _tokenizer_source(tokenizer_dir, plan.root, plan.config)
    _prepare_out(out, plan.root, force)
    shards = sorted({e.file for e in plan.entries.values()})
    names = [SINGLE_NAME] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    with TensorReader() as reader:
        for shard, name in zip(shards, names):
            tensors = {k: reader.read(e) for k, e in plan.entries.items() if e.file == shard}
            for k, t in tensors.items():
                require_finite(plan.entries[k], t)
            _write_shard(out / name, tensors)
            weight_map.update(dict.fromkeys(tensors, name))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            del tensors
    if len(names) > 1:
        atomic_write_json(out / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    copied = _copy_tokenizer(tok_src, out) if tok_src else False
    _remove_stale(out, set(names) | ({INDEX_NAME} if len(names) > 1 else set()))
    config = plan.config
    config.architectures = ["VibeVoiceForConditionalGeneration"]
    atomic_write_text(out / "config.json", config.to_json_string())  # last: the directory is a checkpoint now
    plan_checkpoint(out)  # what we wrote must load
    log.info("converted %s (%s layout) to %s: %d tensors in %d file(s)", plan.root, plan.layout.name, out,
             len(weight_map), len(names))
    return Conversion(out, plan.layout.name, len(weight_map), len(names), copied)


def _tokenizer_source(tokenizer_dir, root: Path, config) -> Path | None:
    """Where the tokenizer files come from: `tokenizer_dir` (which must hold a tokenizer that encodes text
    within the model's vocabulary), else the checkpoint's own (None when it has none, as Microsoft's
    original layout)."""
    if tokenizer_dir is None:
        return root if any((root / n).is_file() for n in TOKENIZER_FILES) else None
    from vvtrt.model.text_tokenizer import load_tokenizer_dir, probe_tokenizer

    tok = Path(tokenizer_dir).expanduser()
    if not tok.is_dir() or not any((tok / n).is_file() for n in TOKENIZER_FILES):
        raise InputError(f"--tokenizer {tok} is not a directory with tokenizer files "
                         f"({', '.join(TOKENIZER_FILES[:4])}): pass the directory of a downloaded Qwen2.5 tokenizer")
    loaded = load_tokenizer_dir(tok)
    vocab = getattr(getattr(config, "text_config", None), "vocab_size", None)
    probe_tokenizer(loaded, tok, vocab)
    size = len(loaded.tokenizer)
    if vocab is not None and size > vocab:
        raise InputError(f"--tokenizer {tok} has {size} tokens but the model's vocabulary is {vocab}: it belongs "
                         "to another model; pass the tokenizer this model was trained with")
    return tok


def _prepare_out(out: Path, src: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file: name a new or empty directory")
    if out.resolve() == src.resolve():
        raise InputError(f"convert would overwrite {out}: choose another output directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise InputError(f"output directory {out} is not empty: choose a new or empty directory, or pass "
                             "--force to replace the checkpoint files in it")
        (out / "config.json").unlink(missing_ok=True)  # until the end, OUT is no checkpoint
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {out}: {exc.strerror or exc}") from None


def _remove_stale(out: Path, written: set[str]) -> None:
    """Weight files and an index left from an earlier checkpoint in OUT (`--force`) would be read with
    the new one: remove them."""
    for p in [*out.glob("*.safetensors"), out / INDEX_NAME]:
        if p.is_file() and p.name not in written:
            log.info("removing %s (not part of the converted checkpoint)", p)
            p.unlink()


def _write_shard(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    try:
        with atomic_path(path) as tmp:
            save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp), metadata={"format": "pt"})
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' writer reports a full disk as its own error type
        raise WorkdirError(f"cannot write {path} ({_write_failure(exc)}): free space on that disk or choose "
                           "another OUT, then re-run `vvtrt convert` (nothing in OUT is a checkpoint yet)") from None


def _write_failure(exc: BaseException) -> str:
    text = str(exc)
    if "StorageFull" in text or "code: 28" in text or "No space left" in text:
        return "no space left on the device"
    from vvtrt.model.text_tokenizer import third_party_message

    return third_party_message(exc)


def _copy_tokenizer(src: Path, out: Path) -> bool:
    copied = False
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src / name, tmp)
            copied = True
    return copied
