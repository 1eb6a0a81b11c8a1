"""The load test's summary (JSON-ready dict) and its Markdown."""
from __future__ import annotations

import collections
import platform
import time
from dataclasses import asdict

import numpy as np

FRAME_S = 3200 / 24000


def _pct(values, q) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def _ms(v):
    return None if v is None else round(v * 1000, 2)


def spec_dict(spec) -> dict:
    """A `LoadSpec` as JSON, the API key masked."""
    d = asdict(spec)
    d["api_key"] = "***" if spec.api_key else None
    return d


def summarize(spec, results: list, wall_s: float) -> dict:
    ok = [r for r in results if r.ok]
    ttfa = [r.ttfa_s for r in ok if r.ttfa_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    rtfs = [r.rtf for r in ok if r.rtf is not None]
    errors = collections.Counter(r.error for r in results if not r.ok)
    # a fleet's front answers refusals itself ("front"): the spread is over the replicas that ran requests
    replicas = collections.Counter(r.replica for r in results if r.replica and r.replica != "front")
    audio_s = sum(r.audio_s for r in ok)
    return {
        "spec": spec_dict(spec), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        "wall_s": round(wall_s, 3), "requests": len(results), "ok": len(ok), "errors": dict(errors),
        "ttfa_ms": {"p50": _ms(_pct(ttfa, 50)), "p90": _ms(_pct(ttfa, 90)), "p99": _ms(_pct(ttfa, 99))},
        "inter_chunk_ms": {"p50": _ms(_pct(gaps, 50)), "p90": _ms(_pct(gaps, 90)), "p99": _ms(_pct(gaps, 99)),
                           "max": _ms(max(gaps) if gaps else None)},
        "rtf": {"p50": _pct(rtfs, 50), "p90": _pct(rtfs, 90), "max": max(rtfs) if rtfs else None,
                "per_stream": [round(x, 4) for x in rtfs]},
        "frames": sum(r.frames for r in ok), "audio_s": round(audio_s, 3),
        "audio_s_per_wall_s": round(audio_s / wall_s, 3) if wall_s > 0 else None,
        "streams_in_real_time": sum(1 for x in rtfs if x < 1.0),
        "holds_real_time": bool(ok) and not errors and all(x < 1.0 for x in rtfs),
        "frame_s": FRAME_S,
        "requests_per_replica": dict(sorted(replicas.items())),
        # of the client's machine and checkout (the server's when both run on one machine, as in the device runs)
        "environment": _environment(),
    }


def _environment() -> dict:
    from vvtrt.reports.environment import collect_environment

    return collect_environment()


def _fmt(v, unit="") -> str:
    if v is None:
        return "not measured"
    return f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def render_markdown(rep: dict) -> str:
    s = rep["spec"]
    mode = "WebSocket" if s["ws"] else "HTTP streaming"
    lines = [
        f"# vvtrt load test: {s['concurrency']} concurrent {mode} clients for {s['duration_s']:g} s",
        "", f"- server: {s['url']}; text: {len(s['text'])} chars; frames: {s['frames'] or 'model decides'}"
        f"; max_frames: {s['max_frames'] or 'none'}; host: {rep['host']}; at {rep['when']}",
        f"- client commit {rep.get('environment', {}).get('git_commit') or 'not recorded'}; client GPU "
        f"{rep.get('environment', {}).get('gpu_name') or 'none'}",
        f"- requests: {rep['requests']} ({rep['ok']} ok); audio: {rep['audio_s']} s in {rep['wall_s']} s "
        f"({rep['audio_s_per_wall_s']} s of audio per second)",
        f"- holds real time (every stream RTF < 1, no errors): **{'yes' if rep['holds_real_time'] else 'no'}** "
        f"({rep['streams_in_real_time']}/{rep['ok']} streams under RTF 1)", "",
        "| metric | p50 | p90 | p99 / max |", "|---|---|---|---|",
        f"| TTFA (ms) | {_fmt(rep['ttfa_ms']['p50'])} | {_fmt(rep['ttfa_ms']['p90'])} | "
        f"{_fmt(rep['ttfa_ms']['p99'])} |",
        f"| inter-chunk (ms; a frame is {rep['frame_s'] * 1000:.1f} ms of audio) | "
        f"{_fmt(rep['inter_chunk_ms']['p50'])} | {_fmt(rep['inter_chunk_ms']['p90'])} | "
        f"{_fmt(rep['inter_chunk_ms']['p99'])} / {_fmt(rep['inter_chunk_ms']['max'])} |",
        f"| per-stream RTF | {_fmt(rep['rtf']['p50'])} | {_fmt(rep['rtf']['p90'])} | {_fmt(rep['rtf']['max'])} |",
        "", "Errors by kind: " + (", ".join(f"{k}: {v}" for k, v in sorted(rep["errors"].items())) or "none"),
    ]
    c = rep.get("client")
    if c:
        lines += ["", f"Client: {c['processes']} process(es) ({'/'.join(map(str, c['streams_per_process']))} "
                      f"streams); CPU {_fmt(c['cpu_s_per_wall_s'])} s per wall second in all, busiest process "
                      f"{_fmt(c['busiest_process_cpu_s_per_wall_s'])} (near 1.0: that process limited the test)"]
    spread = rep.get("requests_per_replica")
    if spread:
        lines.append("Requests per replica: " + ", ".join(f"{k}: {v}" for k, v in spread.items()))
    return "\n".join(lines) + "\n"
