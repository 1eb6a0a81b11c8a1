"""Markdown of a parity report: verdict and counts, components, streaming, end to end, scripted decisions."""
from __future__ import annotations

from vvtrt.reports.schema import check_outcome, parity_counts
from vvtrt.reports.render_md import MIN_STREAM_FRAMES, fmt, _e, table, _worst, _group, _header, _config_block, _images


_OUTCOME = {"passed": "✅ pass", "failed": "❌ FAIL", "skipped": "⛔ not run", "informational": "ℹ info"}
_SECTIONS = (("components", "component checks (shape × output)"), ("streaming", "streaming frames"),
             ("e2e", "end-to-end runs"), ("total", "total"))


def _group_status(rows) -> str:
    """"k/n ✅ pass" over the gated checks that ran; FAIL if any failed; "(m not run)" if some did not run."""
    c = {k: 0 for k in _OUTCOME}
    for r in rows:
        c[check_outcome(r)] += 1
    ran = c["passed"] + c["failed"]
    if not ran:
        return _OUTCOME["skipped" if c["skipped"] else "informational"]
    text = f"{c['passed']}/{ran} {_OUTCOME['failed' if c['failed'] else 'passed']}"
    return text + (f" ({c['skipped']} not run)" if c["skipped"] else "")


def _parity_summary(report: dict) -> list[str]:
    """The verdict and the check counts (recorded, or computed from the rows of an older report)."""
    recorded = report.get("counts")
    counts = recorded or parity_counts(report)
    t = counts["total"]
    out = [f"**{'PASSED' if report['passed'] else 'FAILED'}** — {t['run'] + t['skipped']} checks: {t['passed']} "
           f"passed, {t['failed']} failed, {t['skipped']} not run, {t['informational']} informational (ran, not "
           f"gated by design); {len(report['failures'])} failure(s). A check that did not run fails the run.", ""]
    out += [table(["checks", "run", "passed", "failed", "not run", "informational"],
                  [[label] + [counts[key][k] for k in ("run", "passed", "failed", "skipped", "informational")]
                   for key, label in _SECTIONS]), ""]
    if recorded is None:
        out += ["_Counts not recorded: this report predates them, so they are computed here from its rows; "
                "when it was written, a check that did not run did not fail the run._", ""]
    return out


def _parity_components(rows) -> list[str]:
    out = ["## Components", "",
           "Worst value over every checked shape and output; rel_l2 is compared with the tolerance; "
           "— means missing or non-finite (NaN/inf), which counts as worst.", ""]
    body = []
    for (comp, prec, backend, method), grp in _group(rows, "component", "precision", "backend", "method").items():
        w = _worst(grp, "rel_l2")
        dims = ", ".join(f"{k}={v}" for k, v in w["dims"].items())
        body.append([comp, prec, backend, method, len(grp), _e(w["rel_l2"]), _e(max(
            (r["max_abs"] for r in grp if r["max_abs"] is not None), default=None)),
            fmt(_worst(grp, "cosine", highest=False)["cosine"], ".6f"), _e(w["tolerance"]),
            w.get("skipped") or (f"{w['output']} ({dims})" if dims else w["output"]), _group_status(grp)])
    return out + [table(["component", "precision", "backend", "method", "checks", "worst rel_l2", "worst max_abs",
                         "min cosine", "tolerance", "worst at", "status"], body) if body else "_no component rows_", ""]


def _parity_streaming(streaming) -> list[str]:
    if not streaming:
        return ["## Streaming", "", "_no streaming checks_", ""]
    body = []
    for (comp, prec, backend), grp in _group(streaming, "component", "precision", "backend").items():
        w = _worst(grp, "rel_l2")
        frames = len({r["frame"] for r in grp if r["passed"] is not None})
        note = next((f"not run: {r['skipped']}" for r in grp if r.get("skipped")), "")
        note = note or ("" if frames >= MIN_STREAM_FRAMES else f"⚠ only {frames} frames (< {MIN_STREAM_FRAMES})")
        body.append([comp, prec, backend, frames, w["frame"], w["output"], _e(w["rel_l2"]),
                     _e(_worst(grp, "max_abs")["max_abs"]), _group_status(grp), note])
    return ["## Streaming", "", table(["component", "precision", "backend", "frames", "worst frame", "output",
                                       "worst rel_l2", "worst max_abs", "status", "notes"], body), ""]


