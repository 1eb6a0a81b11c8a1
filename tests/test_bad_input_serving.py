"""Bad input to the serving and voice verbs (`bench-serving`, `serve`, `loadtest`, `voices`, `report`, synth on a
Realtime work dir): exit 2, one line, no traceback, nothing written, a bounded time; a fake server on a
loopback socket of our own stands for a target that never answers or answers garbage."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import zipfile

import pytest

from cli_helpers import refused, run, snapshot
from server_fixtures import free_port, write_voice_clip


@contextlib.contextmanager
def fake_server(reply: bytes | None):
    """A TCP server on 127.0.0.1 that accepts and then sends `reply` (None: never answers); its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop, conns = threading.Event(), []

    def serve():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conns.append(conn)
            if reply is not None:
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(reply)
                    conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for c in conns:
            c.close()
        sock.close()


def _exported(tmp_path_factory, model: str, component: str):
    """A work dir of `model` with one small component exported (its metadata is what the checks read)."""
    root = tmp_path_factory.mktemp(f"serving_bad_{model}") / "wd"
    res = run("export", "--model", model, "-w", root, "--dtype", "fp32", "--components", component)
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def longform_wd(tmp_path_factory):
    return _exported(tmp_path_factory, "tiny", "diffusion_head")


@pytest.fixture(scope="module")
def realtime_wd(tmp_path_factory):
    return _exported(tmp_path_factory, "tiny-realtime", "rt_connector")


@pytest.fixture(scope="module")
def good_voice(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    res = run("voices", "make", "-o", root, "--model", "tiny-realtime", "--name", "good", "--lm-len", "4",
              "--tts-len", "8")
    assert res.exit_code == 0, res.output
    return root / "good.safetensors"


@pytest.mark.parametrize("opts, word", [
    (["--mode", "rate", "--levels", "0.0001"], "--levels"),    # waited for ever
    (["--mode", "concurrency", "--levels", "100000000"], "concurrency"),  # grew to gigabytes
    (["--levels", "nan"], "finite"),
    (["--mode", "rate", "--levels", "1,inf"], "finite"),
    (["--mode", "rate", "--levels", "1e-300"], "--levels"),   # failed only while plotting, after the run
])
def test_bench_serving_levels_that_cannot_finish_are_refused(longform_wd, tmp_path, opts, word):
    before = snapshot(longform_wd)
    assert word in refused("bench-serving", "-w", longform_wd, *opts, "--out", tmp_path / "o")
    assert snapshot(longform_wd) == before and not (tmp_path / "o").exists()


def test_a_max_context_no_request_fits_is_refused_at_start(longform_wd, tmp_path):
    line = refused("bench-serving", "-w", longform_wd, "--max-context", "8", "--out", tmp_path / "o")
    assert "--max-context 8" in line and "every request" in line
    line = refused("serve", "-w", longform_wd, "--max-context", "8", "--port", free_port())
    assert "--max-context 8" in line
    line = refused("bench-serving", "-w", longform_wd, "--frames", "5000", "--out", tmp_path / "o")
    assert "--frames 5000" in line and "every request" in line
    assert not (tmp_path / "o").exists()


def test_serve_refuses_an_unreadable_voice_clip_before_listening(longform_wd, tmp_path):
    voices = tmp_path / "voices"
    voices.mkdir()
    write_voice_clip(voices / "alice.wav")
    (voices / "bob.wav").write_bytes(b"RIFF\0\0\0\0WAVEgarbage")
    line = refused("serve", "-w", longform_wd, "--voices", voices, "--port", free_port())
    assert "bob.wav" in line and "--voices" in line


def test_serve_on_a_realtime_work_dir_refuses_a_folder_of_damaged_voices(realtime_wd, good_voice, tmp_path):
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "garbage.safetensors").write_bytes(b"\xff" * 64)
    data = good_voice.read_bytes()
    (voices / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    line = refused("serve", "-w", realtime_wd, "--voices", voices, "--port", free_port())
    assert "no Realtime voice that loads" in line


def test_loadtest_refuses_targets_that_are_no_vvtrt_server():
    port = free_port()  # nothing listens there
    assert "cannot reach" in refused("loadtest", "--url", f"http://127.0.0.1:{port}", "--duration", 1)
    garbage = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    with fake_server(garbage) as url:
        assert "not a vvtrt server" in refused("loadtest", "--url", url, "--duration", 1)
    with fake_server(None) as url:  # accepts and never answers
        assert "did not answer" in refused("loadtest", "--url", url, "--duration", 1, within=8)
    assert "--url" in refused("loadtest", "--url", "http://127.0.0.1:notaport", "--duration", 1)


def test_loadtest_stops_at_duration_plus_grace(monkeypatch):
    from vvtrt.server import loadtest

    monkeypatch.setattr(loadtest, "GRACE_S", 0.5)
    with fake_server(None) as url:
        t0 = time.perf_counter()
        results, wall = asyncio.run(loadtest.run_load(loadtest.LoadSpec(url=url, concurrency=3, duration_s=0.3)))
    assert time.perf_counter() - t0 < 3.0 and wall < 3.0
    assert results and all(r.error == "timeout" for r in results)


def test_voice_names_must_be_file_safe(tmp_path):
    for name in ("a\nb", " ", "../x", "-x", "a b"):
        assert "voice name" in refused("voices", "make", "-o", tmp_path / "v", "--name", name)
    assert "--lm-len" in refused("voices", "make", "-o", tmp_path / "v", "--lm-len", 10**9)  # was a runaway prefill
    assert not (tmp_path / "v").exists()


def test_voices_list_shows_only_what_would_load(good_voice, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    data = good_voice.read_bytes()
    (folder / "good.safetensors").write_bytes(data)
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "garbage.safetensors").write_bytes(b"\xff" * 64)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["lengths"] = "{broken"
    raw = json.dumps(header).encode()
    (folder / "damaged.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    res = run("voices", "list", folder)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    listed = [ln.split("\t")[0] for ln in res.output.splitlines() if "\t" in ln]
    assert listed == ["good"]


def test_a_wav_given_as_a_voice_preset_says_so(realtime_wd, tmp_path):
    clip = write_voice_clip(tmp_path / "me.wav")
    assert ".wav clip" in refused("voices", "import", clip, "-o", tmp_path / "v", "--model", "tiny-realtime")
    line = refused("synth", "-w", realtime_wd, "--text", "hi", "--voice", clip, "-o", tmp_path / "a.wav",
                   "--device", "cpu")
    assert ".wav clip" in line and "re-download" not in line
    assert not (tmp_path / "v").exists() and not (tmp_path / "a.wav").exists()


def test_a_preset_pickle_that_inflates_is_refused_unread(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 * 2**20))  # 64 MiB of pickle in a ~64 KB file
    assert path.stat().st_size < 2**20
    line = refused("voices", "import", path, "-o", tmp_path / "v", "--model", "tiny-realtime")
    assert "data.pkl" in line


def test_text_that_fills_the_realtime_context_says_so(realtime_wd, good_voice, tmp_path):
    line = refused("synth", "-w", realtime_wd, "--text", "word " * 400, "--voice", good_voice, "-o",
                   tmp_path / "a.wav", "--device", "cpu", "--frames", "4")
    assert "fill the model's context" in line and "from 1 to -" not in line


def test_report_on_an_incomplete_realtime_bench_json_is_one_line(tmp_path):
    path = tmp_path / "rt.json"
    path.write_text(json.dumps({"kind": "realtime-bench", "preset": "tiny-realtime"}))
    assert "realtime-bench" in refused("report", path, "--out", tmp_path / "o")


