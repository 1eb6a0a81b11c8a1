"""The rules every request field follows, in one place: the checks the endpoints run (each an `InputError`
that names the field, so HTTP 400 or WebSocket close 4400) and the same limits as JSON-schema keywords for
`/openapi.json`.

    check_text(text, max_chars)                       # empty, too long, or not valid Unicode -> InputError
    check_numbers(limits, seed, cfg_scale, max_frames, frames)   # the frame cap to use
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vvtrt.errors import InputError
from vvtrt.option_checks import CFG_MAX, SEED_MAX, check_unicode

FRAMES_LIMIT = 1 << 20      # the largest frame count any server accepts (`--max-frames` lowers it)
MAX_VOICES = 4              # VibeVoice speaks at most four speakers
VOICE_NAME_MAX = 128
MODEL_NAME_MAX = 256


@dataclass(frozen=True)
class Limits:
    """A server's request limits (from its `ServerConfig`)."""
    max_input_chars: int = 4096
    max_frames: int = FRAMES_LIMIT
    allow_frames: bool = True
    default_max_frames: int | None = None

    @classmethod
    def of(cls, config) -> "Limits":
        cap = config.max_frames or FRAMES_LIMIT
        return cls(config.max_input_chars, cap, bool(config.allow_frames), config.max_frames)


def check_text(text, max_chars: int, field: str = "input") -> str:
    """`text`, or an InputError: not a string, blank, over `max_chars`, or not encodable as UTF-8 (a lone
    surrogate such as the JSON escape "\\ud800")."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{field} is empty: give the text to speak")
    if len(text) > max_chars:
        raise InputError(f"{field} is {len(text)} characters; the limit is {max_chars}")
    return check_unicode(text, field)  # the engines' own rule (vvtrt.option_checks)


def check_numbers(limits: Limits, seed, cfg_scale, max_frames, frames) -> int | None:
    """Check the numeric fields of a request (booleans are not numbers); the frame cap to use."""
    check_number("seed", seed, 0, SEED_MAX, integer=True)
    check_number("cfg_scale", cfg_scale, 0.0, CFG_MAX)
    for name, v in (("max_frames", max_frames), ("frames", frames)):
        if v is not None:
            check_number(name, v, 1, limits.max_frames, integer=True)
    if frames is not None and not limits.allow_frames:
        raise InputError("frames is not accepted by this server: it forces the length of random-weight test "
                         "models only (serve with --allow-frames); use max_frames to cap the length")
    return max_frames if max_frames is not None else limits.default_max_frames


def check_number(name: str, value, lo, hi, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise InputError(f"{name} must be {kind} from {lo} to {hi}, got {value!r}")


def check_openai_fields(speed, instructions) -> None:
    """OpenAI's fields vvtrt cannot honour are refused, never ignored."""
    check_number("speed", speed, 0.25, 4.0)
    if speed != 1.0:
        raise InputError(f"speed {speed:g} is not supported: vvtrt speaks at speed 1.0 only (leave speed out)")
    if instructions:
        raise InputError("instructions are not supported: VibeVoice takes no style prompt (leave instructions "
                         "out; pick the voice with `voice`)")


def check_steps(raw, steps: int | None) -> None:
    """WS `steps`: the diffusion steps are fixed when the model is exported; another value is refused."""
    if raw in (None, ""):
        return
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"query parameter steps={raw!r} is not a valid int") from None
    if steps is not None and value != steps:
        raise InputError(f"steps={value} is not supported: this model runs {steps} diffusion steps (fixed at "
                         f"export); leave steps out or send {steps}")


def schema_patch(limits: Limits, formats: list[str], default_cfg: float) -> dict:
    """JSON-schema keywords of the speech body's fields on this server (merged into `/openapi.json`)."""
    frames_doc = ("Forced frame count (random-weight test models; this server " +
                  ("accepts it)." if limits.allow_frames else "refuses it: --allow-frames is off)."))
    patch = {
        "input": {"maxLength": limits.max_input_chars, "pattern": r"\S"},
        "response_format": {"enum": formats},
        "cfg_scale": {"description": f"Classifier-free guidance; default {default_cfg} on every path."},
        "seed": {"maximum": SEED_MAX},  # an exact integer (pydantic writes 2**63-1 as a rounded float)
        "max_frames": {"maximum": limits.max_frames},
        "frames": {"maximum": limits.max_frames, "description": frames_doc},
    }
    if not limits.allow_frames:
        patch["frames"] = {"type": "null", "description": frames_doc}
    return patch
