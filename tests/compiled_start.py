"""One start of a compiled serving engine in a fresh interpreter, as a restarted `vvtrt serve` is: it serves one
request into an .npy file and returns its start-up record. Outside the test's process, so that what earlier
tests left in the interpreter's torch settings cannot change inductor's cache keys between two starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

START = """
import json, sys
import numpy as np
import torch
from vvtrt.serving.api import SpeechRequest
from vvtrt.serving.engine import Engine
settings = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[2]).items()}
if int(sys.argv[4]):
    torch.set_num_threads(int(sys.argv[4]))  # as the other start had (inductor's CPU code keys on it)
eng = Engine.from_workdir(sys.argv[1], compile=True, **settings)
eng.start()
try:
    assert eng.stepper.loop.capture_error is None, eng.stepper.loop.capture_error
    req = SpeechRequest("Speaker 1: Hello there.", seed=1, cfg_scale=1.3, frames=6)
    np.save(sys.argv[3], np.concatenate([c.audio for c in eng.submit(req)]))
finally:
    eng.stop()
print(json.dumps(eng.startup))
"""


def start_compiled(root, settings: dict, audio_path, threads: int = 0, timeout: int = 600) -> dict:
    """`Engine.from_workdir(root, compile=True, **settings)` started in a new interpreter (with `threads` torch
    threads, if given), finding the work dir's compile cache by itself; its start-up record."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", START, str(root), json.dumps(settings), str(audio_path), str(threads)],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
