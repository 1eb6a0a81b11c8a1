"""The model kinds vvtrt compiles and serves, and where each kind's code lives.

`longform` is VibeVoice 1.5B / 7B, `realtime` VibeVoice-Realtime-0.5B. The lower layers (the model
resolver, the work dir, the runtime backends, export, engines) and the server's engine choice ask this
registry by kind name instead of importing a kind's package: every hook is a dotted path
(`"package.module:attribute"`) imported when it is first asked for, so nothing at or below this layer
imports `vvtrt.realtime` (tests/test_imports.py checks it).

Light on imports (no torch, nothing of vvtrt but the errors): `vvtrt.workdir` reads it for every work dir.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

LONGFORM = "longform"
REALTIME = "realtime"


@dataclass(frozen=True)
class Kind:
    """One model kind: each field but `name` and `traced_files` is a hook, `"module:attribute"` ("" when the
    kind has none: the long-form code the lower layers run themselves)."""

    name: str
    components: str                       # the tuple of its component names (an import without torch)
    traced_files: tuple[str, ...] = ()    # files under vvtrt/ its graphs trace besides vvtrt/components/*.py
    is_preset: str = ""                   # str -> bool: a preset name of this kind
    config_from_original: str = ""        # original config.json dict -> the kind's config
    new_model: str = ""                   # config -> module (built on the current device)
    to_meta: str = ""                     # (source, options, info) -> workdir.json
    parse_meta: str = ""                  # workdir.json -> (ModelSource, options, info)
    build_specs: str = ""                 # (info, options) -> {name: ComponentSpec}
    export_command: str = ""              # (root, source, options, info, component, precision) -> str
    check_components: str = ""            # a user's component list -> tuple of names
    load_model: str = ""                  # (source, precision, device) -> the PyTorch model of a work dir
    build_engine: str = ""                # server config -> the serving engine of a work dir
    service_class: str = ""               # the server's speech service class over that engine

    def load(self, hook: str):
        """The object a hook names, imported now; `LookupError` when this kind has no such hook."""
        target = getattr(self, hook)
        if not target:
            raise LookupError(f"the {self.name} model kind has no {hook}")
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def component_names(self) -> tuple[str, ...]:
        return tuple(self.load("components"))


_RT = "vvtrt.realtime."
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(LONGFORM, components="vvtrt.components.specs:COMPONENTS",
         build_engine="vvtrt.server.serve:build_longform_engine",
         service_class="vvtrt.server.service:SpeechService"),
    Kind(REALTIME, components=_RT + "workdir_meta:COMPONENTS",
         traced_files=("realtime/config.py", "realtime/model.py", "realtime/sampler.py", "realtime/specs.py",
                       "realtime/steps.py"),
         is_preset=_RT + "presets:is_realtime_preset",
         config_from_original=_RT + "config:config_from_original",
         new_model=_RT + "model:RealtimeModel",
         to_meta=_RT + "workdir_meta:realtime_meta",
         parse_meta=_RT + "workdir_meta:parse_realtime_meta",
         build_specs=_RT + "specs:build_realtime_specs",
         export_command=_RT + "workdir_meta:export_command",
         check_components=_RT + "workdir_meta:check_realtime_components",
         load_model=_RT + "backends:load_realtime_model",
         build_engine="vvtrt.server.realtime_service:build_realtime_engine",
         service_class="vvtrt.server.realtime_service:RealtimeSpeechService"),
)}


def get(name: str) -> Kind:
    """The registered kind `name` (a `ValueError` naming the known ones otherwise)."""
    if not isinstance(name, str) or name not in KINDS:
        raise ValueError(f"kind {name!r} is not one of {', '.join(KINDS)}")
    return KINDS[name]


def meta_kind(meta) -> str:
    """The kind a workdir.json names ("longform" when it names none); ValueError for an unknown one."""
    kind = meta.get("kind", LONGFORM) if isinstance(meta, dict) else LONGFORM
    return get(kind).name


def preset_kind(name: str) -> str | None:
    """The kind whose preset `name` is (None: no kind with its own preset check claims it)."""
    for kind in KINDS.values():
        if kind.is_preset and kind.load("is_preset")(name):
            return kind.name
    return None


def all_components() -> tuple[str, ...]:
    """Every kind's component names, long-form first."""
    return tuple(name for kind in KINDS.values() for name in kind.component_names())
