"""Checks `vvtrt export` makes before the work dir is touched and before any model is built: the work
dir's existing kind, the model's context read cheaply (a preset's table or config.json), and whether the
KV buckets and --max-prompt leave room for the shortest script at all."""
from __future__ import annotations

import json
from pathlib import Path

from vvtrt.errors import InputError, WorkdirError

KIND_NAMES = {"longform": "a long-form (VibeVoice 1.5B/7B)", "realtime": "a Realtime"}


def check_workdir_kind(workdir, kind: str) -> None:
    """An existing work dir must hold exports of the same kind as the model about to be exported: one of
    the other kind is refused before its workdir.json is rewritten."""
    from vvtrt.model.kinds import meta_kind

    meta = Path(workdir).expanduser() / "workdir.json"
    if not meta.is_file():
        return
    try:
        have = meta_kind(json.loads(meta.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return  # a corrupt workdir.json is the export's own business (it rewrites it)
    if have != kind:
        raise WorkdirError(f"{meta.parent} holds {KIND_NAMES.get(have, have)} export, and the model is "
                           f"{KIND_NAMES.get(kind, kind)} one: export it into a new directory with -w OTHER_DIR "
                           "(nothing was changed)")


def source_context(source) -> int | None:
    """The positions of a long-form model source, from its preset or its config.json (no model built)."""
    from vvtrt.model.presets import PRESETS

    if source.preset:
        return PRESETS[source.preset].context
    from vvtrt.model.layouts import read_config

    raw = read_config(Path(source.path))
    text = raw.get("decoder_config") or raw.get("text_config") or {}
    value = text.get("max_position_embeddings") if isinstance(text, dict) else None
    return value if type(value) is int else None


def shortest_prompt(tokenizer) -> int:
    """Tokens of the prompt of the shortest script ("Speaker 1: a", no voice), the final audio_bos included."""
    from vvtrt.runtime.prompt import OUTPUT_HEADER, SYSTEM_PROMPT, TEXT_HEADER

    pieces = (SYSTEM_PROMPT, TEXT_HEADER, " Speaker 0: a\n", OUTPUT_HEADER)
    return sum(len(tokenizer.encode(p)) for p in pieces) + 1


def check_prompt_room(options, tokenizer) -> None:
    """--max-prompt and the largest KV bucket must fit the shortest script's prompt plus one frame."""
    need = shortest_prompt(tokenizer)
    if max(options.kv_buckets) < need + 1:
        raise InputError(f"--kv-buckets {','.join(map(str, options.kv_buckets))}: the largest bucket holds fewer "
                         f"than the {need + 1} positions of the shortest script plus one frame: every script would "
                         f"be refused; use buckets up to {need + 64} or more")
    if options.max_prompt < need:
        raise InputError(f"--max-prompt {options.max_prompt} is below the {need} tokens of the shortest script's "
                         f"prompt (the fixed instructions alone): every script would be refused; pass --max-prompt "
                         f"{need} or more")
