"""Work dirs that survive faults and bad files, through the real CLI.

One small tiny-model work dir is exported once for the module (token_embed, connectors and the 2-step
diffusion_sampler, fp32 and fp16; weights above 100 kB go to an external .onnx.data file, so both graph
layouts are covered); each test that damages it works on a copy.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import one_clear_line, run, spawn
from vvtrt.precision import Precision
from vvtrt.workdir import Workdir, files_changed, lock_holder

COMPONENTS = "token_embed,connectors,diffusion_sampler"
FP32, FP16 = Precision.FP32, Precision.FP16


@pytest.fixture(scope="module")
def small_wd(tmp_path_factory) -> Path:
    from vvtrt.export import onnx_export
    from vvtrt.pipeline import run_export

    root = tmp_path_factory.mktemp("faults") / "wd"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 100_000)
        run_export("tiny", root, "fp32,fp16", 2, COMPONENTS, 0, False, None)
    return root


@pytest.fixture
def wd(small_wd, tmp_path) -> Path:
    dst = tmp_path / "wd"
    shutil.copytree(small_wd, dst)
    return dst


def test_fixture_has_both_graph_layouts_and_hashed_records(small_wd):
    wd = Workdir.open(small_wd)
    assert len(wd.verify()) == 6
    rec = wd.export_record("token_embed", FP32)
    assert set(rec["files"]) == {"token_embed.fp32.onnx", "token_embed.fp32.onnx.data"}
    assert set(wd.export_record("connectors", FP32)["files"]) == {"connectors.fp32.onnx"}
    for name, f in rec["files"].items():
        assert f["bytes"] == (small_wd / "onnx" / name).stat().st_size and len(f["sha256"]) == 64
    assert not [p for p in small_wd.rglob("*") if p.name.endswith(".tmp")]


# -- every class of bad file: each verb refuses with one line -----------------------------------------------
def _rewrite_json(path: Path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _flip_last_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _replace_with_dir(path: Path):
    path.unlink()
    path.mkdir()


ONNX = "onnx/connectors.fp32.onnx"
DATA = "onnx/token_embed.fp32.onnx.data"
REC = "onnx/connectors.fp32.json"
DAMAGE = {  # name: (what to do to the work dir, a word the one-line error must contain)
    "graph missing": (lambda r: (r / ONNX).unlink(), "connectors.fp32.onnx is missing"),
    "graph truncated": (lambda r: (r / ONNX).write_bytes((r / ONNX).read_bytes()[:1000]), "truncated"),
    "graph tampered, same size": (lambda r: _flip_last_byte(r / ONNX), "sha256"),
    "graph is a directory": (lambda r: _replace_with_dir(r / ONNX), "directory"),
    "data missing": (lambda r: (r / DATA).unlink(), "token_embed.fp32.onnx.data is missing"),
    "data truncated": (lambda r: (r / DATA).write_bytes(b"\0" * 10), "truncated"),
    "data tampered, same size": (lambda r: _flip_last_byte(r / DATA), "sha256"),
    "record missing": (lambda r: (r / REC).unlink(), "no export record"),
    "record truncated": (lambda r: (r / REC).write_text((r / REC).read_text()[:40]), "unreadable"),
    "record not utf-8": (lambda r: (r / REC).write_bytes(b"\xff\xfe{"), "unreadable"),
    "record not an object": (lambda r: (r / REC).write_text("[]"), "not a vvtrt export record"),
    "record of another graph": (lambda r: shutil.copy(r / "onnx/token_embed.fp32.json", r / REC), "describes"),
    "record sha edited": (lambda r: _rewrite_json(r / REC, files={"connectors.fp32.onnx": {
        "bytes": (r / ONNX).stat().st_size, "sha256": "0" * 64}}), "sha256"),
    "record spec edited": (lambda r: _rewrite_json(r / REC, spec={"name": "connectors"}), "other settings"),
    "record is a directory": (lambda r: _replace_with_dir(r / REC), "directory"),
    "workdir.json missing": (lambda r: (r / "workdir.json").unlink(), "workdir.json"),
    "workdir.json truncated": (lambda r: (r / "workdir.json").write_text((r / "workdir.json").read_text()[:50]),
                               "corrupt"),
    "workdir.json wrong types": (lambda r: _rewrite_json(r / "workdir.json", info={"hidden": "x"}), "corrupt"),
    "workdir.json steps edited": (lambda r: _rewrite_json(r / "workdir.json", options={
        **json.loads((r / "workdir.json").read_text())["options"], "steps": 5}), "other settings"),
    "workdir.json is a directory": (lambda r: _replace_with_dir(r / "workdir.json"), "directory"),
    "stray foo.json": (lambda r: (r / "onnx/foo.json").write_text("{}"), "foo.json is not a file vvtrt writes"),
    "stray x.fp33.json": (lambda r: (r / "onnx/x.fp33.json").write_text("{}"), "x.fp33.json"),
    "stray directory": (lambda r: (r / "onnx/junk").mkdir(), "junk is a directory"),
    "onnx is a file": (lambda r: (shutil.rmtree(r / "onnx"), (r / "onnx").write_text("x")),
                       "onnx is a file where a directory belongs"),
}


def _verbs(root: Path, tmp: Path) -> dict[str, list]:
    return {
        "synth onnxruntime": ["synth", "-w", root, "--backend", "onnxruntime", "--device", "cpu", "--dtype",
                              "fp32", "--text", "hi", "--frames", "2", "-o", tmp / "o.wav"],
        "synth torch": ["synth", "-w", root, "--device", "cpu", "--text", "hi", "--frames", "2", "-o",
                        tmp / "t.wav"],
        "parity": ["parity", "-w", root, "--dtype", "fp32", "--no-e2e"],
        "build": ["build", "-w", root],
        "bench": ["bench", "-w", root, "--backend", "onnxruntime", "--device", "cpu", "--frames", "2",
                  "--repeats", "1", "--prompt-tokens", "8", "--out", tmp / "bench"],
    }


# Same-size changes show only in the sha256, which is checked for the graphs a verb reads: a verb that reads
# none (the torch backend) is not concerned by them. Every other damage stops every verb at the gate.
SHA_ONLY = {"graph tampered, same size", "data tampered, same size", "record sha edited"}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_verb_refuses_a_damaged_workdir_in_one_line(wd, tmp_path, damage):
    harm, needle = DAMAGE[damage]
    harm(wd)
    for verb, args in _verbs(wd, tmp_path).items():
        if damage in SHA_ONLY and verb == "synth torch":
            continue
        line = one_clear_line(run(*args))
        assert needle in line, (verb, line)
        assert "vvtrt export" in line or "remove it" in line, (verb, line)
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "t.wav").exists()


def test_the_intact_copy_passes_the_same_gate(wd, tmp_path):
    """The control of the test above: the undamaged copy is accepted (so the refusals are the damage's)."""
    assert len(Workdir.open(wd).verify()) == 6
    res = run(*_verbs(wd, tmp_path)["synth torch"])
    assert res.exit_code == 0, res.output


def _assert_all_current(root: Path, n: int = 6):
    wd = Workdir.open(root)
    assert len(wd.verify()) == n
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["graph tampered, same size", "data truncated", "record missing",
                                    "record not utf-8", "record spec edited", "workdir.json truncated"])
