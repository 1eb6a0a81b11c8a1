"""Long-form decode on CUDA (marked gpu): the compiled decode kernels (`vvtrt.components.lm.decode_kernel`:
"gemm", GQA-folded matmuls over the bucket, "flex", FlexAttention over a block-sparse mask built from
cache_len, and "rows", FlashAttention's variable-length kernel at each row's own length) against the SDPA path,
masking every slot past a row's cache_len (flex: not even reading those blocks; rows: not reading one slot past
it), and replayed from one CUDA graph for other cache lengths."""
from __future__ import annotations

import pytest
import torch

from vvtrt.parity.compare import error_stats

pytestmark = pytest.mark.gpu

S = 4096
LENS = [0, 1, 127, 128, 129, 1000, 4095, 4096]


@pytest.fixture(scope="module", params=["gemm", "flex", "rows"])
def modules(request):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VVTRT_DECODE_KERNEL", request.param)  # read when torch.compile traces (first call)
        yield _modules()


def _modules():
    from vvtrt.components.info import ModelInfo
    from vvtrt.components.lm import LMDecode
    from vvtrt.model.presets import build_model

    model = build_model("tiny").to("cuda", torch.bfloat16)
    info = ModelInfo.from_model(model)
    sdpa, flex = LMDecode(model, info).eval(), LMDecode(model, info).eval()
    flex.fast = True
    return info, sdpa, torch.compile(flex, dynamic=False)


