"""workdir.json of a Realtime work dir: `"kind": "realtime"`, the model source, `RealtimeExportOptions`
and the `RealtimeConfig` (in place of the long-form `ModelInfo`), to and from JSON with every field
checked; the Realtime component names; the `vvtrt export` line that re-creates a graph.

    {"kind": "realtime", "model": {"preset", "path", "seed"[, "tokenizer"]},
     "options": {"steps", "max_batch", "kv_buckets"}, "info": RealtimeConfig.to_json()}

Light on imports (no torch): `vvtrt.workdir` reads it for every work dir.
"""
from __future__ import annotations

import dataclasses

from vvtrt.model.kinds import LONGFORM, REALTIME as KIND, meta_kind  # noqa: F401 - re-exported
from vvtrt.workdir_files import export_command_tail

KINDS = (LONGFORM, KIND)
# the names of `vvtrt.realtime.specs.COMPONENTS` (kept here so that reading a work dir imports no torch;
# tests/test_realtime_cli.py checks that the two agree)
COMPONENTS = ("rt_text_window", "rt_tts_decode", "rt_sampler", "rt_sampler_sde", "rt_decoder_step", "rt_connector")


def options_to_json(opts) -> dict:
    return {"steps": opts.steps, "max_batch": opts.max_batch, "kv_buckets": list(opts.kv_buckets)}


def options_from_json(raw: dict):
    from vvtrt.realtime.specs import RealtimeExportOptions

    if not isinstance(raw, dict) or set(raw) != {"steps", "max_batch", "kv_buckets"}:
        raise ValueError("options must hold exactly steps, max_batch and kv_buckets")
    if type(raw["steps"]) is not int or type(raw["max_batch"]) is not int or not isinstance(raw["kv_buckets"], list) \
            or not all(type(x) is int for x in raw["kv_buckets"]):
        raise TypeError("options must be integers")
    return RealtimeExportOptions(steps=raw["steps"], max_batch=raw["max_batch"], kv_buckets=tuple(raw["kv_buckets"]))


def config_from_json(raw: dict):
    """The `RealtimeConfig` of workdir.json's `info`, each field of the type the dataclass declares."""
    from vvtrt.realtime.config import RealtimeConfig

    if not isinstance(raw, dict):
        raise TypeError("info is not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(RealtimeConfig)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"info has unknown fields {sorted(unknown)}")
    out = {}
    for name, f in fields.items():
        if name not in raw:
            raise KeyError(f"info.{name}")
        v, t = raw[name], str(f.type)
        ok = {"str": isinstance(v, str), "int": type(v) is int and v >= 0,
              "float": type(v) in (int, float) and v >= 0,
              "tuple[int, ...]": isinstance(v, list) and bool(v) and all(type(x) is int and x > 0 for x in v)}.get(t)
        if not ok:
            raise ValueError(f"info.{name} = {v!r} is not a valid {t}")
        out[name] = tuple(v) if isinstance(v, list) else v
    return RealtimeConfig(**out)


def realtime_meta(source, options, cfg) -> dict:
    return {"kind": KIND, "model": source.to_json(), "options": options_to_json(options), "info": cfg.to_json()}


def parse_realtime_meta(meta: dict) -> tuple:
    """`(ModelSource, RealtimeExportOptions, RealtimeConfig)`; TypeError/KeyError/ValueError/InputError
    when malformed."""
    from vvtrt.model.resolve import ModelSource

    source = ModelSource(**meta["model"])
    if not (isinstance(source.preset, str) or isinstance(source.path, str)) or type(source.seed) is not int:
        raise ValueError("model needs a preset or a path, and an integer seed")
    options = options_from_json(meta["options"])
    cfg = config_from_json(meta["info"])
    if options.kv_buckets[-1] > cfg.context:
        raise ValueError(f"kv_buckets {options.kv_buckets} pass the model's {cfg.context} positions")
    return source, options, cfg


def export_command(root, source, options, cfg, component=None, precision=None) -> str:
    """The `vvtrt export` line that re-exports (component, precision) of a Realtime work dir."""
    from vvtrt.realtime.specs import RealtimeExportOptions

    cmd = f"vvtrt export -w {root} --model {source.label}"
    if options.steps != RealtimeExportOptions().steps:
        cmd += f" --steps {options.steps}"
    if options.kv_buckets != RealtimeExportOptions.for_config(cfg, options.steps).kv_buckets:
        cmd += f" --kv-buckets {','.join(map(str, options.kv_buckets))}"
    return cmd + export_command_tail(source, component, precision)


def check_realtime_components(names) -> tuple[str, ...]:
    """A user's Realtime component list (comma string or iterable); all of them when empty."""
    from vvtrt.components.specs import check_components

    return check_components(names, COMPONENTS, "Realtime component")
