"""The two JSON report formats (version 1), their validation and loading.

Common to every report::

    {"kind": "parity" | "bench", "version": 1, "created": "<ISO 8601, e.g. 2025-01-31T12:00:00+00:00>",
     "config": {"preset": str, "dtype": str | "dtypes": [str], "steps": int, "cfg_scale": number,
                "backends": [str], "environment": {... collect_environment() ...}, ...free-form...}}

Numbers are JSON numbers; ``null`` means "not available" or "not finite" (``write_report`` turns
NaN/inf into null so that the files stay strict JSON). Extra keys anywhere are allowed and ignored.

**parity** adds::

    "rows": [{"component", "precision", "backend", "method", "dims": {axis: int}, "output",
              "max_abs", "max_rel", "rel_l2", "cosine", "tolerance", "passed": bool | null}],
    "streaming": [{"component", "precision", "backend", "frame": int, "output",
                   "rel_l2", "max_abs", "passed": bool | null}],     # >= 16 frames per stateful component
    "e2e": [{"name", "backend", "precision", "frames": [{"frame": int, "latent_rel_l2", "latent_max_abs",
                        "step" (optional: the LLM step that made this diffusion frame),
                        "audio_rel_l2", "audio_snr_db" (optional: this frame's audio chunk vs the reference's),
                        "reference_sensitivity" (optional: the perturbed twin of the reference vs the reference)}],
             "snr_db", "passed": bool | null, "gated": bool (optional; false: informational),
             "worst_chunk_snr_db" (optional), "latent_snr_db" (optional: the sampler's own latents vs the
             reference's over every diffusion frame; in a teacher-forced run the decoder gets the reference
             latents, so "snr_db" measures the decoder and this the LLM and diffusion head),
             "growth_ratio" (optional: a chaotic free-running row's growth relative to the twin),
             "script" (optional, scripted rows: {"decisions": [str], "ours": [str], "reference": [str],
             "stop_reason", "reference_stop_reason", "matched": bool}), "notes": str}],
    "passed": bool, "failures": [str],
    "counts": {"components" | "streaming" | "e2e" | "total":
               {"run", "passed", "failed", "skipped", "informational": int}}   # optional (older reports lack it)

``method`` says how the row was checked ("onnxruntime-cpu", "onnxruntime-cuda",
"onnx-reference-evaluator", "torch-bf16-cpu", "tensorrt", ...); ``tolerance`` is the rel_l2 bound.
A row/frame/run that could not be checked has ``"passed": null`` and, since version-1 reports with
``counts``, a ``"skipped": reason``; it is a *skipped* check, and a skipped check fails the run (it is
also in ``failures``). An e2e row with ``"gated": false`` ran but is informational by design (never
counted as passed, never a failure). ``counts`` (see :func:`parity_counts`) must agree with the rows, and a
report with counts that says ``"passed": true`` has no failed or skipped check. Reports written before
counts existed are still read; their skipped rows did not fail the run then.

**bench** adds::

    "results":   [RESULT, ...]   # one per measured backend
    "baselines": [RESULT, ...]   # labels like "pytorch-eager", "transformers-generate"
    "failed":    [{"label", "error", "error_type"?, "pid"?}]   # optional: variants that failed (the
                                                               # others are still reported)
    "telemetry": {"interval_s": number, "samples": [{"t", "gpu_util", "mem_used_bytes", "temp_c",
                                                     "sm_clock_mhz", "power_w"}]} | null   # whole device
    "jobs":      [{"label", "kind", "pid", "t_start_s", "t_end_s", "ok"}]   # optional: one process each,
                                                                          # times on the telemetry clock
    "floor":     {"weight_bytes_per_frame", "bandwidth_gbps", "floor_ms"} | null
    "targets":   [{"name", "target", "value", "unit", "met": bool, "op"?: "<=" | ">="}]   # optional

    RESULT = {"backend", "precision", "label", "pid"?: int,    # pid: the process that measured it
              "components": {name: {"calls_per_frame", "p50_ms", "p90_ms", "p99_ms", "mean_ms"}},
              "frame_ms": [number per frame], "frame": {"p50", "p90", "p99", "mean"}, "rtf",
              "ttfa_e2e"?: TTFA, "ttfa_prefill"?: TTFA, "ttfa_synthetic"?: TTFA | null,
              "ttfa_ms"?: [number], "ttfa"?: {"p50", "p90", "p99"},     # reports before the split, see below
              "memory": {"peak_allocated_bytes", "peak_reserved_bytes", "nvml_peak_used_bytes",
                         "graph_pool_bytes", "nvml_process_peak_bytes"?, "nvml_device_baseline_bytes"?,
                         "nvml_process_status"?: str, "host_peak_rss_bytes"?,
                         "after_load_peak_allocated_bytes"?, "nvml_process_after_load_peak_bytes"?},
              "setup": {"load_s", "build_s", "capture_s", "cold_request_s"?},
              "floor_gap": frame p50 / floor_ms | null, "notes": str,
              "streams"?: int, "throughput_x_realtime"?: number}   # optional: concurrent streams per step
    TTFA = {"cold_ms": number | null, "warm_ms": [number], "warm": {"p50", "p90", "p99", ...},
            "prompt_tokens"?: int, ...}

Time to first audio (ms, until the first 3200-sample chunk is on the host):

* ``ttfa_e2e``: end to end, script text and voice wavs in (tokenize, read and encode the voices, build
  the prompt, prefill, first frame); ``cold_ms`` is the first request after load (graph capture and
  compilation included), ``warm`` the requests after it;
* ``ttfa_prefill``: warm, from the prefill of the same prompt (its embeddings ready) to the first chunk;
* ``ttfa_synthetic``: warm prefill-to-first-chunk of a synthetic prompt of ``prompt_tokens`` random text
  tokens (``config.prompt_tokens``), or null;
* ``ttfa`` / ``ttfa_ms`` (older reports only): warm prefill-to-first-chunk of the synthetic prompt.

Memory: ``peak_allocated_bytes`` / ``peak_reserved_bytes`` are torch's allocator (ORT and TensorRT
allocate outside it); ``nvml_process_peak_bytes`` is NVML's figure for the measuring process's own pid
(null, with ``nvml_process_status`` saying why, where NVML does not list it); ``nvml_peak_used_bytes``
is the whole device's used memory (older reports: over the whole multi-variant process; NVML's v1
``used``, which counts driver-reserved memory), and ``nvml_device_baseline_bytes`` that figure before
the process touched CUDA; ``host_peak_rss_bytes`` the process's peak resident host memory. Those peaks cover
the process's whole life, its load included; ``after_load_peak_allocated_bytes`` and
``nvml_process_after_load_peak_bytes`` are the same two process figures from the end of the load on (what it
holds while it serves: a quantized work dir's load holds the float weights next to the 8-bit ones until its
runners are built). A key missing from an older report means "not measured".

``components`` may be ``{}`` (a baseline that cannot be broken down); every metric may be null.
The renderer computes speed-ups as baseline frame p50 / result frame p50.
"""
from __future__ import annotations

