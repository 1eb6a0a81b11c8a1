"""The server's rules without a server (fast): text-mode segmentation of a script split at every position,
the truncation verdicts and their counts, the input rules, the Origin check and the auth rule."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from vvtrt.errors import InputError
from vvtrt.server import input_rules
from vvtrt.server.config import ServerConfig
from vvtrt.server.metrics import ServerMetrics
from vvtrt.server.truncation import truncation
from vvtrt.server.ws_text import TextSession
from vvtrt.serving.api import Cancelled, SlowReader

SCRIPT = "Speaker 1: Hello there. Speaker 2: Hi, how are you?\nSpeaker 1: Fine."
EXPECTED = ["Speaker 1: Hello there.", "Speaker 2: Hi, how are you?", "Speaker 1: Fine."]


def _session(max_pending: int = 64) -> TextSession:
    config = ServerConfig(workdir="w", max_input_chars=4096, ws_max_pending=max_pending)
    ws = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(service=SimpleNamespace(config=config))))
    return TextSession(ws, {})


def _segments(pieces) -> list[str]:
    s = _session()
    for p in pieces:
        s._handle(p)
    s._handle('{"type": "end"}')
    out = []
    while (seg := s.segments.get_nowait()) is not None:
        out.append(seg)
    return out


@pytest.mark.parametrize("cut", range(1, len(SCRIPT)))
def test_a_script_split_at_any_position_gives_the_same_segments(cut):
    assert _segments([SCRIPT[:cut], SCRIPT[cut:]]) == EXPECTED


def test_token_streams_and_labels_alone():
    assert _segments(list(SCRIPT)) == EXPECTED
    assert _segments(["Speaker 1: ", "Hello", ". ", "Speaker 2:", " ", "Yes."]) == \
        ["Speaker 1: Hello.", "Speaker 2: Yes."]
    assert _segments(["Speaker 2: Hi. And", " more"]) == ["Speaker 2: Hi.", "Speaker 2: And more"]
    assert _segments(["Note: colons are text. ", "Speaker 1: "]) == ["Note: colons are text."]


def test_the_sentence_queue_is_bounded():
    s = _session(max_pending=2)
    with pytest.raises(InputError, match="2 sentences are already waiting"):
        s._handle("One. Two. Three. ")


def _opened(error=None, stop="eos", frames=3):
    return SimpleNamespace(error=error, stop_reason=lambda: stop, summary=SimpleNamespace(frames=frames),
                           request_id="req-9")


@pytest.mark.parametrize("error, stop, draining, reason, code", [
    (SlowReader("behind"), "cancelled: slow reader", False, "slow_reader", 1008),
    (Cancelled("shut"), "cancelled: shutdown", True, "shutdown", 1001),
    (Cancelled("gone"), "cancelled", False, "cancelled", 1011),
    (None, "error: step failed", False, "error", 1011),
])
def test_truncation_verdicts_are_logged_and_counted(error, stop, draining, reason, code, caplog):
    service = SimpleNamespace(draining=draining, metrics=ServerMetrics())
    cut = truncation(_opened(error, stop), service)
    assert cut.reason == reason and cut.close_code == code and "after 3 frames" in str(cut)
    assert f'vvtrt_streams_truncated_total{{reason="{reason}"}} 1.0' in service.metrics.exposition().decode()
    assert "req-9 truncated" in caplog.text


def test_complete_or_client_stopped_streams_are_not_truncated():
    service = SimpleNamespace(draining=False, metrics=ServerMetrics())
    assert truncation(_opened(), service) is None
    assert truncation(_opened(GeneratorExit()), service) is None  # the reader itself left


def test_input_rules():
    with pytest.raises(InputError, match="not valid Unicode"):
        input_rules.check_text("ok \ud800", 100)
    with pytest.raises(InputError, match="limit is 3"):
        input_rules.check_text("four", 3)
    limits = input_rules.Limits(max_frames=5, allow_frames=False, default_max_frames=5)
    assert input_rules.check_numbers(limits, 0, 1.3, None, None) == 5
    for bad, word in ((dict(seed=True), "seed"), (dict(max_frames=6), "max_frames"), (dict(frames=2), "allow-frames"),
                      (dict(cfg_scale=float("nan")), "cfg_scale")):
        args = {"seed": 0, "cfg_scale": 1.3, "max_frames": None, "frames": None, **bad}
        with pytest.raises(InputError, match=word):
            input_rules.check_numbers(limits, **args)
    with pytest.raises(InputError, match="instructions"):
        input_rules.check_openai_fields(1.0, "whisper")
    with pytest.raises(InputError, match="diffusion steps"):
        input_rules.check_steps("5", 10)
    input_rules.check_steps("10", 10)


def test_a_public_address_needs_a_key_or_insecure():
    with pytest.raises(InputError, match="VVTRT_API_KEY"):
        ServerConfig(workdir=".", host="0.0.0.0").check()
    ServerConfig(workdir=".", host="0.0.0.0", insecure=True).check()
    ServerConfig(workdir=".", host="0.0.0.0", api_key="k").check()
    ServerConfig(workdir=".", host="::1").check()
