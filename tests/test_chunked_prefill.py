"""The prompt prefill in chunks through lm_decode (`vvtrt.runtime.prefill`) against the whole prompt at once
(`LMPrefill`, transformers' Qwen2 with a DynamicCache), on torch and on the exported ONNX graph, and a run of
the synthesizer whose prompt spans several chunks and a larger KV bucket, chunked vs unchunked (tiny, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from vvtrt.components.lm import LMPrefill
from vvtrt.components.specs import ExportOptions, build_specs
from vvtrt.errors import InputError
from vvtrt.parity.compare import error_stats
from vvtrt.precision import Precision
from vvtrt.runtime.prefill import Prefill, make_prefill
from vvtrt.runtime.runner import TorchRunner

T = 300  # 3 chunks of the tiny export's 128, the last one short


@pytest.fixture(scope="module")
def prompt(tiny_model, tiny_info):
    """A 300-token prompt body and its K/V from the unchunked reference and from transformers."""
    e = torch.randn(1, T, tiny_info.hidden, generator=torch.Generator().manual_seed(3)) * 0.5
    with torch.no_grad():
        _, _, k, v = LMPrefill(tiny_model, tiny_info)(e)
        cache = DynamicCache(config=tiny_model.config.text_config)
        tiny_model.model.language_model(inputs_embeds=e, past_key_values=cache, use_cache=True)
    hf_k = torch.stack([layer.keys for layer in cache.layers])  # [L, 1, Hkv, T, D]
    hf_v = torch.stack([layer.values for layer in cache.layers])
    return e, k, v, hf_k, hf_v


def _torch_decode_runner(model, info, opts=None):
    spec = build_specs(info, opts or ExportOptions.for_preset("tiny"))["lm_decode"]
    return TorchRunner(spec, Precision.FP32, "cpu", model)


@pytest.mark.parametrize("chunk", [8, 64, 100, 128, 512])
def test_chunked_prefill_matches_the_whole_prompt(tiny_model, tiny_info, prompt, chunk):
    e, k, v, hf_k, hf_v = prompt
    prefill = Prefill(_torch_decode_runner(tiny_model, tiny_info), 512, graphs=False, chunk=chunk)
    got_k, got_v = prefill(e)
    assert got_k.shape == k.shape == (tiny_info.layers, 1, tiny_info.kv_heads, T, tiny_info.head_dim)
    for got, ref in ((got_k, k), (got_v, v), (got_k, hf_k), (got_v, hf_v)):
        assert error_stats(got, ref).rel_l2 < 1e-6


def test_prompts_prefilled_packed_equal_each_prompt_alone(tiny_model, tiny_info, prompt):
    """Several prompts' first chunks in one packed call (no padding; a prompt of one token among them) give
    each prompt's K/V of its own prefill, and the reference's, up to the GEMMs' rounding."""
    e, k, v, _, _ = prompt
    prefill = Prefill(_torch_decode_runner(tiny_model, tiny_info), 512, graphs=False, chunk=128)
    bodies = [e[:, :n] for n in (128, 1, 77, 128)]
    got = prefill.first_many(bodies)
    for body, (gk, gv) in zip(bodies, got):
        n = body.shape[1]
        alone_k, alone_v = prefill(body)
        assert gk.shape == alone_k.shape == (tiny_info.layers, 1, tiny_info.kv_heads, n, tiny_info.head_dim)
        for a, b in ((gk, alone_k), (gv, alone_v), (gk, k[:, :, :, :n]), (gv, v[:, :, :, :n])):
            assert error_stats(a, b).rel_l2 < 1e-6


def test_prefill_on_the_exported_graph_matches(tiny_workdir, tiny_model, tiny_info, prompt):
    """ONNX Runtime runs the very lm_decode graph the frames use, in the export's chunks of 128."""
    from vvtrt.runtime.backends import load_runners

    e, k, v, _, _ = prompt
    runners = load_runners(tiny_workdir, "onnxruntime", Precision.FP32, "cpu", components=("lm_decode",))
    opts = tiny_workdir.options()
    assert opts.prefill_chunk == 128 and T > 2 * opts.prefill_chunk
    prefill = make_prefill(runners, opts, graphs=False)
    assert prefill.runner is runners["lm_decode"] and prefill.chunk == 128
    got_k, got_v = prefill(e)
    assert error_stats(got_k, k).rel_l2 < 1e-5 and error_stats(got_v, v).rel_l2 < 1e-5
    with pytest.raises(InputError, match="--max-prompt"):
        prefill(torch.zeros(1, opts.max_prompt + 1, tiny_info.hidden))