import datetime as _dt
import enum
import json
import numbers
from pathlib import Path
from typing import Any

from vvtrt.errors import InputError

VERSION = 1
KINDS = ("parity", "bench")

# Leaf type tags ("?" = or null): "str", "int", "num", "num?", "bool", "bool?", "dict", "strlist", "numlist".
NUM_DICT = "numdict"  # dict of str -> int (parity dims)
# ("optional", spec): a key that older reports lack; when present it must match spec.

PARITY_ROW = {"component": "str", "precision": "str", "backend": "str", "method": "str", "dims": NUM_DICT,
              "output": "str", "max_abs": "num?", "max_rel": "num?", "rel_l2": "num?", "cosine": "num?",
              "tolerance": "num?", "passed": "bool?"}
STREAMING_ROW = {"component": "str", "precision": "str", "backend": "str", "frame": "int", "output": "str",
                 "rel_l2": "num?", "max_abs": "num?", "passed": "bool?"}
E2E_FRAME = {"frame": "int", "latent_rel_l2": "num?", "latent_max_abs": "num?", "step": ("optional", "int"),
             "audio_rel_l2": ("optional", "num?"), "audio_snr_db": ("optional", "num?")}
E2E_SCRIPT = {"decisions": "strlist", "ours": "strlist", "reference": "strlist", "stop_reason": "str",
              "reference_stop_reason": "str", "matched": "bool"}
E2E_ROW = {"name": "str", "backend": "str", "precision": "str", "frames": [E2E_FRAME], "snr_db": "num?",
           "passed": "bool?", "notes": "str", "gated": ("optional", "bool"),
           "worst_chunk_snr_db": ("optional", "num?"), "latent_snr_db": ("optional", "num?"),
           "script": ("optional", E2E_SCRIPT)}
COMPONENT_STATS = {"calls_per_frame": "num", "p50_ms": "num?", "p90_ms": "num?", "p99_ms": "num?",
                   "mean_ms": "num?"}