def _inputs(info, lens, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    b = len(lens)
    shape = (info.layers, b, info.kv_heads, S, info.head_dim)
    pk = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    pv = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    emb = torch.randn(b, 1, info.hidden, generator=g, device="cuda", dtype=torch.bfloat16)
    return emb, pk, pv, torch.tensor(lens, device="cuda")


def _poison_unread_blocks(pk, pv, lens, block, kernel):
    """flex: NaN in every KV block wholly past a row's cache_len (beyond the block it ends in); rows: NaN in
    every slot past it. A kernel that read them would turn its output NaN (0 * NaN), whatever its mask. gemm
    reads the whole bucket: huge finite values in every slot past cache_len, which change the output unless
    they are masked."""
    pk, pv = pk.clone(), pv.clone()
    for row, n in enumerate(lens):
        start = -(-n // block) * block if kernel == "flex" else n
        pk[:, row, :, start:] = 3e4 if kernel == "gemm" else float("nan")
        pv[:, row, :, start:] = -3e4 if kernel == "gemm" else float("nan")
    return pk, pv


def test_decode_kernel_matches_sdpa_and_masks_past_cache_len(modules):
    from vvtrt.components.lm import KV_BLOCK, decode_kernel

    info, sdpa, flex = modules
    emb, pk, pv, lens = _inputs(info, LENS)
    bad_k, bad_v = _poison_unread_blocks(pk, pv, LENS, KV_BLOCK, decode_kernel())
    with torch.inference_mode():
        ref = sdpa(emb, pk, pv, lens)
        got = flex(emb, bad_k, bad_v, lens)
    for name, a, b in zip(("hidden", "logits", "new_k", "new_v"), ref, got):
        assert torch.isfinite(b).all(), f"{name}: a KV block past cache_len was read"
        assert error_stats(b.float(), a.float()).rel_l2 < 2e-2, name


def test_block_mask_replays_in_a_cuda_graph_for_other_lengths(modules):
    """Captured once, replayed after cache_len changed in place: the block lists follow the new lengths."""
    info, sdpa, flex = modules
    emb, pk, pv, lens = _inputs(info, LENS, seed=1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(side):
            for _ in range(2):
                flex(emb, pk, pv, lens)  # compile and warm up outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = flex(emb, pk, pv, lens)
        for new in ([4096, 0, 1, 300, 2048, 129, 128, 7], [5, 5, 5, 5, 3000, 3000, 1, 0]):
            lens.copy_(torch.tensor(new, device="cuda"))
            graph.replay()
            torch.cuda.synchronize()
            ref = sdpa(emb, pk, pv, lens)
            for a, b in zip(ref, out):
                assert error_stats(b.float(), a.float()).rel_l2 < 2e-2, new


def test_chunked_prefill_on_cuda_matches_the_whole_prompt(modules):
    """The torch CUDA prefill: chunks through lm_decode's module, the first chunk CUDA-graph captured."""
    from vvtrt.components.lm import LMPrefill
    from vvtrt.components.specs import ExportOptions, build_specs
    from vvtrt.precision import Precision
    from vvtrt.runtime.prefill import Prefill
    from vvtrt.runtime.runner import TorchRunner

    from vvtrt.model.presets import build_model

    info = modules[0]
    m = build_model("tiny").to("cuda", torch.float32)
    spec = build_specs(info, ExportOptions.for_preset("tiny"))["lm_decode"]
    runner = TorchRunner(spec, Precision.FP32, "cuda", m)
    e = torch.randn(1, 300, info.hidden, device="cuda") * 0.5
    with torch.inference_mode():
        _, _, k, v = LMPrefill(m, info)(e)
    prefill = Prefill(runner, 512, graphs=True, chunk=128)
    got_k, got_v = prefill(e)
    assert prefill.capture_error is None and prefill._graphs, prefill.capture_error
    assert error_stats(got_k, k).rel_l2 < 5e-5 and error_stats(got_v, v).rel_l2 < 5e-5
    again_k, _ = prefill(e)  # the first chunk replays its graph
    assert torch.equal(again_k, got_k)


def test_rows_attention_on_cuda_equals_its_cpu_sequences():
    """FlashAttention's variable-length kernel (the "rows" op on CUDA) against the same op on the CPU (each
    (row, KV head) sequence in plain torch), on a view of a larger cache: rows from an offset, a KV bucket
    shorter than the buffer, empty and full rows, NaN past every row's length."""
    from vvtrt.components.rows_attention import cache_rows_attention

    g = torch.Generator(device="cuda").manual_seed(4)
    lens = [0, 1, 127, 1000, 2048, 5]
    buf_k = torch.randn(len(lens) + 3, 2, 4096, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    buf_v = torch.randn(buf_k.shape, generator=g, device="cuda", dtype=torch.bfloat16)
    for row, n in enumerate(lens):
        buf_k[row + 3, :, n:], buf_v[row + 3, :, n:] = float("nan"), float("nan")
    pk, pv = buf_k[3:, :, :2048], buf_v[3:, :, :2048]
    q = torch.randn(len(lens), 12, 1, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    cache_len = torch.tensor(lens, device="cuda")
    with torch.inference_mode():
        out, lse = cache_rows_attention(q, pk, pv, cache_len, 128 ** -0.5)
        ref_out, ref_lse = cache_rows_attention(q.cpu(), pk.cpu(), pv.cpu(), cache_len.cpu(), 128 ** -0.5)
    assert torch.isfinite(out).all() and torch.equal(torch.isneginf(lse.cpu()), torch.isneginf(ref_lse))
    assert error_stats(out.float().cpu(), ref_out.float()).rel_l2 < 1e-2
    live = torch.isfinite(ref_lse)
    assert (lse.cpu()[live] - ref_lse[live]).abs().max() < 1e-2


def test_packed_prefill_attention_on_cuda_equals_its_cpu_sequences():
    """The packed prefill's attention (FlashAttention's variable-length kernel, causal within each prompt) on
    CUDA against each prompt alone by SDPA on the CPU: prompts of 1 to 900 tokens back to back, GQA heads."""
    from vvtrt.components.rows_attention import packed_causal_attention

    g = torch.Generator(device="cuda").manual_seed(6)
    lens = [217, 1, 900, 64, 469]
    q = torch.randn(sum(lens), 12, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(sum(lens), 2, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(k.shape, generator=g, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        out = packed_causal_attention(q, k, v, lens, 128 ** -0.5)
        ref = packed_causal_attention(q.cpu(), k.cpu(), v.cpu(), lens, 128 ** -0.5)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert error_stats(out.float().cpu(), ref.float()).rel_l2 < 1e-2
