"""`vvtrt voices`: import Microsoft's Realtime voice presets safely, make synthetic ones for random-weight
models, list a voice directory. Registered on the main CLI by `vvtrt.cli`."""
from __future__ import annotations

import click

from vvtrt.cli_errors import one_line_errors as _friendly

MODEL_HELP = "Realtime model the voice is for: a preset (realtime-0.5b, tiny-realtime) or an original checkpoint dir."


def resolve_realtime_config(spec: str):
    """The `RealtimeConfig` of a preset name or an original Realtime checkpoint directory (config only)."""
    from pathlib import Path

    from vvtrt.errors import InputError
    from vvtrt.realtime.presets import REALTIME_PRESETS, is_realtime_preset, preset_config

    if is_realtime_preset(spec):
        return preset_config(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise InputError(f"unknown Realtime model {spec!r}: use a preset ({', '.join(REALTIME_PRESETS)}) or an "
                         "original VibeVoice-Realtime checkpoint directory")
    from vvtrt.model.layouts import read_config
    from vvtrt.realtime.config import config_from_original

    return config_from_original(read_config(path), name=path.name)


@click.group("voices")
def voices():
    """Realtime voice presets (prefilled KV caches) as safetensors files."""


@voices.command("import")
@click.argument("preset_file", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Voice directory.")
@click.option("--model", "model_spec", default="realtime-0.5b", show_default=True, help=MODEL_HELP)
@click.option("--name", default=None, help="Voice name (default: the file's stem).")
@_friendly
def import_cmd(preset_file, out_dir, model_spec, name):
    """Import a Microsoft `.pt` preset with a restricted reader (nothing in the file is executed)."""
    from vvtrt.realtime.preset_pickle import import_preset
    from vvtrt.realtime.voices import check_voice, save_voice

    cfg = resolve_realtime_config(model_spec)
    voice = import_preset(preset_file, name)
    check_voice(voice, cfg, str(preset_file))
    path = save_voice(voice, out_dir)
    lengths = voice.lengths()
    click.echo(f"imported {voice.name} -> {path} (lm {lengths['lm']}, tts_lm {lengths['tts_lm']} positions)")


@voices.command("make")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Voice directory.")
@click.option("--model", "model_spec", default="tiny-realtime", show_default=True, help="Realtime preset.")
@click.option("--name", default="synthetic", show_default=True, help="Voice name.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1), help="Token/latent seed.")
@click.option("--model-seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="Init seed of the random-weight model.")
@click.option("--lm-len", default=64, show_default=True, type=click.IntRange(min=1), help="Text-LM positions.")
@click.option("--tts-len", default=192, show_default=True, type=click.IntRange(min=1), help="TTS-LM positions.")
@_friendly
def make_cmd(out_dir, model_spec, name, seed, model_seed, lm_len, tts_len):
    """A synthetic voice for a random-weight preset: the model's own prefill over seeded token ids."""
    from vvtrt.errors import InputError
    from vvtrt.realtime.presets import build_realtime_model, is_realtime_preset
    from vvtrt.realtime.synthetic import make_voice
    from vvtrt.realtime.voices import save_voice, voice_path

    if not is_realtime_preset(model_spec):
        raise InputError(f"`voices make` builds voices for random-weight presets (realtime-0.5b, tiny-realtime), "
                         f"not {model_spec!r}: import real presets with `vvtrt voices import`")
    voice_path(out_dir, name)
    context = resolve_realtime_config(model_spec).context
    for option, value in (("--lm-len", lm_len), ("--tts-len", tts_len)):
        if value >= context:
            raise InputError(f"{option} {value} must be below the model's {context} positions (a voice is a "
                             "prompt; the released ones hold a few hundred)")
    model = build_realtime_model(model_spec, seed=model_seed)
    path = save_voice(make_voice(model, name, lm_len, tts_len, seed), out_dir)
    click.echo(f"made {name} -> {path} (lm {lm_len}, tts_lm {tts_len} positions)")


@voices.command("list")
@click.argument("voice_dir", type=click.Path(file_okay=False))
@_friendly
def list_cmd(voice_dir):
    """The voices in a directory with their lengths and sources."""
    from vvtrt.realtime.voices import list_voices

    found = list_voices(voice_dir)
    if not found:
        click.echo(f"no voices in {voice_dir}")
    for v in found:
        ln = v["lengths"]
        click.echo(f"{v['name']}\tlm={ln.get('lm')}\ttts_lm={ln.get('tts_lm')}\t{v['source']}")