def test_export_reexports_what_is_not_current(wd, damage):
    DAMAGE[damage][0](wd)
    res = run("export", "--model", "tiny", "-w", wd, "--steps", "2", "--dtype", "fp32", "--components",
              "connectors")
    assert res.exit_code == 0, res.output
    _assert_all_current(wd)


@pytest.mark.parametrize("damage", ["data missing", "graph missing"])
def test_export_reexports_damage_outside_the_requested_subset(wd, damage):
    """token_embed.fp32 / connectors.fp32 are damaged, the export asks for fp16 only: still repaired."""
    DAMAGE[damage][0](wd)
    res = run("export", "--model", "tiny", "-w", wd, "--steps", "2", "--dtype", "fp16", "--components",
              "token_embed")
    assert res.exit_code == 0 and "exported 1 graph(s)" in res.output, res.output
    _assert_all_current(wd)


@pytest.mark.parametrize("damage", ["stray foo.json", "stray x.fp33.json"])
def test_export_refuses_stray_files_unless_forced(wd, damage):
    DAMAGE[damage][0](wd)
    args = ["export", "--model", "tiny", "-w", wd, "--steps", "2", "--dtype", "fp32", "--components", "connectors"]
    assert "--force" in one_clear_line(run(*args))
    res = run(*args, "--force")
    assert res.exit_code == 0, res.output
    _assert_all_current(wd)


@pytest.mark.parametrize("damage", ["graph is a directory", "stray directory", "workdir.json is a directory",
                                    "onnx is a file"])
def test_export_refuses_a_directory_or_file_in_the_wrong_place(wd, damage):
    DAMAGE[damage][0](wd)
    line = one_clear_line(run("export", "--model", "tiny", "-w", wd, "--steps", "2", "--components", "connectors"))
    assert "directory" in line and "remove it" in line


def test_export_refuses_a_non_empty_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    line = one_clear_line(run("export", "--model", "tiny", "-w", tmp_path, "--components", "connectors"))
    assert "not empty and not a vvtrt work directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# -- consistency of options across partial re-exports --------------------------------------------------------
def test_new_steps_for_one_component_reexport_every_graph_that_depends_on_them(wd):
    """--steps 3 for diffusion_sampler fp32 alone: the fp16 sampler (still K=2) is re-exported too, the
    steps-independent graphs are kept, and no two current graphs disagree on K."""
    before = {p.name: p.stat().st_mtime_ns for p in (wd / "onnx").glob("*.onnx")}
    res = run("export", "--model", "tiny", "-w", wd, "--steps", "3", "--dtype", "fp32", "--components",
              "diffusion_sampler")
    assert res.exit_code == 0 and "exported 2 graph(s)" in res.output, res.output
    w = Workdir.open(wd)
    assert w.options().steps == 3
    for p in (FP32, FP16):
        assert "3-step" in w.export_record("diffusion_sampler", p)["spec"]["description"]
    after = {p.name: p.stat().st_mtime_ns for p in (wd / "onnx").glob("*.onnx")}
    changed = sorted(n for n in after if after[n] != before[n])
    assert changed == ["diffusion_sampler.fp16.onnx", "diffusion_sampler.fp32.onnx"]
    _assert_all_current(wd)


