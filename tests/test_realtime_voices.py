"""Realtime voices: the restricted preset reader (real fixture, malicious pickles), safetensors voices, the
`vvtrt voices` verbs."""
from __future__ import annotations

import pickle

import pytest
import torch
from click.testing import CliRunner

from tests.realtime_fixtures import GRACE, malicious_preset, torch_zip
from vvtrt.cli import cli
from vvtrt.errors import InputError


@pytest.fixture(scope="module")
def grace():
    if not GRACE.is_file():
        pytest.fail(f"fixture {GRACE} is missing")  # a check that cannot run is a failure
    from vvtrt.realtime.preset_pickle import import_preset

    return import_preset(GRACE)


def test_fixture_preset_reads_with_the_documented_layout(grace):
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.voices import check_voice

    assert grace.lengths() == {"lm": 57, "tts_lm": 209, "neg_lm": 1, "neg_tts_lm": 1}
    assert grace["tts_lm"].k.shape == (20, 2, 209, 64) and grace["lm"].hidden.shape == (57, 896)
    assert grace["tts_lm"].k.dtype == torch.bfloat16
    check_voice(grace, preset_config("realtime-0.5b"), "grace")
    with pytest.raises(InputError, match="does not fit model tiny-realtime"):
        check_voice(grace, preset_config("tiny-realtime"), "grace")


def test_voice_round_trips_through_safetensors(tmp_path, grace):
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.voices import list_voices, read_voice, save_voice

    path = save_voice(grace, tmp_path)
    back = read_voice(path, preset_config("realtime-0.5b"))
    assert back.name == "en-Grace_woman" and back.source.startswith("import en-Grace_woman.pt sha256:")
    for b, c in grace.branches.items():
        for part in ("hidden", "k", "v"):
            assert torch.equal(getattr(back[b], part), getattr(c, part))
    assert [v["name"] for v in list_voices(tmp_path)] == ["en-Grace_woman"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write: no temporaries left


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    from vvtrt.realtime.preset_pickle import read_preset_pickle

    marker = tmp_path / "pwned"
    evil = malicious_preset(tmp_path / "evil.pt", marker)
    with pytest.raises(InputError, match=r"asks for (posix|os)\.system.*refused"):
        read_preset_pickle(evil)
    assert not marker.exists()
    res = CliRunner().invoke(cli, ["voices", "import", str(evil), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "refused" in res.output and not marker.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("payload, words", [
    (b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03.", "builtins.eval"),
    (b"\x80\x02ctorch\nFloatStorage\nq\x00.", "torch.FloatStorage"),
    (b"\x80\x02}q\x00.", "this file holds []"),
    (b"not a pickle", "not a readable voice preset"),
])
def test_other_bad_pickles_are_clear_input_errors(tmp_path, payload, words):
    from vvtrt.realtime.preset_pickle import read_preset_pickle

    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        read_preset_pickle(torch_zip(tmp_path / "bad.pt", payload))


def test_tensor_views_past_their_storage_are_refused(tmp_path):
    from vvtrt.realtime import preset_pickle

    class _Rebuild:  # pickles as torch._utils._rebuild_tensor_v2(storage, 0, (100,), (1,), False, OrderedDict())
        def __reduce__(self):
            import collections

            return (preset_pickle._rebuild_tensor, (_Storage(), 0, (100,), (1,), False, collections.OrderedDict()))

    class _Storage:
        pass

    class P(pickle.Pickler):
        def reducer_override(self, obj):
            return NotImplemented

        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                import torch as t

                return ("storage", t.BFloat16Storage, "0", "cpu", 4)
            return None

    import io

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"lm": _Rebuild()})
    data = buf.getvalue().replace(b"vvtrt.realtime.preset_pickle\n_rebuild_tensor", b"torch._utils\n_rebuild_tensor_v2")
    path = torch_zip(tmp_path / "oob.pt", data, {"0": bytes(8)})
    with pytest.raises(InputError, match="runs past its storage"):
        preset_pickle.read_preset_pickle(path)


def test_not_a_zip_is_an_input_error(tmp_path):
    from vvtrt.realtime.preset_pickle import read_preset_pickle

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a torch zip archive"):
        read_preset_pickle(bad)


def test_cli_import_make_list(tmp_path):
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.voices import read_voice

    out = tmp_path / "voices"
    runner = CliRunner()
    res = runner.invoke(cli, ["voices", "import", str(GRACE), "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["voices", "import", str(GRACE), "-o", str(out), "--model", "tiny-realtime"])
    assert res.exit_code == 2 and "does not fit model tiny-realtime" in res.output
    res = runner.invoke(cli, ["voices", "make", "-o", str(out), "--name", "syn", "--lm-len", "9", "--tts-len", "20"])
    assert res.exit_code == 0, res.output
    syn = read_voice(out / "syn.safetensors", preset_config("tiny-realtime"))
    assert syn.lengths() == {"lm": 9, "tts_lm": 20, "neg_lm": 1, "neg_tts_lm": 1}
    res = runner.invoke(cli, ["voices", "make", "-o", str(out), "--lm-len", "30", "--tts-len", "20"])
    assert res.exit_code == 2 and "lm_len" in res.output
    res = runner.invoke(cli, ["voices", "list", str(out)])
    assert res.exit_code == 0 and "en-Grace_woman\tlm=57\ttts_lm=209" in res.output and "syn\tlm=9" in res.output
    res = runner.invoke(cli, ["voices", "list", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_synthetic_voice_is_seeded_and_usable():
    """A synthetic preset records its recipe and ends in a finite, non-degenerate condition."""
    from vvtrt.realtime.presets import build_realtime_model
    from vvtrt.realtime.synthetic import make_voice

    m = build_realtime_model("tiny-realtime")
    v = make_voice(m, "s", 6, 15, seed=4)
    assert v.source.startswith("synthetic tiny-realtime seed=4")
    h = v["tts_lm"].last_hidden()
    assert h.shape == (64,) and torch.isfinite(h).all() and float(h.std()) > 0.1