PCTS = {"p50": "num?", "p90": "num?", "p99": "num?"}
TTFA_BLOCK = {"cold_ms": "num?", "warm_ms": "numlist", "warm": PCTS}
BENCH_RESULT = {
    "backend": "str", "precision": "str", "label": "str", "pid": ("optional", "int"),
    "components": ("mapping", COMPONENT_STATS),
    "frame_ms": "numlist", "frame": {"p50": "num?", "p90": "num?", "p99": "num?", "mean": "num?"},
    "rtf": "num?", "ttfa_e2e": ("optional", TTFA_BLOCK), "ttfa_prefill": ("optional", TTFA_BLOCK),
    "ttfa_synthetic": ("optional", ("nullable", TTFA_BLOCK)),
    "ttfa_ms": ("optional", "numlist"), "ttfa": ("optional", PCTS),
    "memory": {"peak_allocated_bytes": "num?", "peak_reserved_bytes": "num?", "nvml_peak_used_bytes": "num?",
               "graph_pool_bytes": "num?", "nvml_process_peak_bytes": ("optional", "num?"),
               "nvml_device_baseline_bytes": ("optional", "num?"), "nvml_process_status": ("optional", "str"),
               "host_peak_rss_bytes": ("optional", "num?"),
               "after_load_peak_allocated_bytes": ("optional", "num?"),
               "nvml_process_after_load_peak_bytes": ("optional", "num?")},
    "setup": {"load_s": "num?", "build_s": "num?", "capture_s": "num?"},
    "floor_gap": "num?", "notes": "str",
}
BENCH_FAILED = {"label": "str", "error": "str"}
BENCH_JOB = {"label": "str", "kind": "str", "t_start_s": "num", "t_end_s": "num", "ok": "bool"}
TELEMETRY_SAMPLE = {"t": "num", "gpu_util": "num?", "mem_used_bytes": "num?", "temp_c": "num?",
                    "sm_clock_mhz": "num?", "power_w": "num?"}
TELEMETRY = {"interval_s": "num", "samples": [TELEMETRY_SAMPLE]}
FLOOR = {"weight_bytes_per_frame": "num?", "bandwidth_gbps": "num?", "floor_ms": "num?"}
TARGET = {"name": "str", "target": "num?", "value": "num?", "unit": "str", "met": "bool"}
CONFIG = {"preset": "str", "steps": "int", "cfg_scale": "num", "backends": "strlist", "environment": "dict"}

COUNT_KEYS = ("run", "passed", "failed", "skipped", "informational")
PARITY_SECTIONS = (("components", "rows"), ("streaming", "streaming"), ("e2e", "e2e"))
COUNTS = {name: {k: "int" for k in COUNT_KEYS} for name in [s for s, _ in PARITY_SECTIONS] + ["total"]}
PARITY = {"rows": [PARITY_ROW], "streaming": [STREAMING_ROW], "e2e": [E2E_ROW], "passed": "bool",
          "failures": "strlist", "counts": ("optional", COUNTS)}
BENCH = {"results": [BENCH_RESULT], "baselines": [BENCH_RESULT], "telemetry": ("nullable", TELEMETRY),
         "floor": ("nullable", FLOOR), "failed": ("optional", [BENCH_FAILED]), "jobs": ("optional", [BENCH_JOB])}


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v).__name__ != "bool_"


_LEAF = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "num": (_is_num, "a number"),
    "num?": (lambda v: v is None or _is_num(v), "a number or null"),
    "bool": (lambda v: isinstance(v, bool) or type(v).__name__ == "bool_", "true or false"),
    "bool?": (lambda v: v is None or isinstance(v, bool) or type(v).__name__ == "bool_", "true, false or null"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "strlist": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                "a list of strings"),
    "numlist": (lambda v: isinstance(v, (list, tuple)) and all(x is None or _is_num(x) for x in v),
                "a list of numbers"),
    NUM_DICT: (lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()),
               "an object of integer sizes"),
}


