"""Running the real CLI in tests: in process through click's CliRunner, or as a separate `python -m vvtrt`."""
from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from vvtrt.cli import cli


def run(*args):
    """`vvtrt ARGS...` in this process; the result has exit_code and output (stdout and stderr)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_clear_line(result) -> str:
    """The single error line of a refused command: exit code 2, one non-empty line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: "), result.output
    return lines[0]


def spawn(*args, env=None, **kw) -> subprocess.Popen:
    """`python -m vvtrt ARGS...` as its own process (stdout and stderr piped, text mode)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "vvtrt", *[str(a) for a in args]], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def refused(*args, within: float = 5.0) -> str:
    """`vvtrt ARGS...` refused as `one_clear_line` says, within `within` seconds; the error line."""
    import time

    t0 = time.perf_counter()
    result = run(*args)
    took = time.perf_counter() - t0
    line = one_clear_line(result)
    assert took < within, f"refusal took {took:.1f} s: {line}"
    return line


def snapshot(root) -> dict:
    """Every file under `root` (relative path -> size, mtime and bytes), to assert a refusal changed nothing."""
    from pathlib import Path

    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}