def test_another_seed_for_a_subset_reexports_everything_it_invalidates(wd):
    res = run("export", "--model", "tiny", "-w", wd, "--steps", "2", "--seed", "7", "--dtype", "fp32",
              "--components", "connectors")
    assert res.exit_code == 0 and "exported 6 graph(s)" in res.output, res.output
    w = Workdir.open(wd)
    assert all(w.export_record(c, p)["model"]["seed"] == 7 for c, p in w.exported())
    _assert_all_current(wd)


# -- a process killed mid-export, and two processes at once --------------------------------------------------
def _wait_for(cond, timeout=300.0, proc=None):
    t0 = time.monotonic()
    while not cond():
        assert proc is None or proc.poll() is None, proc.communicate() if proc else None
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_export_killed_while_tracing_keeps_the_previous_export(wd):
    """kill -9 a forced re-export while the graph is traced into its temporary folder: the previous export
    of that graph stays whole and current, the temporary is ignored, and a re-run sweeps it and completes.
    (A kill during the moves that follow leaves files no record matches: the "record missing" and
    "data tampered" classes above, refused by every verb and re-exported by export.)"""
    args = ["export", "--model", "tiny", "-w", wd, "--steps", "2", "--dtype", "fp32", "--components",
            "connectors", "--force"]
    proc = spawn(*args)
    try:
        _wait_for(lambda: any(p.name.startswith(".connectors.fp32.onnx.") for p in (wd / "onnx").iterdir()),
                  proc=proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in (wd / "onnx").iterdir() if p.name.endswith(".tmp")]  # the killed one's folder
    assert len(Workdir.open(wd).verify()) == 6
    res = run(*args)
    assert res.exit_code == 0 and "exported 1 graph(s), 5 up to date" in res.output, res.output
    _assert_all_current(wd)


def test_export_killed_at_random_points_never_leaves_a_false_current_graph(wd):
    """Kill -9 after growing delays; after each kill every graph the work dir calls current matches its
    record byte for byte, and the final re-run completes."""
    args = ["export", "--model", "tiny", "-w", wd, "--steps", "2", "--dtype", "fp32,fp16", "--components",
            "connectors,token_embed", "--force"]
    for delay in (2.0, 6.0):
        proc = spawn(*args)
        try:
            _wait_for(lambda: lock_holder(wd) is not None, proc=proc)
            time.sleep(delay)
        finally:
            proc.kill()
            proc.communicate()
        for e in Workdir(wd).scan().entries.values():
            if e.problem is None:  # taken as current: every byte matches the record
                assert files_changed(wd / "onnx", e.record) is None, e.name
    res = run(*args[:-1])
    assert res.exit_code == 0, res.output
    _assert_all_current(wd)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(Path(os.readlink(fd)) == path for fd in fds.iterdir())
    except OSError:
        return False


def test_two_processes_on_one_workdir(wd):
    """A real process holds the work-dir lock (as an export does): a build that will not wait refuses in one
    line naming the holder; an export that waits is blocked on the lock until the holder is killed -9 (the
    kernel drops the lock), then runs, and everything is current at the end."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom vvtrt.fsio import WorkdirLock\n"
                               "with WorkdirLock(sys.argv[1], 'export'):\n    print('locked', flush=True)\n"
                               "    time.sleep(600)\n", str(wd)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        impatient = spawn("build", "-w", wd, env={"VVTRT_LOCK_WAIT_S": "0"})
        out, err = impatient.communicate(timeout=300)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert impatient.returncode == 2 and len(lines) == 1, (out, err)
        assert f"is in use by pid {holder.pid} (export)" in lines[0], err
        patient = spawn("export", "--model", "tiny", "-w", wd, "--steps", "2", "--dtype", "fp32",
                        "--components", "connectors", "--force", env={"VVTRT_LOCK_WAIT_S": "600"})
        _wait_for(lambda: _has_open(patient.pid, (wd / ".vvtrt.lock").resolve()), proc=patient)
        time.sleep(1.0)
        assert patient.poll() is None  # waiting for the lock
    finally:
        holder.kill()
        holder.communicate()
    out2, err2 = patient.communicate(timeout=600)
    assert patient.returncode == 0 and "exported 1 graph(s), 5 up to date" in out2, (out2, err2)
    _assert_all_current(wd)


def test_two_real_exports_at_once_end_consistent(wd):
    """Two real exports of the same work dir started together: the second waits for the first; the end state
    is complete and current."""
    args = ["export", "--model", "tiny", "-w", wd, "--steps", "2", "--dtype", "fp32", "--components",
            "connectors,token_embed", "--force"]
    procs = [spawn(*args, env={"VVTRT_LOCK_WAIT_S": "600"}) for _ in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    _assert_all_current(wd)
