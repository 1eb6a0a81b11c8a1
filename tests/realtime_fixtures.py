"""Helpers of the Realtime tests: the documented key layout, tiny original-layout checkpoints, crafted
pickles. Session fixtures live in the test modules that use them (import the helpers from here)."""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import pytest

# Every tensor name and shape of Microsoft's Realtime checkpoint (from Microsoft's own classes) and
# en-Grace_woman.pt (one of Microsoft's released voice presets, MIT), so a clean clone's CI has them.
DATA = Path(__file__).resolve().parent / "data"
KEYS_REALTIME = DATA / "vibevoice-realtime-0.5b-original-keys.txt"
GRACE = DATA / "en-Grace_woman.pt"
ENCODER = "model.acoustic_tokenizer.encoder."


def documented_realtime_keys(with_encoder: bool = False) -> dict[str, tuple[int, ...]]:
    """The key list of the released checkpoint (605 tensors: Microsoft's class minus its acoustic encoder)."""
    if not KEYS_REALTIME.is_file():
        pytest.fail(f"documented key list {KEYS_REALTIME} is missing")  # a check that cannot run is a failure
    out = {}
    for line in KEYS_REALTIME.read_text().splitlines():
        name, shape = line.split("\t")
        if with_encoder or not name.startswith(ENCODER):
            out[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return out


def pattern_of(name: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", name))


def write_tiny_realtime_checkpoint(root: Path, model, edit=None) -> Path:
    """`model` as an original-layout Realtime checkpoint (config.json + model.safetensors), its tensor
    names checked to be exactly the documented name patterns; `edit(tensors)` may change the tensors first."""
    from safetensors.torch import save_file

    from vvtrt.realtime.checkpoint import UNUSED_EMBED, to_original_key
    from vvtrt.realtime.config import original_config_json
    import json

    root.mkdir(parents=True, exist_ok=True)
    tensors = {to_original_key(k): v.contiguous() for k, v in model.state_dict().items()}
    tensors[UNUSED_EMBED] = tensors["model.language_model.embed_tokens.weight"].clone()
    assert {pattern_of(k) for k in tensors} == {pattern_of(k) for k in documented_realtime_keys()}
    if edit is not None:
        edit(tensors)
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(original_config_json(model.rt_config)))
    return root


def torch_zip(path: Path, pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A torch-style zip archive holding `pickle_bytes` as data.pkl (and raw storages)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return path


class _Evil:
    """Pickles to `os.system(<command>)`: what a malicious preset would do under a full unpickle."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def malicious_preset(path: Path, marker: Path) -> Path:
    """A preset-shaped pickle whose 'lm' entry runs `touch <marker>` when fully unpickled."""
    payload = {"lm": _Evil(f"touch {marker}"), "tts_lm": None, "neg_lm": None, "neg_tts_lm": None}
    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=2).dump(payload)
    return torch_zip(path, buf.getvalue())


@pytest.fixture(scope="module")
def one_torch_thread():
    """tiny-realtime's ops are microseconds: one intra-op thread is several times faster than two on a
    busy 2-core machine (threads spin-wait for each other); restored afterwards. Use it as
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")` after importing it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def three_slot_runner():
    """A tiny-realtime runner with one batch bucket (3) and one KV bucket (256): a stream runs the same kernels
    alone and with others, so its audio is bit-identical (other buckets pick other GEMM kernels: ~1e-5)."""
    from vvtrt.realtime.runtime import RealtimeRunner

    return RealtimeRunner.from_preset("tiny-realtime", batch_buckets=(3,), kv_buckets=(256,), capacity=256)


@pytest.fixture(scope="module")
def rt():
    """A module's `three_slot_runner()` (import it with the tests that take `rt`)."""
    return three_slot_runner()


def three_voices(model) -> list:
    """Three synthetic voices of different prompt lengths, named v0..v2."""
    from vvtrt.realtime.synthetic import make_voice

    return [make_voice(model, f"v{i}", lm_len=lm, tts_len=tts, seed=i)
            for i, (lm, tts) in enumerate([(12, 30), (5, 21), (17, 40)])]