def _parity_e2e(e2e) -> list[str]:
    if not e2e:
        return ["## End to end", "", "_no end-to-end runs_", ""]
    body = []
    for run in e2e:
        fr = run["frames"]
        first, last = (fr[0], fr[-1]) if fr else ({}, {})
        w = _worst(fr, "latent_rel_l2") if fr else {}
        worst = f"#{w['frame']}: {_e(w['latent_rel_l2'])}" if fr else "—"
        chunk = run.get("worst_chunk_snr_db")
        chunk = fmt(chunk, ".1f") if "worst_chunk_snr_db" in run else "not recorded"
        body.append([run["name"], run["backend"], run["precision"], len(fr), _e(first.get("latent_rel_l2")),
                     _e(last.get("latent_rel_l2")), worst, _e(max((f["latent_max_abs"] for f in fr
                     if f["latent_max_abs"] is not None), default=None)),
                     fmt(run["latent_snr_db"], ".1f") if "latent_snr_db" in run else "not recorded",
                     fmt(run["snr_db"], ".1f"), chunk, _OUTCOME[check_outcome(run)], run["notes"]])
    return (["## End to end", "",
             "Latent rel_l2 against the reference run at the first, last and worst diffusion frame; SNR of the "
             "sampler's own latents over every frame, of the whole audio and of the worst 3200-sample chunk. "
             "Teacher-forced runs decode the reference latents: their audio SNR measures the decoder, their "
             "latent SNR the LLM and the diffusion head.", "",
             table(["run", "backend", "precision", "frames", "first", "last", "worst", "worst max_abs",
                    "latent SNR (dB)", "SNR (dB)", "worst chunk SNR (dB)", "status", "notes"], body), ""]
            + _parity_scripts(e2e))


def _parity_scripts(e2e) -> list[str]:
    """Scripted rows: the decisions of both runs per LLM step, next to each diffusion frame's errors."""
    runs = [r for r in e2e if r.get("script")]
    if not runs:
        return []
    out = ["### Scripted decisions", "",
           "Each LLM step's forced decision in vvtrt and in transformers `generate`; a diffusion step makes a "
           "frame (its latent rel_l2 and audio-chunk SNR against the reference). Both must follow the script "
           "exactly and stop at its eos.", ""]
    for run in runs:
        sc = run["script"]
        by_step = {f["step"]: f for f in run["frames"] if "step" in f}
        steps = max(len(sc["decisions"]), len(sc["ours"]), len(sc["reference"]))
        at = lambda seq, i: seq[i] if i < len(seq) else "—"  # noqa: E731
        body = [[i, at(sc["decisions"], i), at(sc["ours"], i), at(sc["reference"], i),
                 by_step[i]["frame"] if i in by_step else "", _e(by_step[i]["latent_rel_l2"]) if i in by_step else "",
                 fmt(by_step[i].get("audio_snr_db"), ".1f") if i in by_step else ""] for i in range(steps)]
        verdict = "✅ decisions match" if sc["matched"] else "❌ decisions or stop differ"
        out += [f"<details><summary>{run['name']} ({run['backend']}): {verdict}; stop vvtrt "
                f"{sc['stop_reason']!r}, reference {sc['reference_stop_reason']!r}</summary>", "",
                table(["step", "script", "vvtrt", "reference", "frame", "latent rel_l2", "chunk SNR (dB)"], body),
                "", "</details>", ""]
    return out


def render_parity(report: dict, images) -> str:
    rows = report["rows"]
    out = _header(report, "vvtrt parity report") + _parity_summary(report)
    out += _parity_components(rows) + _parity_streaming(report["streaming"]) + _parity_e2e(report["e2e"])
    if report.get("departures"):  # where vvtrt follows Microsoft's original, not transformers' port, and why
        out += ["## Departures from transformers' port", ""] + [f"- {d}" for d in report["departures"]] + [""]
    if report["failures"]:
        out += ["## Failures", ""] + [f"- {f}" for f in report["failures"]] + [""]
    out += _images(images)
    out += _config_block(report)
    if rows:
        detail = [[r["component"], r["precision"], r["backend"], r["method"], r["output"],
                   ", ".join(f"{k}={v}" for k, v in r["dims"].items()), _e(r["max_abs"]), _e(r["max_rel"]),
                   _e(r["rel_l2"]), fmt(r["cosine"], ".6f"), _e(r["tolerance"]), _OUTCOME[check_outcome(r)]]
                  for r in rows]
        out += ["<details><summary>All component checks</summary>", "",
                table(["component", "precision", "backend", "method", "output", "dims", "max_abs", "max_rel",
                       "rel_l2", "cosine", "tolerance", "status"], detail), "", "</details>", ""]
    return "\n".join(out)