def _check(value, spec, where: str) -> None:
    """Raise InputError naming the first key (as a dotted path) that is missing or of the wrong type."""
    if isinstance(spec, str):
        ok, what = _LEAF[spec]
        if not ok(value):
            raise InputError(f"report key {where!r} must be {what}, got {_short(value)}")
    elif isinstance(spec, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"report key {where!r} must be a list, got {_short(value)}")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]")
    elif isinstance(spec, tuple) and spec[0] == "nullable":
        if value is not None:
            _check(value, spec[1], where)
    elif isinstance(spec, tuple) and spec[0] == "optional":  # present (absent is handled by its dict)
        _check(value, spec[1], where)
    elif isinstance(spec, tuple) and spec[0] == "mapping":
        if not isinstance(value, dict):
            raise InputError(f"report key {where!r} must be an object, got {_short(value)}")
        for k, item in value.items():
            _check(item, spec[1], f"{where}.{k}")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise InputError(f"report key {where!r} must be an object, got {_short(value)}")
        for key, sub in spec.items():
            path = f"{where}.{key}" if where else key
            if key not in value:
                if isinstance(sub, tuple) and sub[0] == "optional":
                    continue
                raise InputError(f"report is missing key {path!r}")
            _check(value[key], sub, path)
    else:  # pragma: no cover - programming error in the spec tables above
        raise TypeError(f"bad schema spec {spec!r}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(report: Any) -> None:
    """Check `report` against its kind's format; raise :class:`InputError` naming the first bad key."""
    if not isinstance(report, dict):
        raise InputError(f"a report must be a JSON object, got {type(report).__name__}")
    _check(report, {"kind": "str", "version": "int", "created": "str", "config": "dict"}, "")
    if report["kind"] not in KINDS:
        raise InputError(f"report key 'kind' must be one of {', '.join(KINDS)}, got {report['kind']!r}")
    if report["version"] != VERSION:
        raise InputError(f"report key 'version' is {report['version']}; this vvtrt reads version {VERSION}")
    try:
        _dt.datetime.fromisoformat(report["created"])
    except ValueError:
        raise InputError(f"report key 'created' must be an ISO 8601 time, got {report['created']!r}") from None
    config = report["config"]
    _check(config, CONFIG, "config")
    if "dtype" in config:
        _check(config["dtype"], "str", "config.dtype")
    elif "dtypes" in config:
        _check(config["dtypes"], "strlist", "config.dtypes")
    else:
        raise InputError("report is missing key 'config.dtype' (or 'config.dtypes')")
    _check(report, PARITY if report["kind"] == "parity" else BENCH, "")
    if report["kind"] == "parity":
        _check_parity_counts(report)
    if report["kind"] == "bench" and report.get("targets") is not None:
        _check(report["targets"], [TARGET], "targets")
        for i, t in enumerate(report["targets"]):
            if t.get("op") not in (None, "<=", ">="):
                raise InputError(f"report key 'targets[{i}].op' must be '<=' or '>=', got {t['op']!r}")


def check_outcome(row: dict) -> str:
    """One parity check's outcome: "passed", "failed", "informational" (ran; not gated by design) or
    "skipped" (asked for, did not run -- a failure of the run)."""
    passed = row.get("passed")
    if passed is not None:
        return "passed" if passed else "failed"
    return "informational" if row.get("gated") is False else "skipped"


def parity_counts(report: dict) -> dict:
    """Checks per section (components = rows, streaming frames, e2e runs) and in total: run (= passed +
    failed + informational), passed, failed, skipped, informational."""
    counts = {}
    for section, key in PARITY_SECTIONS:
        c = dict.fromkeys(COUNT_KEYS, 0)
        for row in report[key]:
            c[check_outcome(row)] += 1
        c["run"] = c["passed"] + c["failed"] + c["informational"]
        counts[section] = c
    counts["total"] = {k: sum(counts[s][k] for s, _ in PARITY_SECTIONS) for k in COUNT_KEYS}
    return counts


def _check_parity_counts(report: dict) -> None:
    """Recorded counts agree with the rows, and a passed report has no failed or skipped check."""
    if "counts" not in report:
        return  # written before counts were recorded
    want = parity_counts(report)
    for section, c in want.items():
        got = {k: report["counts"][section][k] for k in COUNT_KEYS}
        if got != c:
            raise InputError(f"report key 'counts.{section}' is {got} but its rows give {c}")
    total = want["total"]
    if report["passed"] and (total["failed"] or total["skipped"]):
        raise InputError(f"report says passed but {total['failed']} check(s) failed and {total['skipped']} "
                         "did not run")


def now_iso() -> str:
    """The current time as an ISO 8601 string with the UTC offset (for ``created``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def new_report(kind: str, config: dict, **sections) -> dict:
    """A report skeleton: kind, version, created (now) and config, plus the given sections."""
    if kind not in KINDS:
        raise InputError(f"unknown report kind {kind!r}: choose one of {', '.join(KINDS)}")
    return {"kind": kind, "version": VERSION, "created": now_iso(), "config": dict(config), **sections}


def to_jsonable(obj):
    """A copy of `obj` that ``json.dumps(allow_nan=False)`` accepts: numpy scalars/arrays become Python
    numbers/lists, tuples become lists, paths and enums become strings, NaN/inf become None."""
    if isinstance(obj, enum.Enum):  # e.g. Precision.FP16 -> "fp16"
        return to_jsonable(obj.value)
    if isinstance(obj, dict):
        return {str(k.value if isinstance(k, enum.Enum) else k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalar or array, torch tensor
        return to_jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if f == f and f not in (float("inf"), float("-inf")) else None
    return str(obj)  # Path, dtype objects, ...


def load_report(path) -> dict:
    """Read and validate a report JSON file; every problem is an :class:`InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"report file {path} does not exist" if not path.exists()
                         else f"report path {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read report file {path}: {e}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"report file {path} is not valid JSON: {e.msg} at line {e.lineno} "
                         f"column {e.colno}") from None
    try:
        validate(report)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    return report