def test_long_prompt_run_chunked_equals_unchunked_across_buckets(tiny_workdir):
    """Whole synthesis runs (torch, fp32): a short prompt (KV bucket 256) and a prompt of 3 chunks (bucket
    1024), each with the export's chunked prefill and with an unchunked one: the same latents and audio."""
    from vvtrt.runtime.kv_cache import pick_bucket
    from vvtrt.runtime.synthesizer import Synthesizer

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    chunked = synth.prefill
    whole = Prefill(synth.runners["lm_decode"], synth.options.max_prompt, graphs=False,
                    chunk=synth.options.max_prompt)
    short = "Speaker 1: Hello from the tiny model."
    long = "Speaker 1: and"
    while len(synth.prompt_embeds(long)[0]) < T:
        long += " more words"
    buckets = set()
    for script in (short, long):
        ids, _ = synth.prompt_embeds(script)
        buckets.add(pick_bucket(synth.options.kv_buckets, len(ids) + 6 + 1))
        runs = []
        for prefill in (chunked, whole):
            synth.prefill = prefill
            runs.append(synth.synthesize(script, frames=6, seed=2, keep_latents=True))
        a, b = runs
        assert a.frames == b.frames == 6
        for la, lb in zip(a.latents, b.latents):
            assert error_stats(torch.from_numpy(la), torch.from_numpy(lb)).rel_l2 < 1e-5
        assert np.abs(a.audio - b.audio).max() < 1e-4
    assert buckets == set(synth.options.kv_buckets)  # one run per bucket
    ids, _ = synth.prompt_embeds(long)
    assert len(ids) > 2 * synth.options.prefill_chunk  # the long prompt really spans 3 chunks


def test_longform_benchmark_plumbing_on_the_cpu(tiny_workdir, tmp_path):
    """benchmarks/longform.py end to end on tiny with tiny numbers: every phase, a JSON with the command,
    commit and device, and its Markdown (the figures themselves are for the GPU)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "longform.py"
    cmd = [sys.executable, str(script), str(tiny_workdir.root), str(tmp_path), "--device", "cpu", "--variant",
           "torch", "--phases", "contexts,ttfa,long", "--contexts", "40,300", "--frames", "3", "--ttfa-tokens",
           "200", "--repeats", "1", "--long-frames", "5", "--long-prompt", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    assert [r["prompt_tokens"] for r in rep["contexts"]["rows"]] == [40, 300]
    assert all(r["frames"] == 3 and r["frame"]["p50"] > 0 for r in rep["contexts"]["rows"])
    assert rep["ttfa"]["prompt_tokens"] == 200 and rep["ttfa"]["prefill_chunks"] == 2
    assert rep["long"]["frames"] == 5 and rep["long"]["rtf"] > 0
    assert rep["memory"]["peak_allocated_bytes"] is None  # no GPU: not measured, never faked
    assert "longform.py" in rep["command"] and "git_commit" in rep["environment"]
    assert (tmp_path / (Path(proc.stdout.strip().splitlines()[-1]).stem + ".md")).read_text().startswith("# Long-form")


def test_long_context_export_options():
    """Defaults follow the model's context; --max-prompt / --kv-buckets override them; bad values refused."""
    from vvtrt.components.specs import parse_kv_buckets

    o15 = ExportOptions.for_preset("1.5b", context=65536)
    assert o15.kv_buckets == (1024, 2048, 4096, 8192, 16384, 32768, 65536) and o15.max_prompt == 64512
    o7 = ExportOptions.for_preset("7b", context=32768)
    assert o7.kv_buckets[-1] == 32768 and o7.max_prompt == 31744
    assert ExportOptions.for_preset(None, context=40000).kv_buckets[-1] == 40000  # a checkpoint's own context
    tiny = ExportOptions.for_preset("tiny", context=4096)
    assert (tiny.kv_buckets, tiny.max_prompt, tiny.prefill_chunk) == ((256, 1024), 512, 128)
    mine = ExportOptions.for_preset("1.5b", context=65536, max_prompt=30000, kv_buckets=(4096, 32768))
    assert (mine.kv_buckets, mine.max_prompt) == ((4096, 32768), 30000)
    assert ExportOptions.for_preset("1.5b", context=65536, kv_buckets=(1024, 2048)).max_prompt == 2047
    assert ExportOptions.from_json(mine.to_json()) == mine
    assert parse_kv_buckets(" ") is None and parse_kv_buckets("1024, 8192") == (1024, 8192)
    for bad, word in ((lambda: parse_kv_buckets("1k"), "comma-separated"),
                      (lambda: parse_kv_buckets("2048,1024"), "ascending"),
                      (lambda: parse_kv_buckets(",".join(str(8 * 2**i) for i in range(13))), "at most 12"),
                      (lambda: ExportOptions.for_preset("7b", context=32768, kv_buckets=(1024, 65536)), "context"),
                      (lambda: ExportOptions.for_preset("7b", context=32768, max_prompt=32768), "--max-prompt")):
        with pytest.raises(InputError, match=word):
            bad()


@pytest.mark.parametrize("opts, word", [("--kv-buckets 1024,512", "ascending"), ("--kv-buckets x", "--kv-buckets"),
                                        ("--max-prompt 0", "--max-prompt"),
                                        ("--kv-buckets 256,1024 --max-prompt 4000", "--max-prompt")])
def test_export_refuses_bad_long_context_options_before_loading(tmp_path, monkeypatch, opts, word):
    import vvtrt.model.resolve
    from cli_helpers import one_clear_line, run

    monkeypatch.setattr(vvtrt.model.resolve, "resolve", lambda *a, **k: pytest.fail("the model was loaded"))
    line = one_clear_line(run("export", "--model", "tiny", "-w", tmp_path / "w", *opts.split()))
    assert word in line
