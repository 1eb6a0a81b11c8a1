"""The serving engine's device noise (`vvtrt.runtime.noise`): Philox-4x32-10 against Random123's published
known-answer vectors and a plain-Python implementation (bit for bit), normals against a plain-Python Box-Muller,
independence of a row's noise from its neighbours and the batch, and loose statistics on fixed seeds. The
GPU tests (marked gpu) check that CUDA gives the CPU's bits and that the draw captures into a CUDA graph."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vvtrt.runtime.noise import frame_normals, frame_words, philox4x32

M32 = 0xFFFFFFFF
KAT = [  # Random123 kat_vectors: philox4x32 10 (counter, key) -> output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_ref(ctr, key):
    """Philox-4x32-10 with Python integers, as Random123 writes it."""
    c, k = list(ctr), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M32, (p0 >> 32) ^ c[3] ^ k[1], p0 & M32]
    return c


def _normals_ref(seed: int, frame: int, width: int) -> np.ndarray:
    words = []
    for j in range(-(-width // 4)):
        words += _philox_ref((j, frame & M32, frame >> 32, 0), (seed & M32, seed >> 32))
    out = []
    for a, b in zip(words[0::2], words[1::2]):
        r = math.sqrt(-2.0 * math.log((a + 0.5) / 2 ** 32))
        t = 2.0 * math.pi * ((b + 0.5) / 2 ** 32)
        out += [r * math.cos(t), r * math.sin(t)]
    return np.asarray(out[:width], dtype=np.float32)


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    assert philox4x32(torch.tensor(ctr), torch.tensor(key)).tolist() == list(want)
    assert _philox_ref(ctr, key) == list(want)


def test_words_and_normals_equal_the_python_reference():
    seeds = [0, 1, 7, 2 ** 32 - 1, 2 ** 32, 123456789012345, 2 ** 63 - 8001]
    frames = [0, 1, 5, 2 ** 31, 2 ** 32 + 3, 999, 40]
    s, f = torch.tensor(seeds), torch.tensor(frames)
    words = frame_words(s, f, 64)
    for i, (seed, frame) in enumerate(zip(seeds, frames)):
        ref = []
        for j in range(16):
            ref += _philox_ref((j, frame & M32, frame >> 32, 0), (seed & M32, seed >> 32))
        assert words[i].tolist() == ref
    z = frame_normals(s, f, 64)
    want = np.stack([_normals_ref(a, b, 64) for a, b in zip(seeds, frames)])
    assert z.dtype == torch.float32 and np.array_equal(z.numpy(), want)


def test_a_rows_noise_depends_on_its_seed_and_frame_alone():
    seed, frame = torch.tensor([42]), torch.tensor([17])
    alone = frame_normals(seed, frame, 64)[0]
    g = torch.Generator().manual_seed(3)
    for n, at in ((2, 1), (8, 5), (256, 200)):
        seeds = torch.randint(0, 2 ** 40, (n,), generator=g)
        frames = torch.randint(0, 10 ** 6, (n,), generator=g)
        seeds[at], frames[at] = 42, 17
        assert torch.equal(frame_normals(seeds, frames, 64)[at], alone)
    # a width that is not a multiple of 4 is the prefix of the wider draw
    assert torch.equal(frame_normals(seed, frame, 30)[0], alone[:30])


def test_different_seeds_and_frames_differ():
    z = frame_normals(torch.tensor([1, 2, 1, 1]), torch.tensor([0, 0, 1, 2 ** 32]), 64)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(z[i], z[j])


def test_normals_statistics_on_fixed_seeds():
    """Loose moments over 4096 rows x 64 of fixed seeds (deterministic: never flaky)."""
    n = 4096
    z = frame_normals(torch.arange(n) * 7919 + 11, torch.arange(n) % 97, 64).double()
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1.0) < 0.01
    assert abs((z ** 4).mean().item() - 3.0) < 0.1  # kurtosis of a normal
    assert abs((z.abs() < 1.0).double().mean().item() - 0.6827) < 0.01
    # columns are uncorrelated with each other and frames with their neighbours
    c = torch.corrcoef(z.T)
    assert (c - torch.eye(64, dtype=c.dtype)).abs().max().item() < 0.08
    a = frame_normals(torch.full((n,), 5), torch.arange(n), 64).double()
    assert abs((a[1:] * a[:-1]).mean().item()) < 0.01


@pytest.mark.gpu
def test_cuda_gives_the_cpu_bits():
    g = torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2 ** 62, (512,), generator=g)
    frames = torch.randint(0, 2 ** 40, (512,), generator=g)
    cpu_w, cuda_w = frame_words(seeds, frames, 64), frame_words(seeds.cuda(), frames.cuda(), 64).cpu()
    assert torch.equal(cpu_w, cuda_w)
    cpu, cuda = frame_normals(seeds, frames, 64), frame_normals(seeds.cuda(), frames.cuda(), 64).cpu()
    diff = (cpu != cuda).sum().item()
    print(f"CUDA vs CPU normals: {diff} of {cpu.numel()} float32 values differ")
    torch.testing.assert_close(cuda, cpu, rtol=2 ** -22, atol=2 ** -22)  # within float32 rounding; bits: above


@pytest.mark.gpu
def test_the_draw_captures_into_a_cuda_graph():
    seeds = torch.arange(64, device="cuda") * 31 + 5
    frames = torch.zeros(64, dtype=torch.int64, device="cuda")
    out = torch.zeros(64, 64, device="cuda")

    def step():
        out.copy_(frame_normals(seeds, frames, 64))
        frames.add_(1)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    frames.zero_()
    for f in range(3):
        graph.replay()
        torch.cuda.synchronize()
        want = frame_normals(seeds.cpu(), torch.full((64,), f), 64)
        torch.testing.assert_close(out.cpu(), want, rtol=2 ** -22, atol=2 ** -22)
    assert frames.cpu().tolist() == [3] * 64
